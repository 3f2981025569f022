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

A nice value still lets background work delay the raters: a rater's process that wakes (its
request arrived, its query's answer came back) waits for the niced process on its core to reach
the end of its slice, a millisecond or more, and a request wakes up ten times or so. A cgroup
marked idle (`cpu.idle`, Linux 5.15 and later) has no such wait: its processes run only on a core
that nobody else wants, and give it up as soon as someone does. So a niced process also moves into
the idle cgroup BACKGROUND_CGROUP (a child of its own CPU cgroup, made where missing), and moves
its backend there too, where the machine lets it: a CPU controller is mounted writable (cgroup v1,
or v2 with the controller enabled below this process's group) and this process may move processes
(root, or a delegated group). Elsewhere the nice values above are all there is; under systemd the
service's own CPUWeight (or a slice with CPUWeight=idle) does the same job.
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


def _cpu_cgroup_dir(pid: int | str = "self") -> Path | None:
    """The directory of a process's cgroup in the CPU controller's hierarchy (cgroup v1's `cpu`
    controller, or else the unified v2 hierarchy); None where neither is mounted."""
    try:
        memberships = Path(f"/proc/{pid}/cgroup").read_text()
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:
        return None
    return _cgroup_dir_in(memberships, mounts)


def _cgroup_dir_in(memberships: str, mounts: str) -> Path | None:
    """_cpu_cgroup_dir from the texts of /proc/PID/cgroup and /proc/self/mountinfo."""
    paths = {}  # "cpu" (v1) or "" (v2) -> the process's path in that hierarchy
    for line in memberships.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        controllers, path = parts[1], parts[2]
        if controllers == "" or "cpu" in controllers.split(","):
            paths["cpu" if controllers else ""] = path
    found = {}
    for line in mounts.splitlines():
        fields, _, tail = line.partition(" - ")
        fields, tail = fields.split(), tail.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount_point, fstype, options = fields[3], fields[4], tail[0], tail[2].split(",")
        if fstype == "cgroup" and "cpu" in options and "cpu" in paths:
            found["cpu"] = (root, mount_point)
        elif fstype == "cgroup2" and "" in paths:
            found[""] = (root, mount_point)
    for key in ("cpu", ""):  # v1's controller where it has one: then v2's hierarchy has no CPU
        if key in found:
            root, mount_point = found[key]
            path = paths[key]
            if root != "/" and (path == root or path.startswith(root + "/")):
                path = path[len(root) :]
            return Path(mount_point) / path.lstrip("/")
    return None


def _mark_idle(group: Path) -> None:
    """Give a cgroup the least CPU: idle where the kernel has `cpu.idle`, else the lowest weight."""
    idle = group / "cpu.idle"
    if idle.exists():
        if idle.read_text().strip() != "1":
            idle.write_text("1")
        return
    for name, lowest in (("cpu.shares", "2"), ("cpu.weight", "1")):
        if (group / name).exists():
            (group / name).write_text(lowest)
            return
    raise OSError(f"no CPU controller in {group}")


def background_cgroup(name: str) -> Path | None:
    """The idle cgroup `name` for this process's background work: this process's own CPU cgroup if
    it is already that one, else a child of it, made and marked idle where missing. None where the
    machine does not let this process make or use one (see the module)."""
    here = _cpu_cgroup_dir()
    if not name or here is None:
        return None
    if here.name == name:
        return here
    group = here / name
    made = False
    try:
        if not group.is_dir():
            group.mkdir()
            made = True
        _mark_idle(group)
    except OSError:
        if made:
            try:
                group.rmdir()
            except OSError:
                pass
        return None
    return group


def current_background_cgroup(name: str) -> Path | None:
    """This process's CPU cgroup if it is the background one `name`, else None."""
    here = _cpu_cgroup_dir()
    return here if name and here is not None and here.name == name else None


def enter_cgroup(group: Path, pid: int | str = "self") -> bool:
    """Move a process (all its threads) into `group`; False where that is not allowed."""
    try:
        (group / "cgroup.procs").write_text(str(os.getpid() if pid == "self" else pid))
    except OSError:
        return False
    return True


def enter_background_cgroup(name: str) -> bool:
    """Move this process into the idle cgroup `name` (background_cgroup); False where it cannot."""
    group = background_cgroup(name)
    return group is not None and enter_cgroup(group)


def own_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def lower_database_backend(host: str, backend_pid: int, nice: int, cgroup: Path | None = None) -> bool:
    """Give the PostgreSQL backend `backend_pid`, reached at `host`, at least `nice` (its process's
    and, leading its session, its autogroup's), and move it into `cgroup` where one is given (this
    process's idle cgroup). False where it is left alone (see the module)."""
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
    if cgroup is not None:
        enter_cgroup(cgroup, backend_pid)
    return True
