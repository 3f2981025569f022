"""A private, throwaway PostgreSQL cluster on a free loopback port, for runs that stop and restart it.

The shared server on 5432 is never touched: `PrivatePostgres.create()` runs initdb into a new
temporary folder, starts the cluster, and `close()` stops it and removes the folder. initdb and
the server refuse to run as root, so as root they run as the `postgres` OS user (runuser).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class Unavailable(RuntimeError):
    """No private cluster can be made here (no PostgreSQL binaries, or no user to run them as)."""


def _bindir() -> Path:
    found = shutil.which("pg_config")
    if found:
        out = subprocess.run([found, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(candidate).parent
    raise Unavailable("PostgreSQL's server binaries (initdb, pg_ctl) are not installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivatePostgres:
    def __init__(self, folder: Path, bindir: Path, port: int, run_as: list[str]):
        self.folder, self.bindir, self.port, self.run_as = folder, bindir, port, run_as
        self.data = folder / "data"
        self.log = folder / "server.log"

    @classmethod
    def create(cls) -> PrivatePostgres:
        bindir = _bindir()
        run_as: list[str] = []
        owner = None
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError as error:
                raise Unavailable(
                    "running as root and there is no `postgres` user to run initdb as"
                ) from error
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("running as root and runuser is not installed")
            run_as = [runuser, "-u", "postgres", "--"]
        folder = Path(tempfile.mkdtemp(prefix="refinery-pg-"))
        if owner is not None:
            os.chown(folder, owner.pw_uid, owner.pw_gid)
        cluster = cls(folder, bindir, _free_port(), run_as)
        try:
            cluster._run(
                "initdb", "-D", str(cluster.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"
            )
            cluster.start()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [*self.run_as, str(self.bindir / program), *args], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr or result.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c max_connections=100"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; "fast" ends every session at once (their transactions roll back)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, *, down_for: float = 2.0) -> tuple[float, float]:
        """Stop (fast), stay down `down_for` seconds, start; (time stopped, time back), monotonic."""
        self.stop("fast")
        stopped = time.monotonic()
        time.sleep(down_for)
        self.start()
        return stopped, time.monotonic()

    def create_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def close(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.folder, ignore_errors=True)
