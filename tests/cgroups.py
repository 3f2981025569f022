"""Helpers for the tests of background work's idle cgroup (config.priority)."""

import time
from pathlib import Path


def members(group: Path) -> set[int]:
    """The pids of the processes in a cgroup."""
    return {int(pid) for pid in (group / "cgroup.procs").read_text().split()}


def remove_when_empty(group: Path, seconds: float = 10) -> None:
    """Remove a cgroup once its processes have gone (a backend leaves when its connection's end
    reaches the server); an error if it is still busy after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
