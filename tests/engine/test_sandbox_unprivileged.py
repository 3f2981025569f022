"""The sandbox as a worker that is not root gets it: bubblewrap, or a clear refusal.

Each test runs a small script as `nobody` (setpriv) that loads the sandbox module by its path and
runs programs in it. The programs first switch the audit hooks off from plain Python (a refused
event's traceback leads to the hook's frame, whose `refuse` gets a harmless `__code__`), proving it
in their output, so what holds them afterwards is the OS layer alone.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from feedback_loop.engine import sandbox
from feedback_loop.engine.sandbox import SandboxLimits, SandboxUnavailable, run_unit_tests

SANDBOX_FILE = Path(sandbox.__file__).resolve()
NOBODY = 65534

RUNNER = """
import importlib.util, json, os, sys, tempfile
job = json.loads(sys.argv[2])
os.environ.update(job["env"])
tempfile.tempdir = job["tmpdir"]
spec = importlib.util.spec_from_file_location("refinery_sandbox", sys.argv[1])
sandbox = importlib.util.module_from_spec(spec)
sys.modules["refinery_sandbox"] = sandbox
spec.loader.exec_module(sandbox)
out = []
for case in job["cases"]:
    try:
        limits = sandbox.SandboxLimits(**case["limits"])
        r = sandbox.run_unit_tests(case["program"], case["tests"], limits=limits)
        out.append({"status": r.status, "output": r.output, "isolation": list(r.isolation)})
    except sandbox.SandboxUnavailable as error:
        out.append({"unavailable": str(error)})
print(json.dumps(out))
"""

SWITCH_OFF_HOOKS = """
import os
def _switch_off_the_audit_hooks():
    global socket
    try:
        os.kill(os.getpid(), 0)
    except PermissionError as error:
        tb = error.__traceback__
        while tb.tb_frame.f_code.co_name != "hook":
            tb = tb.tb_next
        tb.tb_frame.f_locals["refuse"].__code__ = (lambda event, detail="": None).__code__
    import socket  # refused by the hooks (by name and by what it does): reaching the end shows they are off

    socket.socket().close()
    print("HOOKS OFF")
_switch_off_the_audit_hooks()
"""

NO_TESTS = "def test_nothing():\n    pass\n"


PROBE = (
    "import subprocess, sys; assert sys.version_info >= (3, 10); subprocess.run([sys.executable, '-c', ''])"
)


def _interpreter_for_nobody() -> str | None:
    """An interpreter `nobody` can run (this test run's may live in root's home)."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3"):
        if not os.path.exists(candidate):
            continue
        probe = subprocess.run(
            [*_as_nobody(), candidate, "-I", "-S", "-c", PROBE],
            capture_output=True,
        )
        if probe.returncode == 0:
            return candidate
    return None


def _as_nobody() -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


PYTHON = _interpreter_for_nobody()
AS_NOBODY = pytest.mark.skipif(PYTHON is None, reason="needs root to switch to nobody, and setpriv")


@pytest.fixture
def nobody_dir():
    """A folder nobody owns: its sandbox folders and anything a program might leave."""
    folder = Path(tempfile.mkdtemp(prefix="refinery-test-nobody-"))
    os.chown(folder, NOBODY, NOBODY)
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _run_as_nobody(folder: Path, cases: list[dict], env: dict | None = None) -> list[dict]:
    job = {"tmpdir": str(folder), "env": env or {}, "cases": cases}
    done = subprocess.run(
        [*_as_nobody(), PYTHON, "-I", "-S", "-c", RUNNER, str(SANDBOX_FILE), json.dumps(job)],
        cwd=folder,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _processes_mentioning(text: str) -> list[psutil.Process]:
    return [
        p
        for p in psutil.process_iter(["cmdline", "status"])
        if text in " ".join(p.info["cmdline"] or []) and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


@AS_NOBODY
def test_a_worker_that_is_not_root_gets_bubblewrap(nobody_dir):
    [result] = _run_as_nobody(nobody_dir, [{"program": "", "tests": NO_TESTS, "limits": {}}])

    assert result["status"] == "pass", result
    assert "bubblewrap" in result["isolation"]


@AS_NOBODY
def test_with_the_hooks_switched_off_no_command_or_subprocess_runs(nobody_dir):
    marker = nobody_dir / "escaped"
    program = SWITCH_OFF_HOOKS + (
        "import os, sys\n"
        f"print('SYSTEM', os.system('echo escaped > {marker}'))\n"
        "import subprocess\n"
        "for command in (['/bin/sh', '-c', 'echo escaped > "
        + str(marker)
        + "'], [sys.executable, '-c', '1']):\n"
        "    try:\n"
        "        subprocess.run(command)\n"
        "        print('RAN', command[0])\n"
        "    except OSError as error:\n"
        "        print('REFUSED', type(error).__name__)\n"
    )
    [result] = _run_as_nobody(nobody_dir, [{"program": program, "tests": NO_TESTS, "limits": {}}])

    assert "HOOKS OFF" in result["output"], result
    assert "SYSTEM 0" not in result["output"]
    assert "RAN" not in result["output"]
    assert result["output"].count("REFUSED") == 2
    assert not marker.exists()


@AS_NOBODY
def test_with_the_hooks_switched_off_a_local_server_is_out_of_reach(nobody_dir):
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    program = SWITCH_OFF_HOOKS + (
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=2).sendall(b'leak')\n"
        "    print('CONNECTED')\n"
        "except OSError as error:\n"
        "    print('NO ROUTE', type(error).__name__)\n"
    )
    try:
        [result] = _run_as_nobody(nobody_dir, [{"program": program, "tests": NO_TESTS, "limits": {}}])
        with pytest.raises(BlockingIOError):
            server.accept()  # a completed connection would be waiting in the backlog
    finally:
        server.close()

    assert "HOOKS OFF" in result["output"], result
    assert "NO ROUTE" in result["output"]


@AS_NOBODY
def test_with_the_hooks_switched_off_forks_stay_within_the_limit_and_die_with_the_sandbox(nobody_dir):
    # Each fork sleeps, so they all count at once; one of them leaves the session as well.
    program = SWITCH_OFF_HOOKS + (
        "import os, time\n"
        "forked = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"
        "            time.sleep(120)\n"
        "            os._exit(0)\n"
        "        forked += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('FORKED', forked)\n"
    )
    cases = [{"program": program, "tests": NO_TESTS, "limits": {"max_processes": 8}}]
    [result] = _run_as_nobody(nobody_dir, cases)
    lingering = _processes_mentioning(str(nobody_dir))

    assert "HOOKS OFF" in result["output"], result
    forked = int(result["output"].split("FORKED ")[1].split()[0])
    assert 1 <= forked < 8
    assert lingering == []


@AS_NOBODY
def test_without_bubblewrap_a_worker_that_is_not_root_is_refused_clearly(nobody_dir):
    cases = [{"program": "", "tests": NO_TESTS, "limits": {"bwrap_path": str(nobody_dir / "no-bwrap")}}]
    [refused] = _run_as_nobody(nobody_dir, cases)
    [allowed] = _run_as_nobody(nobody_dir, cases, env={"REFINERY_SANDBOX_ALLOW_HOOKS_ONLY": "1"})

    assert "bubblewrap" in refused["unavailable"]
    assert "not found" in refused["unavailable"]
    assert "REFINERY_SANDBOX_ALLOW_HOOKS_ONLY" in refused["unavailable"]
    assert allowed["status"] == "pass"
    assert "bubblewrap" not in allowed["isolation"]


def test_without_namespaces_or_bubblewrap_root_is_refused_too(monkeypatch, tmp_path, caplog):
    # Root in a container without CAP_SYS_ADMIN: the root layer's probe fails.
    monkeypatch.setattr(sandbox, "_namespaces_problem", lambda: "unshare or mount refused")
    monkeypatch.delenv("REFINERY_SANDBOX_ALLOW_HOOKS_ONLY", raising=False)
    missing = str(tmp_path / "no-bwrap")

    with pytest.raises(SandboxUnavailable, match=r"namespaces and chroot.*bubblewrap"):
        run_unit_tests("", NO_TESTS, limits=SandboxLimits(bwrap_path=missing))
    allowed = run_unit_tests("", NO_TESTS, limits=SandboxLimits(bwrap_path=missing, allow_hooks_only=True))
    assert allowed.status == "pass"
    assert "chroot" not in allowed.isolation
    assert "audit hooks alone, as allowed" in caplog.text  # the opt-in is never silent
