"""Background work's priority reaches its PostgreSQL backend (config.priority): a niced process's
backend, a scheduling group of its own, gets the same nice value, where the database is on this
machine and the process may change it; elsewhere it is left alone."""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from django.db import connection

from config.priority import autogroup_nice, lower_database_backend

pytestmark = [
    pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL backends only"),
    pytest.mark.skipif(os.geteuid() != 0, reason="changing another user's priority takes root"),
]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def backend(django_db_blocker):
    """A connection of its own (its backend ends with it): its host and backend pid."""
    with django_db_blocker.unblock():
        params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    with psycopg.connect(**params) as conn:
        yield conn.info.host, conn.info.backend_pid


def test_a_local_backend_gets_the_nice_value_of_its_process_and_of_its_group(backend):
    host, pid = backend
    assert os.getpriority(os.PRIO_PROCESS, pid) == 0
    assert lower_database_backend(host, pid, 7)
    assert os.getpriority(os.PRIO_PROCESS, pid) == 7
    if autogroup_nice(pid) is not None:  # a backend leads its own session, so its own group
        assert os.getsid(pid) == pid
        assert autogroup_nice(pid) == 7
    lower_database_backend(host, pid, 3)  # only ever lowered
    assert os.getpriority(os.PRIO_PROCESS, pid) == 7


@pytest.mark.parametrize("host", ["db.example.org", "10.1.2.3"])
def test_a_backend_on_another_machine_is_left_alone(backend, host):
    _, pid = backend
    assert not lower_database_backend(host, pid, 7)  # the pid is another machine's, not this one's
    assert os.getpriority(os.PRIO_PROCESS, pid) == 0


def test_a_process_that_is_not_postgresql_is_left_alone(backend):
    host, _ = backend
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not lower_database_backend(host, other.pid, 7)
        assert os.getpriority(os.PRIO_PROCESS, other.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    finally:
        other.kill()
        other.wait()


_CONNECT = """
import os, sys
import django
django.setup()
from django.db import connection
from config.priority import autogroup_nice
connection.settings_dict["NAME"] = sys.argv[2]
os.nice(int(sys.argv[1]))
connection.ensure_connection()
pid = connection.connection.info.backend_pid
with connection.cursor() as cursor:
    cursor.execute("SHOW max_parallel_workers_per_gather")
    parallel = cursor.fetchone()[0]
print(os.getpriority(os.PRIO_PROCESS, pid), autogroup_nice(pid), parallel)
"""


def _connect_in_child(script: str, *args: str, **env: str) -> list[str]:
    """What `script` prints, run in a Python process of the project's settings with `env` added
    (and no DATABASE_PARALLEL_WORKERS of this process's)."""
    environ = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings"}
    environ.pop("DATABASE_PARALLEL_WORKERS", None)
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env={**environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("nice", "setting"), [(6, "1"), (6, "0"), (0, "1")], ids=["niced", "off", "not-niced"]
)
def test_a_niced_process_connects_to_a_niced_backend(nice, setting):
    out = _connect_in_child(
        _CONNECT, str(nice), connection.settings_dict["NAME"], BACKGROUND_NICE_DATABASE=setting
    )
    child = min(19, os.getpriority(os.PRIO_PROCESS, 0) + nice)  # the child's own nice value
    expected = child if setting == "1" and child > 0 else 0  # a backend starts at the server's, 0
    assert int(out[0]) == expected
    if out[1] != "None":
        assert int(out[1]) == expected
    # Parallel workers are the postmaster's processes, at its priority: a niced session has none.
    with connection.cursor() as cursor:
        cursor.execute("SHOW max_parallel_workers_per_gather")
        default = cursor.fetchone()[0]
    assert out[2] == ("0" if setting == "1" and child > 0 else default)


# As gunicorn runs it: the config file is executed in the master before the app is loaded.
_WEB_CONNECT = """
import runpy, sys
runpy.run_path("config/gunicorn.conf.py")
import django
django.setup()
from django.db import connection
connection.settings_dict["NAME"] = sys.argv[1]
with connection.cursor() as cursor:
    cursor.execute("SHOW max_parallel_workers_per_gather")
    print(cursor.fetchone()[0])
"""


@pytest.mark.django_db
@pytest.mark.parametrize(("given", "expected"), [(None, "0"), ("1", "1")], ids=["default", "set"])
def test_web_processes_sessions_run_without_parallel_workers(given, expected):
    """A request's big scan (a curator page's count of a million judgments) must not take every
    core at the raters' priority: gunicorn's config gives the web sessions no parallel workers,
    unless the deployment says otherwise."""
    env = {} if given is None else {"DATABASE_PARALLEL_WORKERS": given}
    assert _connect_in_child(_WEB_CONNECT, connection.settings_dict["NAME"], **env) == [expected]
