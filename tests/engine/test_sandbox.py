"""The sandbox classifies test outcomes and keeps untrusted programs away from the machine.

The escape tests run once per layer: all layers together, the audit hooks alone (an explicit
opt-in), bubblewrap (what a non-root worker gets) with and without the hooks, and the root layers
alone (namespaces, chroot, own uid; only where this machine offers them), so that each layer is
shown to hold by itself.
"""

import os
import secrets
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from feedback_loop.engine.sandbox import (
    SandboxLimits,
    SandboxUnavailable,
    isolation_layers,
    run_unit_tests,
    run_unit_tests_many,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

ADD = "def add(a, b):\n    return a + b\n"


def _os_layers_available() -> bool:
    return "chroot" in isolation_layers(SandboxLimits(audit_hooks=False))


def _bwrap_available() -> bool:
    try:
        return "bubblewrap" in isolation_layers(SandboxLimits(os_layer="bwrap"))
    except SandboxUnavailable:
        return False


NEEDS_BWRAP = pytest.mark.skipif(
    not _bwrap_available(), reason="bubblewrap is not installed or cannot run here"
)

LAYERS = [
    pytest.param(SandboxLimits(), id="all-layers"),
    pytest.param(SandboxLimits(os_isolation=False), id="audit-hooks-only"),
    pytest.param(SandboxLimits(os_layer="bwrap"), id="bubblewrap-and-hooks", marks=NEEDS_BWRAP),
    pytest.param(SandboxLimits(os_layer="bwrap", audit_hooks=False), id="bubblewrap-only", marks=NEEDS_BWRAP),
    pytest.param(
        SandboxLimits(audit_hooks=False),
        id="os-isolation-only",
        marks=pytest.mark.skipif(
            os.name != "posix" or os.geteuid() != 0 or not _os_layers_available(),
            reason="namespaces, chroot and uid switching need root with CAP_SYS_ADMIN",
        ),
    ),
]


@pytest.fixture
def box_parent(tmp_path, monkeypatch):
    """Sandbox folders go under this test's tmp_path, so their processes can be found by path."""
    parent = tmp_path / "boxes"
    parent.mkdir()
    parent.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(parent))
    return parent


def _processes_mentioning(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if text in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


# --- classification -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("program", "tests", "status", "passed", "failed"),
    [
        pytest.param(ADD, "def test_add():\n    assert add(1, 2) == 3\n", "pass", 1, 0, id="pass"),
        pytest.param(
            ADD,
            "def test_add():\n    assert add(1, 2) == 3\n\ndef test_wrong():\n    assert add(1, 1) == 3\n",
            "fail",
            1,
            1,
            id="one-of-two-fails",
        ),
        pytest.param(
            "def add(a, b):\n    return a + None\n",
            "def test_add():\n    assert add(1, 2) == 3\n",
            "fail",
            0,
            1,
            id="exception-in-test-is-a-failure",
        ),
        pytest.param(
            "def add(a, b)\n    return a + b\n",
            "def test_add():\n    assert add(1, 2) == 3\n",
            "error",
            0,
            0,
            id="syntax",
        ),
        pytest.param(
            "raise RuntimeError('boom')\n",
            "def test_add():\n    assert add(1, 2) == 3\n",
            "error",
            0,
            0,
            id="load",
        ),
        pytest.param(
            "import sys\nsys.exit(0)\n", "def test_x():\n    pass\n", "error", 0, 0, id="exit-at-load"
        ),
        pytest.param(ADD, "x = 1\n", "error", 0, 0, id="no-tests"),
        pytest.param(ADD, "assert add(1, 2) == 3\nassert add(2, 2) == 5\n", "fail", 1, 1, id="mbpp-asserts"),
        pytest.param(
            ADD,
            "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(0, 0) == 0\n",
            "pass",
            1,
            0,
            id="humaneval-check",
        ),
    ],
)
def test_outcomes_are_classified_with_test_counts(program, tests, status, passed, failed):
    result = run_unit_tests(program, tests)
    assert (result.status, result.passed, result.failed) == (status, passed, failed), result.output


def test_programs_may_use_dataclasses_and_pickle():
    program = (
        "from __future__ import annotations\n"
        "import pickle\n"
        "from dataclasses import dataclass\n\n"
        "@dataclass\n"
        "class Point:\n"
        "    x: int\n\n"
        "def round_trip(x):\n"
        "    return pickle.loads(pickle.dumps(Point(x)))\n"
    )
    result = run_unit_tests(program, "def test_round_trip():\n    assert round_trip(3).x == 3\n")

    assert result.status == "pass", result.output


def test_check_receives_the_named_entry_point_when_the_program_has_helpers():
    program = "def helper(x):\n    return x * 2\n\ndef double_all(xs):\n    return [helper(x) for x in xs]\n"
    tests = "def check(candidate):\n    assert candidate([1, 2]) == [2, 4]\n"

    assert run_unit_tests(program, tests, entry_point="double_all").status == "pass"
    assert run_unit_tests(program, tests).status == "error"  # two functions: which one is meant?


def test_failed_tests_are_named_in_the_output_after_what_the_program_printed():
    result = run_unit_tests(
        "print('hello from the program')\n" + ADD, "def test_wrong():\n    assert add(1, 1) == 3\n"
    )

    assert result.output.startswith("hello from the program")
    assert "FAILED test_wrong: AssertionError" in result.output


def test_printed_fake_results_do_not_count():
    program = (
        "import os, json\n"
        "FAKE = json.dumps({'event': 'test', 'name': 'x', 'ok': True})\n"
        "DONE = json.dumps({'event': 'done'})\n"
        "print(FAKE)\nprint(DONE)\n"
        "for fd in range(3, 64):\n"
        "    for record in (FAKE, DONE):\n"
        "        try:\n"
        "            os.write(fd, (record + '\\n').encode())\n"
        "            os.write(fd, ('0' * 32 + ' ' + record + '\\n').encode())\n"
        "        except OSError:\n"
        "            pass\n" + ADD
    )
    result = run_unit_tests(program, "def test_wrong():\n    assert add(1, 1) == 3\n")

    assert (result.status, result.passed, result.failed) == ("fail", 0, 1)


def test_output_is_truncated_to_the_limit():
    limits = SandboxLimits(max_output_bytes=1000)
    result = run_unit_tests(
        "print('x' * 5_000_000)\n" + ADD, "def test_add():\n    assert add(1, 2) == 3\n", limits=limits
    )

    assert result.status == "pass"
    assert result.output.endswith("[output truncated]")
    assert len(result.output) < 1100


def test_many_programs_get_their_own_results_in_order():
    programs = [ADD, "def add(a, b):\n    return a - b\n", "def add(a, b):\n    return (\n"]
    results = run_unit_tests_many(programs, "def test_add():\n    assert add(1, 2) == 3\n", max_workers=2)

    assert [r.status for r in results] == ["pass", "fail", "error"]


# --- resources ------------------------------------------------------------------------------------


def test_infinite_loop_times_out(box_parent):
    limits = SandboxLimits(timeout_s=1.0, cpu_s=30)
    result = run_unit_tests("while True:\n    pass\n", "def test_x():\n    pass\n", limits=limits)

    assert result.status == "timeout"
    assert _processes_mentioning(str(box_parent)) == []


def test_cpu_limit_ends_a_busy_loop_as_a_timeout():
    limits = SandboxLimits(timeout_s=60.0, cpu_s=1)
    result = run_unit_tests("while True:\n    pass\n", "def test_x():\n    pass\n", limits=limits)

    assert result.status == "timeout"
    assert "CPU limit" in result.output


def test_a_sleeping_program_is_killed_at_the_deadline_not_awaited():
    limits = SandboxLimits(timeout_s=0.5)
    result = run_unit_tests("import time\ntime.sleep(3600)\n", "def test_x():\n    pass\n", limits=limits)

    assert result.status == "timeout"
    assert result.duration_s < 60  # far from the hour the program asked for


@pytest.mark.parametrize(
    ("program", "tests"),
    [
        pytest.param("hoard = bytearray(4 * 1024**3)\n", "def test_x():\n    pass\n", id="at-load"),
        pytest.param("", "def test_hoard():\n    hoard = [0] * (2 * 1024**3)\n", id="in-a-test"),
    ],
)
def test_memory_bomb_is_refused_as_an_error(program, tests):
    parent_rss = psutil.Process().memory_info().rss
    result = run_unit_tests(program, tests, limits=SandboxLimits(memory_mb=256))

    assert result.status == "error"
    assert "MemoryError" in result.output
    assert psutil.Process().memory_info().rss < parent_rss + 500 * 1024**2


def test_writing_a_huge_file_is_stopped_by_the_file_size_limit():
    program = "with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(b'0' * 1024**2)\n"
    result = run_unit_tests(program, "def test_x():\n    pass\n", limits=SandboxLimits(file_size_mb=1))

    assert result.status == "error"


@pytest.mark.parametrize("limits", LAYERS)
def test_fork_bomb_is_bounded_and_cleaned_up(limits, box_parent):
    program = "import os\nwhile True:\n    os.fork()\n"
    result = run_unit_tests(program, "def test_x():\n    pass\n", limits=limits)

    assert result.status in ("error", "timeout")
    assert _processes_mentioning(str(box_parent)) == []


# --- escapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("limits", LAYERS)
def test_program_cannot_write_outside_its_folder(limits, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    outside.chmod(0o777)  # even a world-writable folder must stay out of reach
    targets = [outside / "escape.txt", REPO_ROOT / f"sandbox_escape_{secrets.token_hex(4)}.txt"]
    program = f"""
import os, pathlib
TARGETS = {[str(t) for t in targets]!r}
def try_to_escape():
    for target in TARGETS:
        for attempt in (
            lambda: open(target, "w").write("escaped"),
            lambda: os.close(os.open(target, os.O_CREAT | os.O_WRONLY)),
            lambda: pathlib.Path(target).write_bytes(b"escaped"),
            lambda: os.mkdir(target),
            lambda: os.symlink("/", target),
        ):
            try:
                attempt()
            except OSError:
                pass
"""
    tests = (
        "def test_own_folder_is_writable():\n"
        "    open('inside.txt', 'w').write('fine')\n"
        "    assert open('inside.txt').read() == 'fine'\n\n"
        "def test_escape():\n"
        "    try_to_escape()\n"
    )
    result = run_unit_tests(program, tests, limits=limits)
    escaped = [str(t) for t in targets if os.path.lexists(t)]
    for target in escaped:  # leave no debris in the repository when this fails
        if os.path.isdir(target) and not os.path.islink(target):
            os.rmdir(target)
        else:
            os.remove(target)

    assert escaped == []
    assert result.status == "pass", result.output


@pytest.mark.parametrize("limits", LAYERS)
def test_program_cannot_read_project_files(limits):
    secret_file = REPO_ROOT / "pyproject.toml"
    tests = f"def test_read():\n    open({str(secret_file)!r}).read()\n"
    result = run_unit_tests("", tests, limits=limits)

    assert result.status == "fail"
    assert "[tool.pytest" not in result.output


@pytest.mark.parametrize("limits", LAYERS)
def test_program_cannot_connect_to_a_local_server(limits):
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    tests = (
        "def test_connect():\n"
        "    import socket\n"  # refused by the hooks where they are on: the test fails either way
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
    )
    try:
        result = run_unit_tests("", tests, limits=limits)
        with pytest.raises(BlockingIOError):
            server.accept()  # a completed connection would be waiting in the backlog
    finally:
        server.close()

    assert result.status == "fail"


@pytest.mark.parametrize("limits", LAYERS)
def test_program_cannot_see_an_environment_secret(limits, monkeypatch):
    secret = "s3cret-" + secrets.token_hex(8)
    monkeypatch.setenv("REFINERY_SECRET", secret)
    # A process started with the secret in its initial environment, readable in /proc/PID/environ.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], env={**os.environ, "REFINERY_SECRET": secret}
    )
    tests = f"""
import os
def test_secret_is_invisible():
    assert {secret!r} not in repr(dict(os.environ))
    for pid in ({holder.pid}, {os.getpid()}, os.getppid(), 1, "self"):
        try:
            data = open(f"/proc/{{pid}}/environ", "rb").read()
        except OSError:
            continue
        assert {secret.encode()!r} not in data
"""
    try:
        result = run_unit_tests("", tests, limits=limits)
    finally:
        holder.kill()
        holder.wait()

    assert result.status == "pass", result.output
    assert secret not in result.output


@pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="about a worker that runs as root")
@pytest.mark.parametrize(
    "limits",
    [
        pytest.param(
            SandboxLimits(os_layer="bwrap", audit_hooks=False), id="bubblewrap-only", marks=NEEDS_BWRAP
        ),
        pytest.param(SandboxLimits(os_isolation=False, audit_hooks=False), id="no-layer-but-seccomp"),
    ],
)
def test_a_sandbox_that_keeps_root_s_uid_cannot_fork(limits, box_parent):
    # The kernel exempts the real root user from RLIMIT_NPROC, capabilities or not: only a
    # seccomp filter can bound a fork bomb there. Each fork sleeps, so they would all count at once.
    program = (
        "import os, time\nforked = 0\nfor _ in range(50):\n    try:\n        if os.fork() == 0:\n"
        "            time.sleep(60)\n            os._exit(0)\n        forked += 1\n"
        "    except OSError:\n        break\nprint('FORKED', forked)\n"
    )
    result = run_unit_tests(program, "def test_x():\n    pass\n", limits=limits)

    assert "FORKED 0" in result.output, result.output
    assert _processes_mentioning(str(box_parent)) == []
