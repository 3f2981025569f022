"""Real processes for the loop's reliability tests: Celery workers and beat, and a private Redis.

Each runs in its own session (process group) so that a test can SIGKILL a worker with everything
it started, as when its machine dies.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection

from feedback_loop.management.commands.demo import worker_command

REPO = Path(__file__).resolve().parents[2]


def shared_database_url(vendor: str) -> str:
    """The URL of the test database, for a child process to share; the test is skipped unless the
    database is `vendor`'s. A SQLite test database is a file (settings' TEST NAME), never in memory."""
    if connection.vendor != vendor:
        pytest.skip(f"the worker shares the test database: {vendor} only")
    db = connection.settings_dict
    if vendor == "sqlite":
        if connection.is_in_memory_db():
            pytest.skip("the worker shares the test database: an in-memory one cannot be shared")
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    return f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def filesystem_broker(var: Path) -> dict[str, str]:
    """The environment that gives a worker (and whoever sends it work) the embedded default's broker,
    `filesystem://`, in folders of its own under `var` (REFINERY_VAR_DIR). A worker stops at once
    when the folders are missing, so they are made here."""
    for name in ("broker", "broker-processed", "broker-control"):
        (var / name).mkdir(parents=True, exist_ok=True)
    return {"REFINERY_VAR_DIR": str(var)}


def worker_env(*, broker: str, artifacts: Path, vendor: str = "postgresql", **extra: str) -> dict[str, str]:
    """The environment of a worker sharing the test database (`vendor`'s) and `broker`."""
    return {
        **os.environ,
        "DATABASE_URL": shared_database_url(vendor),
        "CELERY_BROKER_URL": broker,
        "CELERY_TASK_ALWAYS_EAGER": "0",
        "REFINERY_ARTIFACTS_DIR": str(artifacts),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(REPO),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "SECRET_KEY": "worker-test-" + "k" * 50,  # the deployment settings refuse to start without one
        **extra,
    }


class Process:
    """A child process in its own process group, its output in a log file."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path, cwd: Path = REPO) -> None:
        self.log = log
        self._file = open(log, "ab")  # noqa: SIM115 - closed in stop()/kill()
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL the process and its children at once: no clean-up, no acknowledgement."""
        self._signal(signal.SIGKILL)
        self.popen.wait()
        self._file.close()

    def stop(self, timeout: float = 20) -> None:
        self._signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.popen.wait()
        self._file.close()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass


QUIET_WORKER = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


def celery_worker(env: dict[str, str], log: Path) -> Process:
    """The demo's worker (both queues, one task at a time), quiet on the broker: no gossip, mingle or
    heartbeat events for a test to wait through."""
    return Process(
        [*worker_command(), *QUIET_WORKER],
        env=env,
        log=log,
    )


class ForkedProcess:
    """A worker forked by a WarmStarter: in a session of its own, like a Process, but the child of
    the starter, which reaps it when it ends."""

    def __init__(self, pid: int, log: Path) -> None:
        self.pid = pid
        self.log = log

    def alive(self) -> bool:
        try:
            stat = Path(f"/proc/{self.pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie waits for its reaper

    def kill(self) -> None:
        """SIGKILL the process and its children at once: no clean-up, no acknowledgement."""
        self._signal(signal.SIGKILL)
        wait_for(lambda: not self.alive(), timeout=10, what=f"process {self.pid} to die")

    def stop(self, timeout: float = 20) -> None:
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.alive():
            self.kill()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:  # not yet the leader of its session: the process alone
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class WarmStarter:
    """Starts the demo's worker command (as celery_worker does) in processes forked from one that
    imported torch, transformers and peft once (tests/loop/warm_start.py): a test that kills and
    replaces worker after worker does not wait for each one to import them again."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._file = open(log, "ab")  # noqa: SIM115 - closed in close()
        self.popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("warm_start.py"))],
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._file,
            text=True,
            start_new_session=True,
        )
        self._log = log
        self._ready = False

    def celery_worker(self, log: Path) -> ForkedProcess:
        if not self._ready:  # the imports run while the test does something else
            if self.popen.stdout.readline().strip() != "ready":
                raise AssertionError(f"the warm starter did not start: see {self._log}")
            self._ready = True
        command = worker_command()
        assert command[1:3] == ["-m", "celery"], command
        argv = ["celery", *command[3:], *QUIET_WORKER]
        self.popen.stdin.write(json.dumps({"argv": argv, "log": str(log), "cwd": str(REPO)}) + "\n")
        self.popen.stdin.flush()
        return ForkedProcess(int(self.popen.stdout.readline()), log)

    def close(self) -> None:
        """End the starter (its stdin closed); the workers it forked live on until stopped."""
        self.popen.stdin.close()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        self.popen.stdout.close()
        self._file.close()


def celery_beat(env: dict[str, str], log: Path, schedule: Path) -> Process:
    return Process(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "-s", str(schedule), "-l", "INFO"],
        env=env,
        log=log,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_server(port: int, folder: Path, log: Path) -> Process:
    """A private, empty Redis that keeps nothing on disk: a restart loses every queued message."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    server = Process(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        env=dict(os.environ),
        log=log,
        cwd=folder,
    )
    wait_for(lambda: _answers(port), timeout=10, what="redis-server to answer")
    return server


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for(check: Callable[[], object], *, timeout: float, what: str, every: float = 0.1):
    """Poll `check` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"waited {timeout:.0f} s for {what}")


def tail(*logs: Path, size: int = 4000) -> str:
    """The end of each log, to print when a test fails."""
    return "\n".join(
        f"----- {log.name}\n{log.read_bytes()[-size:].decode(errors='replace')}"
        for log in logs
        if log.exists()
    )
