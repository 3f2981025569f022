"""Run a task's unit tests against a candidate program, in a sandbox.

Generated code is untrusted text. `run_unit_tests(program, tests)` never runs it in the calling
process: it starts a fresh interpreter (`python -I -S -B this_file.py`, isolated from the caller's
environment, user site and site-packages), which confines itself *before* it reads a line of the
candidate, then loads the program, runs the tests and reports each result on a private pipe.

The layers, from the strongest to the weakest, and what each one does:

- **Own process, own session.** The child is a new process group (`start_new_session`); on timeout
  the parent kills the group with SIGKILL and, when the child ran under its own uid, every process of
  that uid (otherwise every process that still names its folder). The parent's memory, files and
  interpreter are never touched by the candidate. The child dies with the thread that started it
  (PR_SET_PDEATHSIG, bubblewrap's --die-with-parent), so a worker killed mid-run leaves no sandbox
  running; `sweep_stale_sandboxes()` (run when a worker starts) clears what such a worker left (its
  folder, and under the root layer, which has no pid namespace, a fork that got past the hooks).
- **Resource limits** (`resource.setrlimit`, set by the child on itself before the candidate runs):
  RLIMIT_CPU (CPU seconds; SIGXCPU then SIGKILL), RLIMIT_AS (address space: a memory bomb gets a
  MemoryError), RLIMIT_FSIZE (largest file written), RLIMIT_NOFILE (open files) and RLIMIT_NPROC
  (processes and threads). The kernel ignores RLIMIT_NPROC for the real root user (capabilities
  or not, user namespace or not), so it only bounds a fork bomb once the child runs as another uid
  (its own under the root layer, the worker's under bubblewrap); otherwise seccomp refuses forks.
  A wall-clock deadline in the parent covers what CPU time does not (sleeping, blocking).
- **One OS layer, chosen by the parent; without one it refuses to run.** As root with
  CAP_SYS_ADMIN: **namespaces, chroot and a throwaway uid**. The child unshares a
  new network namespace (no interfaces but a down loopback: no network at all) and a new mount
  namespace, mounts a size-limited tmpfs as its working folder, bind-mounts the standard library
  read-only beside it, `chroot`s into that little tree and drops to a random unused uid and gid.
  The project's files, /proc, /tmp and every other file of the host are then simply not in its view,
  the only writable place is its tmpfs, it cannot signal other sandboxes, and it cannot get root back.
  Otherwise: **bubblewrap** (`bwrap --unshare-all --die-with-parent --new-session`, unprivileged):
  new user, pid, network and mount namespaces whose root holds only the interpreter, its libraries
  and the standard library read-only, and a size-limited tmpfs as the working folder. Neither:
  `SandboxUnavailable`, unless the caller allows the audit hooks alone (`allow_hooks_only`,
  REFINERY_SANDBOX_ALLOW_HOOKS_ONLY=1; logged at every run) or switches OS isolation off.
- **No exec** (seccomp, every layer): execve and execveat fail with EPERM in the child and its forks,
  so no shell, command or other program starts, whatever becomes of the audit hooks; where the
  child still has root's uid, new processes (not threads) are refused as well.
- **Audit hooks** (`sys.addaudithook`, PEP 578), installed in the child after it confined itself and
  before the candidate is compiled. They refuse socket creation, process creation (fork, exec,
  spawn, subprocess, system), signals, ctypes, `chdir`, opening files for writing or mutating paths
  (remove, rename, mkdir, chmod, ...) outside the working folder, and reading or listing anything
  that is neither the working folder nor the standard library. Audit hooks are a guard rail inside
  the same interpreter, not a security boundary: code that finds a gap (an extension module without
  audit events, `os.mkfifo`, ...) gets past them, and plain Python can switch them off (a frame of
  the hook reached through a traceback). They are a second line behind the OS layer, never a
  replacement for it unless explicitly allowed.
- **Environment and folder.** The child gets an almost empty environment (never `os.environ`: no
  secrets, no PATH) and a fresh temporary folder as its working directory, deleted afterwards.

Results come back on a dedicated pipe, not stdout, each line prefixed with a random nonce, so a
program that prints something looking like a result cannot fake one. This guards against accidents,
not against a program that sets out to subvert the harness: the candidate and its tests share one
interpreter, so a determined program can always make its own tests pass. Treat "pass" as "the tests
passed", not as proof of good faith.

Test formats (all may be mixed in one `tests` string, which runs in the program's namespace):
`test_*` functions (one test each), a HumanEval `check(candidate)` function (one test, called with
the program's `entry_point` function) and top-level `assert` statements as in MBPP (one test each;
other top-level statements are setup and run in order). The program runs as a module named
`candidate` and may import only the standard library (the child starts with `-S`: no site-packages)
and the test helpers of `sandbox_lib` (`from pytest import approx`, `pytest.raises`): standard-library-
only stand-ins whose source the payload carries, loaded as modules in the child (no host folder but
the standard library is opened). Tests that cannot load (a syntax error, an import
that fails in their setup) end as `tests_error`, not as a failure of the program.

The child sets its limits on itself rather than in a `preexec_fn`: `preexec_fn` is unsafe when the
parent has threads (`run_unit_tests_many`, web and Celery workers), and the child does it before any
untrusted code runs, which is what matters.

This file is also the child's entry point: `python -I -S -B sandbox.py PAYLOAD_FD BOX` runs
`_child_main` (the payload comes on an open, already deleted file; BOX only labels the process).
It must therefore import only the standard library.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

Status = Literal["pass", "fail", "error", "timeout", "tests_error"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 5.0  # wall-clock limit for the whole run; the process group is killed after it
    cpu_s: int = 5  # CPU seconds (RLIMIT_CPU): SIGXCPU at this limit, SIGKILL one second later
    memory_mb: int = 256  # address space of the child (RLIMIT_AS); allocations beyond raise MemoryError
    file_size_mb: int = 16  # largest file it may write (RLIMIT_FSIZE), and the size of its tmpfs folder
    max_processes: int = 16  # RLIMIT_NPROC for its own uid (bites only once it is not root)
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 64_000  # stdout+stderr kept in the result; the rest is read and dropped
    # False runs under the audit hooks alone: an explicit, logged choice (tests use it to test one layer).
    os_isolation: bool = True
    # Which OS layer: "auto" (namespaces+chroot as root, else bubblewrap), or one of them by force.
    os_layer: Literal["auto", "namespaces", "bwrap"] = "auto"
    bwrap_path: str | None = None  # None: $REFINERY_SANDBOX_BWRAP, else `bwrap` on PATH
    # When no OS layer is available, run under the audit hooks alone instead of raising
    # SandboxUnavailable (also set by REFINERY_SANDBOX_ALLOW_HOOKS_ONLY=1). Logged at every run.
    allow_hooks_only: bool = False
    audit_hooks: bool = True  # in-interpreter guard rail (tests switch one layer off to test the other)


@dataclass(frozen=True)
class UnitTestResult:
    # pass: every test passed; fail: some failed; error: the program did not load or crashed;
    # tests_error: the tests themselves did not load (a syntax error, a helper they cannot import),
    # which says nothing about the program
    status: Status
    passed: int  # tests that passed (counted up to a timeout or crash)
    failed: int  # tests that failed
    output: str  # what the program printed, then one line per failed test, truncated
    duration_s: float  # wall-clock time of the whole run, start-up and clean-up included
    isolation: tuple[str, ...] = ()  # the layers that were in force, as the child reported them


class SandboxUnavailable(RuntimeError):
    """No OS isolation layer works here, and running under the audit hooks alone was not allowed."""


logger = logging.getLogger(__name__)

_SIGXCPU = getattr(signal, "SIGXCPU", None)
_CHILD_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}  # deliberately nothing from os.environ
_MAX_RESULT_BYTES = 1_000_000  # the harness writes a few hundred bytes per test; anything beyond is abuse
_UID_RANGE = (1_000_000, 2_000_000_000)  # far above any real account; one random uid per run
_BOX_PREFIX = "refinery-sandbox-"  # then the owning process's pid and a dash: see sweep_stale_sandboxes
_ALLOW_HOOKS_ONLY_ENV = "REFINERY_SANDBOX_ALLOW_HOOKS_ONLY"
_BWRAP_ENV = "REFINERY_SANDBOX_BWRAP"
_BWRAP_WORK = "/sandbox"  # inside bubblewrap: the working folder (a tmpfs) and this script
_BWRAP_SCRIPT = "/run/refinery-sandbox.py"
# Test helpers (sandbox_lib: a stand-in for pytest.approx and pytest.raises, standard library only).
# Their source travels in the payload and the child loads them as modules: no folder of the host
# beyond the standard library is opened to the program, under any layer.
_HELPERS = Path(__file__).resolve().parent / "sandbox_lib"


def run_unit_tests(
    program: str,
    tests: str,
    *,
    limits: SandboxLimits = SandboxLimits(),
    entry_point: str | None = None,
) -> UnitTestResult:
    """Run `tests` against `program` in a fresh sandboxed interpreter and classify the outcome.

    `entry_point` names the program's function that a HumanEval `check(candidate)` receives; it may
    be left out when the program defines exactly one top-level function.
    """
    layer = _os_layer(limits)  # before anything is created: raises SandboxUnavailable
    start = time.monotonic()
    nonce = secrets.token_hex(16)
    box = Path(tempfile.mkdtemp(prefix=f"{_BOX_PREFIX}{os.getpid()}-"))
    read_fd, write_fd = os.pipe()
    payload_fd = -1
    uid = _throwaway_uid() if layer == "namespaces" else None
    proc = None
    try:
        work = box / "work"
        work.mkdir(mode=0o700)
        if uid is not None:
            os.chown(work, uid, uid)
            box.chmod(0o711)  # the dropped uid must be able to reach its folder (when not chrooted)
        payload = {
            "program": program,
            "tests": tests,
            "entry_point": entry_point,
            "nonce": nonce,
            "layer": layer,
            "parent_pid": os.getpid(),
            "parent_euid": os.geteuid(),
            "box": str(box),
            "work": _BWRAP_WORK if layer == "bwrap" else str(work),
            "uid": uid,
            "limits": asdict(limits),
            "result_fd": write_fd,
            "helpers": _helper_sources(),
        }
        # Handed over as an open, already deleted file: nothing on disk for the candidate to find, and
        # it reaches the child through bubblewrap too. The box path in argv only labels the process.
        payload_path = box / "payload.json"
        payload_path.touch(mode=0o600)
        payload_path.write_text(json.dumps(payload))
        payload_fd = os.open(payload_path, os.O_RDONLY)
        payload_path.unlink()
        script = str(Path(__file__).resolve())
        if layer == "bwrap":
            script = _BWRAP_SCRIPT
        command = [os.path.realpath(sys.executable), "-I", "-S", "-B", script, str(payload_fd), str(box)]
        if layer == "bwrap":
            command = [*_bwrap_arguments(_bwrap_path(limits), limits.file_size_mb), *command]
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=work,
            env=_CHILD_ENV,
            pass_fds=(write_fd, payload_fd),
            start_new_session=True,
        )
        os.close(write_fd)  # the child holds the only write end now: EOF when it (and its forks) end
        write_fd = -1
        os.close(payload_fd)
        payload_fd = -1
        output, result_lines, timed_out = _collect(proc, read_fd, start + limits.timeout_s, limits)
    finally:
        for fd in (write_fd, payload_fd):
            if fd >= 0:
                os.close(fd)
        os.close(read_fd)
        if proc is not None:
            _kill_everything(proc, uid, str(box))
            if proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(box, ignore_errors=True)
    records = _parse_records(result_lines, nonce)
    refused = [r.get("error", "") for r in records if r.get("event") == "confine_error"]
    if refused:
        raise SandboxUnavailable(f"the {layer} sandbox layer could not be set up: {refused[0]}")
    return _classify(records, proc.returncode, timed_out, output, time.monotonic() - start)


def run_unit_tests_many(
    programs: Sequence[str],
    tests: str,
    *,
    limits: SandboxLimits = SandboxLimits(),
    entry_point: str | None = None,
    max_workers: int | None = None,
) -> list[UnitTestResult]:
    """`run_unit_tests` for each program (the same tests), several sandboxes at a time, in order."""
    from concurrent.futures import ThreadPoolExecutor

    # Threads are enough: each one only waits on its own child process.
    workers = max_workers or min(len(programs), os.cpu_count() or 1) or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(run_unit_tests, program, tests, limits=limits, entry_point=entry_point)
            for program in programs
        ]
        return [future.result() for future in futures]


def isolation_layers(limits: SandboxLimits = SandboxLimits()) -> tuple[str, ...]:
    """The layers a sandbox gets on this machine (e.g. to log once when a worker starts)."""
    return run_unit_tests("", "assert True", limits=limits).isolation


def sweep_stale_sandboxes(*, older_than_s: float = 600.0, folder: str | None = None) -> list[str]:
    """Remove what sandboxes of dead processes left behind; returns the folders removed.

    A worker killed mid-run (SIGKILL, OOM) cannot clean up: its sandbox's processes die with it
    (parent-death signal, bubblewrap's --die-with-parent), but a process the candidate forked may
    linger, and the `refinery-sandbox-PID-*` folder stays. Run at worker start: a folder whose owner
    pid is gone and which is older than `older_than_s` is cleared, after every process that names it
    in its command line or runs inside it is killed. Folders of live owners are left alone.
    """
    folder = folder or tempfile.gettempdir()
    removed = []
    now = time.time()
    for entry in os.scandir(folder):
        match = re.fullmatch(re.escape(_BOX_PREFIX) + r"(?:(\d+)-)?[\w]+", entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        if match.group(1) is not None and _pid_alive(int(match.group(1))):
            continue
        if now - entry.stat(follow_symlinks=False).st_mtime < older_than_s:
            continue
        _kill_processes_of_box(entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    if removed:
        logger.warning("sandbox: removed %d stale sandbox folder(s) of dead processes", len(removed))
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _kill_processes_of_box(box: str) -> int:
    """SIGKILL every live process whose command line names `box` or whose root or folder lies in
    it; returns how many there were."""
    inside = box.rstrip("/") + "/"
    found = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
            places = []
            if box not in cmdline:
                for link in ("root", "cwd"):
                    try:
                        places.append(os.readlink(os.path.join(entry.path, link)))
                    except OSError:
                        pass
            if box in cmdline or any((place + "/").startswith(inside) for place in places):
                os.kill(int(entry.name), signal.SIGKILL)
                found += 1
        except (OSError, ValueError):
            continue
    return found


# ---------------------------------------------------------------------------------------------------
# Parent side


@functools.cache
def _helper_sources() -> dict[str, str]:
    """{module name: source} of the test helpers in sandbox_lib."""
    return {path.stem: path.read_text(encoding="utf-8") for path in sorted(_HELPERS.glob("[!_]*.py"))}


def _throwaway_uid() -> int | None:
    """A random uid the kernel accepts (mapped in our user namespace), or None when not root."""
    if not hasattr(os, "setresuid") or os.geteuid() != 0:
        return None
    try:
        ranges = [
            tuple(int(x) for x in line.split())
            for line in Path("/proc/self/uid_map").read_text().splitlines()
        ]
    except OSError:
        return None
    low, high = _UID_RANGE
    for inside, _outside, count in ranges:
        first, last = max(inside, low), min(inside + count - 1, high)
        if first < last:
            return first + secrets.randbelow(last - first)
    return None


def _os_layer(limits: SandboxLimits) -> str:
    """The OS layer this run gets: "namespaces", "bwrap" or "hooks-only" (only when allowed)."""
    if not limits.os_isolation:
        logger.warning("sandbox: OS isolation switched off by the caller; audit hooks alone")
        return "hooks-only"
    missing = []
    if limits.os_layer in ("auto", "namespaces"):
        problem = _namespaces_problem() if os.geteuid() == 0 else "not running as root"
        if problem is None:
            return "namespaces"
        missing.append(f"namespaces and chroot ({problem})")
    if limits.os_layer in ("auto", "bwrap"):
        bwrap = _bwrap_path(limits)
        problem = _bwrap_problem(bwrap, limits.file_size_mb)
        if problem is None:
            return "bwrap"
        missing.append(f"bubblewrap at {bwrap} ({problem})")
    if limits.allow_hooks_only or os.environ.get(_ALLOW_HOOKS_ONLY_ENV) == "1":
        logger.warning("sandbox: no OS isolation (%s); audit hooks alone, as allowed", "; ".join(missing))
        return "hooks-only"
    raise SandboxUnavailable(
        "no OS isolation layer for the code sandbox: "
        + "; ".join(missing)
        + f". Install bubblewrap (Debian package `bubblewrap`), run as root with CAP_SYS_ADMIN, or set"
        f" {_ALLOW_HOOKS_ONLY_ENV}=1 to accept in-interpreter audit hooks alone (not a security boundary)."
    )


def _bwrap_path(limits: SandboxLimits) -> str:
    return limits.bwrap_path or os.environ.get(_BWRAP_ENV) or shutil.which("bwrap") or "/usr/bin/bwrap"


@functools.cache
def _namespaces_problem() -> str | None:
    """Why the root layer cannot work here (tried once, in a throwaway process), or None."""
    probe = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"ok = libc.unshare({_CLONE_NEWNET | _CLONE_NEWNS}) == 0"
        f" and libc.mount(b'none', b'/', None, {_MS_REC | _MS_PRIVATE}, None) == 0\n"
        "sys.exit(0 if ok else 1)\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", probe], env=_CHILD_ENV, capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    return None if done.returncode == 0 else "unshare or mount refused: no CAP_SYS_ADMIN"


@functools.cache
def _bwrap_problem(bwrap: str, size_mb: int) -> str | None:
    """Why bubblewrap cannot run the sandbox's interpreter here (tried once per path), or None."""
    if not os.access(bwrap, os.X_OK):
        return "not found"
    command = [*_bwrap_arguments(bwrap, size_mb), os.path.realpath(sys.executable), "-I", "-S", "-c", "pass"]
    try:
        done = subprocess.run(
            command, env=_CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if done.returncode != 0:
        return done.stdout.decode(errors="replace").strip()[:300] or f"exit status {done.returncode}"
    return None


def _bwrap_arguments(bwrap: str, size_mb: int) -> list[str]:
    """bubblewrap, unprivileged: new user, pid, network, ipc, uts and mount namespaces whose root
    holds only the interpreter, its libraries and the standard library (read-only), a /dev with
    null/zero/urandom and a size-limited tmpfs as the working folder. --die-with-parent: killed with
    the thread that started it; --new-session: no TIOCSTI into a terminal."""
    arguments = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--dev", "/dev"]
    if os.geteuid() == 0:
        arguments += ["--cap-drop", "ALL"]
    for link in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(link):  # merged /usr: the loader's /lib64/ld-linux-*.so.2 goes through these
            arguments += ["--symlink", os.readlink(link), link]
    readable, hidden = _bwrap_read_only_paths()
    for path in readable:
        arguments += ["--ro-bind", path, path]
    for path in hidden:
        arguments += ["--tmpfs", path]
    arguments += ["--ro-bind", str(Path(__file__).resolve()), _BWRAP_SCRIPT]
    arguments += ["--size", str(size_mb * 1024 * 1024), "--perms", "0700", "--tmpfs", _BWRAP_WORK]
    return [*arguments, "--chdir", _BWRAP_WORK, "--remount-ro", "/"]


@functools.cache
def _bwrap_read_only_paths() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the interpreter needs (itself, its shared libraries and the standard library), and the
    site-packages folders inside the standard library, which are hidden."""
    import sysconfig

    paths = {os.path.realpath(sys.executable)}
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    zipped = os.path.join(os.path.dirname(stdlib), f"python{sys.version_info[0]}{sys.version_info[1]}.zip")
    for path in (stdlib, os.path.realpath(sysconfig.get_paths()["platstdlib"]), zipped):
        if os.path.exists(path):
            paths.add(path)
    system = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or ".so" not in fields[5] or not fields[5].startswith("/"):
            continue
        library = os.path.realpath(fields[5])
        if "-packages" in library or not os.path.exists(library):
            continue  # extension modules of the caller's packages are not the sandbox's business
        if os.path.basename(library).startswith(("libc.so", "ld-linux", "ld-")):
            system.add(os.path.dirname(library))  # the system library folder, for lib-dynload's needs
        else:
            paths.add(library)  # libpython and the like: the file alone, not its folder
    for folder in ("/usr/lib64", "/lib64"):
        if os.path.isdir(folder) and not os.path.islink(folder):
            system.add(folder)
    everything = paths | system
    readable = sorted(p for p in everything if not any(p.startswith(d + "/") for d in everything))
    hidden = [
        os.path.join(root, name)
        for root in (stdlib,)
        for name in ("site-packages", "dist-packages")
        if os.path.isdir(os.path.join(root, name))
    ]
    return tuple(readable), tuple(hidden)


def _collect(proc: subprocess.Popen, read_fd: int, deadline: float, limits: SandboxLimits):
    """Drain stdout and the result pipe until the child exits or the deadline passes."""
    import selectors

    output = bytearray()
    results = bytearray()
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ, "output")
    selector.register(read_fd, selectors.EVENT_READ, "results")
    timed_out = False
    try:
        while selector.get_map():
            # The exit status is read *before* waiting: whatever the child wrote before it exited is
            # then already in the pipes, and the select below sees it. (Read after an empty select,
            # a child that wrote and exited in between would leave its results unread.)
            exited = proc.poll() is not None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = not exited
                break
            # A short wait so that an exited child is noticed even if a stray grandchild still
            # holds the pipes open; once it has exited, only drain what is already there.
            events = selector.select(timeout=0 if exited else min(remaining, 0.05))
            for key, _ in events:
                fd = key.fd
                chunk = os.read(fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                    continue
                if key.data == "output":
                    room = limits.max_output_bytes + 1 - len(output)
                    output += chunk[: max(room, 0)]
                elif len(results) < _MAX_RESULT_BYTES:
                    results += chunk
            if exited and not events:
                break  # drained: nothing left but what a stray grandchild might still write
    finally:
        selector.close()
    text = output.decode("utf-8", errors="replace")
    if len(output) > limits.max_output_bytes:
        text = output[: limits.max_output_bytes].decode("utf-8", errors="replace") + "\n[output truncated]"
    return text, results.decode("utf-8", errors="replace").splitlines(), timed_out


def _kill_everything(proc: subprocess.Popen, uid: int | None, box: str) -> None:
    """SIGKILL the child's process group and every process that is left of it: by its own uid when
    it had one, otherwise by the box folder its forks still name in their command line (under
    bubblewrap the pid namespace dies with its init, but asynchronously: wait until it is gone)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    if uid is None:
        for _ in range(500):
            if not _kill_processes_of_box(box):
                return
            time.sleep(0.01)
        return
    # A forked process may have left the group (setsid); the uid is ours alone, so sweep it.
    for _ in range(20):
        alive = [pid for pid in _pids_of_uid(uid)]
        if not alive:
            return
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.01)


def _pids_of_uid(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is `uid`, read from /proc."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            status = Path(entry.path, "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [str(uid)] and not fields.get("State", "").strip().startswith(
            "Z"
        ):
            pids.append(int(entry.name))
    return pids


def _parse_records(lines: list[str], nonce: str) -> list[dict]:
    """Result records from the harness: lines that start with this run's nonce."""
    records = []
    prefix = nonce + " "
    for line in lines:
        if line.startswith(prefix):
            try:
                records.append(json.loads(line[len(prefix) :]))
            except json.JSONDecodeError:
                continue
    return records


def _classify(records: list[dict], returncode: int, timed_out: bool, output: str, duration: float):
    isolation: tuple[str, ...] = ()
    tests = []
    load_error = None
    tests_error = None
    done = False
    for record in records:
        event = record.get("event")
        if event == "isolation":
            isolation = tuple(record.get("layers", ()))
        elif event == "test":
            tests.append(record)
        elif event == "load_error":
            load_error = record.get("error", "")
        elif event == "tests_error":
            tests_error = record.get("error", "")
        elif event == "done":
            done = True
    passed = sum(1 for t in tests if t.get("ok"))
    failed = len(tests) - passed
    notes = [f"FAILED {t.get('name')}: {t.get('error')}" for t in tests if not t.get("ok")]
    if timed_out:
        status, notes = "timeout", [*notes, "TIMEOUT: wall-clock limit reached"]
    elif _SIGXCPU is not None and returncode == -_SIGXCPU:
        status, notes = "timeout", [*notes, "TIMEOUT: CPU limit reached"]
    elif tests_error is not None:
        status, notes = "tests_error", [*notes, f"TESTS ERROR: {tests_error}"]
    elif load_error is not None:
        status, notes = "error", [*notes, f"ERROR: {load_error}"]
    elif not done:
        status, notes = "error", [*notes, f"ERROR: the sandbox exited early (exit status {returncode})"]
    elif any(t.get("resource") for t in tests):
        status, notes = "error", [*notes, "ERROR: a resource limit was hit"]
    elif not tests:
        status, notes = "error", [*notes, "ERROR: no tests found"]
    else:
        status = "fail" if failed else "pass"
    if notes:
        separator = "\n" if output and not output.endswith("\n") else ""
        output = output + separator + "\n".join(notes)
    return UnitTestResult(status, passed, failed, output, duration, isolation)


# ---------------------------------------------------------------------------------------------------
# Child side: everything below runs in the sandboxed interpreter (standard library only).


def _child_main(payload_fd: str) -> None:
    with os.fdopen(int(payload_fd), encoding="utf-8") as handover:
        payload = json.loads(handover.read())
    _die_with_parent(payload)
    nonce = payload["nonce"]
    results = os.fdopen(payload["result_fd"], "w", buffering=1, encoding="utf-8")

    def report(**record) -> None:
        results.write(f"{nonce} {json.dumps(record)}\n")
        results.flush()

    try:
        layers = _confine(payload)
    except _ConfinementFailed as error:
        # Fail closed: the layer the parent chose is not there, so the candidate does not run at all.
        report(event="confine_error", error=str(error))
        os._exit(3)
    report(event="isolation", layers=layers)
    _load_helpers(payload.get("helpers") or {})
    _run_harness(payload["program"], payload["tests"], payload["entry_point"], report)
    report(event="done")
    results.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalisation: atexit handlers and __del__ methods are the candidate's code.
    os._exit(0)


def _load_helpers(sources: dict[str, str]) -> None:
    """Make each test helper importable by name (`from pytest import approx`) from its source text,
    after confinement: a helper imports only the standard library, like the program under test."""
    import types

    for name, source in sources.items():
        module = types.ModuleType(name)
        module.__file__ = f"<sandbox_lib/{name}.py>"
        exec(compile(source, module.__file__, "exec"), module.__dict__)
        sys.modules[name] = module


class _ConfinementFailed(Exception):
    pass


_PR_SET_PDEATHSIG = 1


def _die_with_parent(payload: dict) -> None:
    """SIGKILL this process when the thread that started it dies (a worker killed mid-run).

    The kernel ties the signal to the starting *thread*; that is the thread blocked in
    run_unit_tests until this process is gone, so a thread pool is fine. Under bubblewrap the parent
    is bwrap's init, itself started with --die-with-parent; here it is the worker. A parent that
    died before the prctl shows as a changed parent pid.
    """
    if payload["layer"] == "bwrap":
        return
    libc = _libc()
    if libc is not None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != payload["parent_pid"]:
        os._exit(4)


def _confine(payload: dict) -> list[str]:
    """Apply the OS layer the parent chose (or fail), then limits, uid and hooks; returns their names."""
    import resource

    limits = payload["limits"]
    work = payload["work"]
    layers: list[str] = []
    read_roots = [p for p in sys.path if p and os.path.isdir(p)]
    uid = payload["uid"]
    chrooted = False
    if payload["layer"] == "namespaces":
        libc = _libc()
        if libc is None or libc.unshare(_CLONE_NEWNET) != 0:
            raise _ConfinementFailed("unshare(CLONE_NEWNET) failed")
        layers.append("network-namespace")
        if libc.unshare(_CLONE_NEWNS) != 0:
            raise _ConfinementFailed("unshare(CLONE_NEWNS) failed")
        chrooted, read_roots = _enter_jail(
            libc, payload["box"], work, uid, limits["file_size_mb"], read_roots
        )
        if not chrooted:
            raise _ConfinementFailed("tmpfs, read-only binds or chroot failed")
        work = "/work"
        layers += ["mount-namespace", "tmpfs-folder", "chroot"]
    elif payload["layer"] == "bwrap":
        layers += ["bubblewrap", "user-namespace", "pid-namespace", "network-namespace", "mount-namespace"]
        layers.append("tmpfs-folder")

    megabyte = 1024 * 1024
    for name, value in [
        ("RLIMIT_CPU", limits["cpu_s"]),
        ("RLIMIT_AS", limits["memory_mb"] * megabyte),
        ("RLIMIT_FSIZE", limits["file_size_mb"] * megabyte),
        ("RLIMIT_NOFILE", limits["max_open_files"]),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_CORE", 0),
    ]:
        hard = value + 1 if name == "RLIMIT_CPU" else value  # one second between SIGXCPU and SIGKILL
        resource.setrlimit(getattr(resource, name), (value, hard))
    layers.append("rlimits")

    if uid is not None and (chrooted or _readable_by_others(read_roots)):
        libc = _libc()
        if libc is not None:
            libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        layers.append("own-uid")
        _die_with_parent(payload)  # a change of uid clears the parent-death signal: set it again

    # Root's processes escape RLIMIT_NPROC: unless this one now has its own uid, no forks at all.
    forbid_fork = payload["parent_euid"] == 0 and "own-uid" not in layers
    if _seccomp(forbid_fork=forbid_fork):
        layers.append("seccomp-no-exec-no-fork" if forbid_fork else "seccomp-no-exec")
    os.chdir(work)
    # ctypes served the confinement; the candidate gets no handle on it (the hook refuses re-imports).
    for name in [m for m in sys.modules if m == "_ctypes" or m == "ctypes" or m.startswith("ctypes.")]:
        del sys.modules[name]
    _disarm_process_spawning()
    if limits["audit_hooks"]:
        _install_audit_hook(work, tuple(read_roots))
        layers.append("audit-hooks")
    return layers


# seccomp: AUDIT_ARCH_* and the syscall numbers the filter looks at, per architecture.
_SECCOMP_ARCHES = {
    "x86_64": {
        "arch": 0xC000003E,
        "execve": 59,
        "execveat": 322,
        "clone": 56,
        "clone3": 435,
        "fork": 57,
        "vfork": 58,
    },
    "aarch64": {"arch": 0xC00000B7, "execve": 221, "execveat": 281, "clone": 220, "clone3": 435},
}
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2
_SECCOMP_RET_ALLOW, _SECCOMP_RET_KILL_PROCESS, _SECCOMP_RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_EPERM, _ENOSYS, _CLONE_THREAD = 1, 38, 0x00010000


def _seccomp(*, forbid_fork: bool) -> bool:
    """A seccomp filter: execve/execveat fail with EPERM for this process and its forks, and with
    `forbid_fork` so do new processes (threads stay allowed).

    The interpreter is already running, and nothing the harness does needs a new program, so no
    command, shell or other binary can start, whatever the candidate does to the audit hooks
    (os.system, subprocess, a re-imported _posixsubprocess). Forks are forbidden where the kernel
    would not count them: a process of the real root user is exempt from RLIMIT_NPROC, even without
    capabilities and inside a user namespace. Unprivileged (with no_new_privs), no dependency.
    Returns False where it is not available (another architecture, an old kernel).
    """
    import ctypes
    import platform

    numbers = _SECCOMP_ARCHES.get(platform.machine())
    libc = _libc()
    if numbers is None or libc is None:
        return False
    load, jump_eq, jump_ge, jump_set, ret = (
        0x20,
        0x15,
        0x35,
        0x45,
        0x06,
    )  # BPF_LD|W|ABS, JMP|JEQ/JGE/JSET|K, RET|K
    # (code, jump if true, jump if false, k); jumps name labels, resolved below. The last is a return.
    program = [(load, 0, 0, 4), (jump_eq, 0, "kill", numbers["arch"]), (load, 0, 0, 0)]
    if "fork" in numbers:
        program.append((jump_ge, "deny", 0, 0x40000000))  # the x32 ABI's numbers: refused altogether
    program += [(jump_eq, "deny", 0, numbers["execve"]), (jump_eq, "deny", 0, numbers["execveat"])]
    if forbid_fork:
        program += [(jump_eq, "deny", 0, numbers[name]) for name in ("fork", "vfork") if name in numbers]
        program += [(jump_eq, "nosys", 0, numbers["clone3"]), (jump_eq, 0, "allow", numbers["clone"])]
        program += [(load, 0, 0, 16), (jump_set, "allow", "deny", _CLONE_THREAD)]  # clone's flags: a thread?
    labels = {"allow": len(program)}
    program.append((ret, 0, 0, _SECCOMP_RET_ALLOW))
    labels["deny"] = len(program)
    program.append((ret, 0, 0, _SECCOMP_RET_ERRNO | _EPERM))
    labels["kill"] = len(program)
    program.append((ret, 0, 0, _SECCOMP_RET_KILL_PROCESS))
    # clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to clone.
    labels["nosys"] = len(program)
    program.append((ret, 0, 0, _SECCOMP_RET_ERRNO | _ENOSYS))

    def offset(index: int, target) -> int:
        return target if isinstance(target, int) else labels[target] - index - 1

    class SockFilter(ctypes.Structure):
        _fields_ = [
            ("code", ctypes.c_ushort),
            ("jt", ctypes.c_ubyte),
            ("jf", ctypes.c_ubyte),
            ("k", ctypes.c_uint),
        ]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    instructions = [
        SockFilter(c, offset(i, jt), offset(i, jf), k) for i, (c, jt, jf, k) in enumerate(program)
    ]
    fprog = SockFprog(len(instructions), (SockFilter * len(instructions))(*instructions))
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) == 0


def _disarm_process_spawning() -> None:
    """Take away the fork+exec primitive this script's own `import subprocess` loaded.

    `_posixsubprocess.fork_exec` raises no audit event, and importing an already-loaded module
    raises none either, so the hook alone cannot stop a candidate that reaches the loaded module
    (through sys.modules, or this script's globals). Its functions are removed instead, and the
    modules dropped so a fresh import goes through the hook, which refuses `_posixsubprocess`.
    """
    import _posixsubprocess

    for name in [n for n in vars(_posixsubprocess) if not n.startswith("__")]:
        delattr(_posixsubprocess, name)
    subprocess._fork_exec = None
    subprocess._USE_POSIX_SPAWN = False
    for name in ("subprocess", "_posixsubprocess", "multiprocessing.util", "socket", "_socket"):
        sys.modules.pop(name, None)


_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = (
    1,
    2,
    4,
    32,
    4096,
    16384,
    1 << 18,
)
_PR_SET_NO_NEW_PRIVS = 38


def _libc():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None


def _enter_jail(libc, box: str, work: str, uid: int | None, size_mb: int, read_roots: list[str]):
    """In a fresh mount namespace: tmpfs folder, read-only standard library, chroot into `box`.

    Returns (chrooted, the read roots as seen from inside). Any failure leaves the process as it
    was (still in its own mount namespace, which is harmless) and the caller falls back to the hooks.
    """
    # Private propagation first, so nothing mounted here shows up in the host's namespace.
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:
        return False, read_roots
    owner = f",uid={uid},gid={uid}" if uid is not None else ""
    options = f"size={size_mb}m,mode=0700{owner}".encode()
    if libc.mount(b"tmpfs", work.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, options) != 0:
        return False, read_roots
    inside = []
    for i, root in enumerate(read_roots):
        target = os.path.join(box, "lib", str(i))
        os.makedirs(target, mode=0o755, exist_ok=True)
        if libc.mount(root.encode(), target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
            return False, read_roots
        flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV
        if libc.mount(None, target.encode(), None, flags, None) != 0:
            return False, read_roots
        inside.append(f"/lib/{i}")
    os.chmod(os.path.join(box, "lib"), 0o755)
    os.chroot(box)
    os.chdir("/")
    # Imports from now on find the standard library at its new place, including submodules of
    # packages loaded before the chroot (encodings, importlib, ...), which search their __path__.
    moved = dict(zip(read_roots, inside, strict=True))

    def relocate(path: str) -> str:
        for old, new in moved.items():
            if path == old or path.startswith(old.rstrip("/") + "/"):
                return new + path[len(old) :]
        return path

    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [relocate(p) for p in search]
    sys.path[:] = inside
    sys.path_importer_cache.clear()
    return True, inside


def _readable_by_others(paths: list[str]) -> bool:
    """Whether a process with another uid could still import from these folders."""
    import stat

    for path in paths:
        parts = Path(path).resolve().parts
        for depth in range(1, len(parts) + 1):
            mode = os.stat(Path(*parts[:depth])).st_mode
            if not mode & stat.S_IXOTH:
                return False
        if not os.stat(path).st_mode & stat.S_IROTH:
            return False
    return True


def _install_audit_hook(work: str, read_roots: tuple[str, ...]) -> None:
    """Refuse network, processes, signals, ctypes, and file access outside `work` (reads: + stdlib)."""
    realpath, fsdecode, fspath, isdir = os.path.realpath, os.fsdecode, os.fspath, os.path.isdir
    work = realpath(work)
    readable = (work, *(realpath(root) for root in read_roots))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    refused_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
    refused_events = {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.kill",
        "os.killpg",
        "os.chdir",
        "os.startfile",
        "resource.setrlimit",
        "resource.prlimit",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "sys._current_frames",
        "sqlite3.enable_load_extension",
        "sqlite3.load_extension",
    }
    # Refused by name as well as by what they do: a program that imports them gets a clear error at
    # load time, not a half-working module (the socket module loads, though no socket can be made).
    refused_imports = {
        "_ctypes",
        "ctypes",
        "_posixsubprocess",
        "subprocess",
        "_xxsubinterpreters",
        "socket",
        "_socket",
        "ssl",
        "_ssl",
    }
    # Event name -> positions of the path arguments that are written to.
    mutating = {
        "os.remove": (0,),
        "os.rmdir": (0,),
        "os.mkdir": (0,),
        "os.rename": (0, 1),
        "os.link": (0, 1),  # a hard link to an outside file would be that file, read and written
        "os.symlink": (1,),
        "os.truncate": (0,),
        "os.chmod": (0,),
        "os.chown": (0,),
        "os.utime": (0,),
        "os.chflags": (0,),
        "os.setxattr": (0,),
        "os.removexattr": (0,),
        "shutil.rmtree": (0,),
    }
    listing = {"os.listdir", "os.scandir", "os.walk", "os.fwalk", "glob.glob", "os.listxattr", "os.getxattr"}

    def resolve(path) -> str | None:
        if path is None or isinstance(path, int):
            return None  # the working directory or an already open descriptor
        return realpath(fsdecode(fspath(path)))

    def inside(path: str, roots: tuple[str, ...]) -> bool:
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    def refuse(event: str, detail: object = "") -> None:
        raise PermissionError(f"sandbox: {event} is not allowed {detail}".strip())

    def hook(event: str, args: tuple) -> None:
        if event in refused_events or event.startswith(refused_prefixes):
            refuse(event)
        if event == "import" and args and args[0] in refused_imports:
            refuse(event, args[0])
        if event == "open":
            path = resolve(args[0])
            if path is None:
                return
            mode, flags = args[1], args[2] or 0
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(flags & write_flags)
            if writes and not inside(path, (work,)):
                refuse("writing", path)
            if not inside(path, readable) or (isdir(path) and not inside(path, (work,))):
                refuse("reading", path)
        elif event in mutating:
            for position in mutating[event]:
                path = resolve(args[position]) if position < len(args) else None
                if path is not None and not inside(path, (work,)):
                    refuse(event, path)
        elif event == "sqlite3.connect" and args:
            # sqlite opens its file from C: no "open" event to check.
            database = args[0]
            if isinstance(database, bytes | str) and fsdecode(database) not in ("", ":memory:"):
                if fsdecode(database).startswith("file:"):
                    refuse("sqlite3.connect", "with a URI")
                path = resolve(database)
                if path is not None and not inside(path, (work,)):
                    refuse("sqlite3.connect", path)
        elif event in listing and args:
            path = resolve(args[0])
            if path is not None and not inside(path, readable):
                refuse(event, path)

    sys.addaudithook(hook)


def _run_harness(program: str, tests: str, entry_point: str | None, report) -> None:
    """Load the program, then run every test in its namespace, reporting each one."""
    import ast
    import linecache
    import traceback
    import types

    def describe(error: BaseException) -> str:
        frames = traceback.extract_tb(error.__traceback__)
        where = next((f"{f.filename}:{f.lineno}" for f in reversed(frames) if f.filename.startswith("<")), "")
        text = f"{type(error).__name__}: {error}".strip().rstrip(":")
        return f"{text} ({where})" if where else text

    for name, source in [("<program>", program), ("<tests>", tests)]:
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    try:
        tests_tree = ast.parse(tests, "<tests>")
    except SyntaxError as error:
        report(event="tests_error", error=describe(error))
        return
    try:
        program_code = compile(program, "<program>", "exec")
    except SyntaxError as error:
        report(event="load_error", error=describe(error))
        return
    # A real module, so that code which looks itself up in sys.modules (dataclasses, pickle) works.
    module = types.ModuleType("candidate")
    sys.modules["candidate"] = module
    namespace = module.__dict__
    try:
        exec(program_code, namespace)
    except BaseException as error:  # SystemExit and MemoryError too: the program did not load
        report(event="load_error", error="program: " + describe(error))
        return

    def run_one(name: str, test) -> None:
        try:
            test()
            report(event="test", name=name, ok=True)
        except BaseException as error:
            resource_hit = isinstance(error, MemoryError)
            report(event="test", name=name, ok=False, error=describe(error), resource=resource_hit)

    # Top-level statements in order: asserts are tests, everything else is setup.
    for statement in tests_tree.body:
        code = compile(ast.Module(body=[statement], type_ignores=[]), "<tests>", "exec")
        if isinstance(statement, ast.Assert):
            run_one(f"assert at line {statement.lineno}", lambda code=code: exec(code, namespace))
            continue
        try:
            exec(code, namespace)
        except ImportError as error:
            # An import the tests need and the sandbox does not offer: the tests cannot run at all.
            report(event="tests_error", error=describe(error))
            return
        except BaseException as error:
            report(event="load_error", error="tests: " + describe(error))
            return
    defined = [s.name for s in tests_tree.body if isinstance(s, ast.FunctionDef)]
    for name in defined:
        if name.startswith("test"):
            run_one(name, namespace[name])
    if "check" in defined:
        if entry_point is None:
            functions = [s.name for s in ast.parse(program).body if isinstance(s, ast.FunctionDef)]
            entry_point = functions[0] if len(functions) == 1 else None
        if entry_point is None or not callable(namespace.get(entry_point)):
            report(event="load_error", error=f"check(candidate) needs the program's function {entry_point!r}")
            return
        check, candidate = namespace["check"], namespace[entry_point]
        run_one("check", lambda: check(candidate))


if __name__ == "__main__":
    _child_main(sys.argv[1])
