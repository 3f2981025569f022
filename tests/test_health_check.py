"""The connection health check (config.postgresql): no query for a quiet connection, and a
connection whose backend has ended is found and replaced before the request uses it."""

import psycopg
import pytest
from django.db import connection

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def postgresql():
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL's health check")


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _terminate(pid: int) -> None:
    settings = connection.settings_dict
    with psycopg.connect(
        host=settings["HOST"],
        port=settings["PORT"] or None,
        user=settings["USER"],
        password=settings["PASSWORD"],
        dbname=settings["NAME"],
        autocommit=True,
    ) as other:
        other.execute("SELECT pg_terminate_backend(%s, 5000)", [pid])  # returns once it has ended


def test_quiet_connection_is_kept_without_asking_the_server(postgresql, monkeypatch):
    pid = _backend_pid()
    asked = []  # Django's check: a SELECT 1 round trip
    monkeypatch.setattr(connection, "is_usable", lambda: asked.append(True) or True)
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert not asked
    assert connection.health_check_done
    assert _backend_pid() == pid


def test_connection_whose_backend_ended_is_replaced(postgresql):
    pid = _backend_pid()
    _terminate(pid)
    connection.health_check_done = False
    connection.close_if_health_check_failed()
    assert connection.connection is None
    assert _backend_pid() != pid
