"""Background work in an idle cgroup (config.priority): where the machine lets it, a niced process
(a background worker, an export's child) moves into BACKGROUND_CGROUP, made idle below its own CPU
cgroup, and moves its PostgreSQL backend there too; elsewhere nothing moves and nothing fails."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.db import connection

from config.priority import _cgroup_dir_in, background_cgroup, current_background_cgroup, enter_cgroup
from tests.cgroups import members, remove_when_empty

ROOT = Path(__file__).resolve().parents[1]

V1_MOUNTS = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize(
    ("memberships", "mounts", "expected"),
    [
        # cgroup v1: the cpu controller's hierarchy, whatever the v2 one says
        ("4:memory:/m\n2:cpu,cpuacct:/web\n0::/", V1_MOUNTS, "/sys/fs/cgroup/cpu,cpuacct/web"),
        ("2:cpu,cpuacct:/", V1_MOUNTS, "/sys/fs/cgroup/cpu,cpuacct"),
        # cgroup v2 alone
        ("0::/system.slice/refinery.service", V2_MOUNTS, "/sys/fs/cgroup/system.slice/refinery.service"),
        # a mount of part of the hierarchy (a container's view): paths are relative to its root
        (
            "0::/docker/abc/web",
            "29 23 0:26 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "/sys/fs/cgroup/web",
        ),
        # no CPU hierarchy mounted
        ("2:cpu,cpuacct:/web", "35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n", None),
        ("", V1_MOUNTS, None),
    ],
    ids=["v1", "v1-root", "v2", "v2-container", "none-mounted", "no-membership"],
)
def test_the_cpu_cgroup_of_a_process_is_found_in_either_hierarchy(memberships, mounts, expected):
    found = _cgroup_dir_in(memberships, mounts)
    assert found == (None if expected is None else Path(expected))


@pytest.fixture
def idle_group():
    """A background cgroup of the test's own, removed afterwards; the test is skipped where this
    machine does not let the suite make one (no writable CPU controller, no privileges)."""
    name = f"refinery-background-test-{os.getpid()}"
    group = background_cgroup(name)
    if group is None:
        pytest.skip("no idle cgroup can be made here")
    yield name, group
    remove_when_empty(group)


def test_the_background_cgroup_is_idle_and_made_once(idle_group):
    name, group = idle_group
    if (group / "cpu.idle").exists():
        assert (group / "cpu.idle").read_text().strip() == "1"
    assert background_cgroup(name) == group  # already there: the same one
    assert current_background_cgroup(name) is None  # the suite itself is not in it


def test_a_process_moved_in_is_in_it_and_so_are_its_children(idle_group):
    _, group = idle_group
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; subprocess.run([sys.executable, '-c', 'import time; time.sleep(30)'])",
        ]
    )
    try:
        assert enter_cgroup(group, child.pid)
        assert child.pid in members(group)
        deadline = time.monotonic() + 10
        while not members(group) - {child.pid}:  # the child's own child, started after the move
            assert time.monotonic() < deadline, "the child's own child never started"
            time.sleep(0.05)
    finally:
        for pid in members(group):
            os.kill(pid, 9)
        child.wait()


def test_a_process_that_may_not_move_is_left_where_it_is(tmp_path):
    assert not enter_cgroup(tmp_path / "missing", os.getpid())


_CONNECT = """
import os, sys
import django
django.setup()
from django.conf import settings
from django.db import connection
from tests.cgroups import members, remove_when_empty
from config.priority import enter_background_cgroup
connection.settings_dict["NAME"] = sys.argv[1]
os.nice(5)
print(enter_background_cgroup(settings.BACKGROUND_CGROUP))
connection.ensure_connection()
print(connection.connection.info.backend_pid)
"""


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL backends only")
@pytest.mark.django_db
@pytest.mark.parametrize("setting", ["1", "0"], ids=["backend-moved", "database-left-alone"])
def test_a_niced_process_in_the_idle_cgroup_takes_its_backend_along(idle_group, setting):
    name, group = idle_group
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "BACKGROUND_CGROUP": name,
        "BACKGROUND_NICE_DATABASE": setting,
    }
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CONNECT + "sys.stdout.flush(); sys.stdin.read()",
            connection.settings_dict["NAME"],
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        moved, backend = child.stdout.readline().strip(), int(child.stdout.readline())
        assert moved == "True"
        assert child.pid in members(group)
        assert (backend in members(group)) == (setting == "1")
    finally:
        child.communicate("")
