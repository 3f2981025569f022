"""A real full disk for a child process: a small tmpfs mounted on a folder in a mount namespace of
its own (`unshare -m`), so nothing outside the child sees it. Needs root (or CAP_SYS_ADMIN) and
util-linux's unshare; `full_disk()` skips the test with the reason where that is not so."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# Mounts SIZE of tmpfs on DIR, runs the command, and lists what it left on DIR (in the namespace
# the tmpfs goes away with the process, so the listing is written outside it, to LISTING).
_SCRIPT = """
set -u
mount -t tmpfs -o "size=$1" tmpfs "$2" || exit 97
dir=$2; listing=$3; shift 3
"$@"; rc=$?
(cd "$dir" && find . -mindepth 1 | sort) > "$listing"
exit $rc
"""


@dataclass
class FullDiskRun:
    returncode: int
    stdout: str
    stderr: str
    left: list[str]  # paths under the folder after the command, relative ("./name")


def full_disk(tmp_path: Path):
    """A runner for commands whose folder `tmp_path / "full"` is a tiny tmpfs; skips when none can be made."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed: no private full filesystem")
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root: the injected ENOSPC tests cover this path")
    folder = tmp_path / "full"
    folder.mkdir()
    listing = tmp_path / "left.txt"

    def run(command: list[str], *, size: str, env: dict[str, str] | None = None, cwd=None) -> FullDiskRun:
        result = subprocess.run(
            [
                unshare,
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                _SCRIPT,
                "sh",
                size,
                str(folder),
                str(listing),
                *command,
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=300,
        )
        if result.returncode == 97 or "unshare failed" in result.stderr:
            pytest.skip(f"cannot mount a private tmpfs here: {result.stderr.strip()}")
        left = listing.read_text().split() if listing.exists() else []
        return FullDiskRun(result.returncode, result.stdout, result.stderr, left)

    return folder, run
