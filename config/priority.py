"""CPU priority for background work: its own nice value, its scheduling group's, and its database backend's.

Background work (an export download's child process, a worker consuming the background queue
alone) lowers its priority so that the raters' requests come first on a shared machine. Three
things decide a process's share of a busy CPU on Linux:

- its nice value, which ranks it among the processes of its scheduling group;
- its group's nice value: where the kernel groups processes by session for scheduling
  (autogroups, `/proc/sys/kernel/sched_autogroup_enabled`, on by default), each session is one
  group, and groups share the CPU by their own nice values whatever their members' are;
- the PostgreSQL backend that serves its queries, which works for it in another process. A
  backend calls `setsid` when it starts, so every backend is a scheduling group of its own: an
  export's backend would take as much CPU as a rater's.

`lower_database_backend` gives a niced process's backend the same nice value, its process's and
its group's, where it can: the database runs on this machine (a Unix socket or a loopback
address), the process with that id is a PostgreSQL process, and this process may change its
priority (root, or the same user). Elsewhere (another machine, another container's pid namespace,
no privileges) the backend is left as it is. The backend's priority lasts as long as it does: a
backend a connection pooler hands to other clients would keep it, so BACKGROUND_NICE_DATABASE=0
turns this off where such a pooler runs on the database's machine.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}


def autogroup_nice(pid: int | str = "self") -> int | None:
    """The nice value of a process's scheduling autogroup; None where there is none."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])  # "/autogroup-85 nice 0"
    except (OSError, ValueError, IndexError):
        return None


def lower_autogroup(nice: int, pid: int | str = "self") -> None:
    """Give a process's autogroup (its session, when autogroups are on) at least `nice`."""
    current = autogroup_nice(pid)
    if current is None or current >= nice:
        return
    try:
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))
    except OSError:  # autogroups off, or not allowed: the process's own nice value still holds
        pass


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def lower_database_backend(host: str, backend_pid: int, nice: int) -> bool:
    """Give the PostgreSQL backend `backend_pid`, reached at `host`, at least `nice` (its process's
    and, leading its session, its autogroup's). False where it is left alone (see the module)."""
    if nice <= 0 or not backend_pid or not (host in LOCAL_HOSTS or host.startswith("/")):
        return False
    try:
        if Path(f"/proc/{backend_pid}/comm").read_text().strip() != "postgres":
            return False
        if os.getpriority(os.PRIO_PROCESS, backend_pid) < nice:
            os.setpriority(os.PRIO_PROCESS, backend_pid, nice)
        leads_session = os.getsid(backend_pid) == backend_pid
    except OSError:  # gone, another user's without privileges, or not visible from here
        return False
    if leads_session:
        lower_autogroup(nice, backend_pid)
    return True
