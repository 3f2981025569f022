"""A sandbox does not outlive the worker that started it, and a new worker sweeps up after a dead one."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from feedback_loop.engine import sandbox
from feedback_loop.engine.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    isolation_layers,
    sweep_stale_sandboxes,
)
from tests.engine.test_sandbox_unprivileged import AS_NOBODY, NOBODY, PYTHON, _as_nobody

SANDBOX_FILE = Path(sandbox.__file__).resolve()

# The worker: loads the sandbox by its path (cheap) and runs one program; folders go under $TMPDIR.
WORKER = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("refinery_sandbox", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules["refinery_sandbox"] = sandbox
spec.loader.exec_module(sandbox)
sandbox.run_unit_tests(sys.argv[2], "def test_x():\\n    pass\\n", limits=sandbox.SandboxLimits(**json.loads(sys.argv[3])))
"""

SLEEPER = "import time\ntime.sleep(300)\n"
# With the hooks off, a fork that leaves the session: under bubblewrap it lives in the pid namespace.
SLEEPER_WITH_A_GRANDCHILD = "import os, time\nif os.fork() == 0:\n    os.setsid()\n" + SLEEPER


def _layer_available(layer: str) -> bool:
    try:
        return "audit-hooks" in isolation_layers(SandboxLimits(os_layer=layer))
    except SandboxUnavailable:
        return False


def _processes_mentioning(text: str) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline", "status"])
        if text in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize(
    ("limits", "program", "sandboxed", "as_nobody"),
    [
        pytest.param(
            {"os_layer": "namespaces"},
            SLEEPER,
            1,
            False,
            id="root-namespaces",
            marks=pytest.mark.skipif(
                not _layer_available("namespaces"), reason="needs root with CAP_SYS_ADMIN"
            ),
        ),
        # bubblewrap is what a worker that is not root gets (as root, forks are refused altogether).
        pytest.param(
            {"audit_hooks": False},
            SLEEPER_WITH_A_GRANDCHILD,
            2,
            True,
            id="nobody-bubblewrap-with-a-grandchild",
            marks=AS_NOBODY,
        ),
    ],
)
def test_a_sandbox_dies_with_its_killed_worker(limits, program, sandboxed, as_nobody):
    boxes = Path(tempfile.mkdtemp(prefix="refinery-test-boxes-"))
    boxes.chmod(0o755)
    if as_nobody:
        os.chown(boxes, NOBODY, NOBODY)
    prefix, python = (_as_nobody(), PYTHON) if as_nobody else ([], sys.executable)
    limits = {"timeout_s": 600, "cpu_s": 600, **limits}
    worker = subprocess.Popen(
        [*prefix, python, "-I", "-S", "-c", WORKER, str(SANDBOX_FILE), program, json.dumps(limits)],
        env={"PATH": "/usr/bin:/bin", "TMPDIR": str(boxes)},
    )
    try:
        started = _wait_for(lambda: len(_processes_mentioning(str(boxes))) >= sandboxed, 30)
        time.sleep(0.3)  # the program is past its start-up and sleeping (with its fork)
        worker.kill()
        worker.wait()
        gone = _wait_for(lambda: _processes_mentioning(str(boxes)) == [], 5)
    finally:
        worker.kill()
        for process in _processes_mentioning(str(boxes)):
            process.kill()
        shutil.rmtree(boxes, ignore_errors=True)

    assert started
    assert gone


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


def test_the_sweep_clears_stale_sandboxes_of_dead_workers_only(tmp_path):
    an_hour_ago = time.time() - 3600
    stale = tmp_path / f"refinery-sandbox-{_dead_pid()}-abcd1234"
    young = tmp_path / f"refinery-sandbox-{_dead_pid()}-young123"  # a worker that just died: not yet
    live = tmp_path / f"refinery-sandbox-{os.getpid()}-live1234"
    unrelated = tmp_path / "something-else"
    for folder in (stale, young, live, unrelated):
        (folder / "work").mkdir(parents=True)
    for folder in (stale, live, unrelated):
        os.utime(folder, (an_hour_ago, an_hour_ago))
    # A process the dead worker's sandbox forked: it still names its box.
    lingering = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(stale)])
    try:
        # Until it has exec'd, the child still shows the parent's command line: like a process the
        # sandbox forked long ago, it must name the box before the sweep looks.
        cmdline = Path(f"/proc/{lingering.pid}/cmdline")
        assert _wait_for(lambda: str(stale).encode() in cmdline.read_bytes(), 5)
        removed = sweep_stale_sandboxes(older_than_s=600, folder=str(tmp_path))
        ended = _wait_for(lambda: lingering.poll() is not None, 5)
    finally:
        lingering.kill()
        lingering.wait()

    assert removed == [str(stale)]
    assert ended
    assert not stale.exists()
    assert young.exists() and live.exists() and unrelated.exists()


def test_a_starting_worker_sweeps(monkeypatch):
    from celery.signals import worker_process_init, worker_ready

    import config.celery  # noqa: F401  (connects the handler)

    calls = []
    monkeypatch.setattr(sandbox, "sweep_stale_sandboxes", lambda **kwargs: calls.append(kwargs))
    worker_ready.send(sender=None)
    worker_process_init.send(sender=None)

    assert len(calls) == 2
