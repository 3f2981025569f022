"""A database that cannot be reached answers 503 (database_unavailable, Retry-After) and a full disk
507 (no_space), as JSON in the API and as a plain page elsewhere; other database errors stay 500s.
(tests/test_database_restart.py restarts a real PostgreSQL under load.)"""

import errno
import sqlite3

import psycopg
import pytest
from django.db import InterfaceError, OperationalError
from django.test import Client
from rest_framework.test import APIClient

from annotation.api.errors import database_unavailable
from annotation.errors import no_space
from annotation.services import leases

pytestmark = pytest.mark.django_db


def wrapped(cause: Exception) -> OperationalError:
    """As Django raises it: its own OperationalError, the driver's error as the cause."""
    try:
        raise OperationalError(str(cause)) from cause
    except OperationalError as error:
        return error


@pytest.mark.parametrize(
    ("cause", "unavailable"),
    [
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.lookup("08006")("connection failure"), True),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg.errors.LockNotAvailable("could not obtain lock"), False),
        (sqlite3.OperationalError("database is locked"), False),
        (sqlite3.OperationalError("unable to open database file"), True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_which_database_errors_mean_unavailable(cause, unavailable):
    assert database_unavailable(wrapped(cause)) is unavailable


def test_interface_errors_and_full_disks_are_recognised():
    assert database_unavailable(InterfaceError("connection already closed"))
    assert no_space(OSError(errno.ENOSPC, "No space left on device"))
    assert not no_space(OSError(errno.EACCES, "Permission denied"))
    assert not database_unavailable(ValueError("no"))


def _raise(error):
    def fail(*args, **kwargs):
        raise error

    return fail


def test_api_answers_503_json_with_retry_after_when_the_database_is_away(monkeypatch, project, bob):
    away = wrapped(psycopg.errors.AdminShutdown("terminating connection due to administrator command"))
    monkeypatch.setattr(leases, "lease_acquire", _raise(away))
    client = APIClient()
    client.force_authenticate(bob)
    response = client.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"
    assert response.json() == {
        "detail": "the database is unavailable for a moment; please try again",
        "code": "database_unavailable",
    }


def test_api_answers_507_json_on_a_full_disk(monkeypatch, project, bob):
    monkeypatch.setattr(leases, "lease_acquire", _raise(OSError(errno.ENOSPC, "No space left on device")))
    client = APIClient()
    client.force_authenticate(bob)
    response = client.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert response.status_code == 507
    assert response.json()["code"] == "no_space"


def test_other_database_errors_stay_500s(monkeypatch, project, bob):
    monkeypatch.setattr(leases, "lease_acquire", _raise(wrapped(psycopg.errors.QueryCanceled("timeout"))))
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(bob)
    assert client.post(f"/api/v1/projects/{project.pk}/next-task/").status_code == 500


@pytest.mark.parametrize(
    ("error", "status", "title"),
    [
        (
            wrapped(psycopg.OperationalError("connection failed: Connection refused")),
            503,
            "Service unavailable",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), 507, "Insufficient storage"),
    ],
    ids=["database", "disk"],
)
def test_pages_answer_a_plain_page_that_needs_no_database(monkeypatch, bob, project, error, status, title):
    from annotation import selectors

    monkeypatch.setattr(selectors, "projects_progress", _raise(error))
    client = Client(raise_request_exception=False)
    client.force_login(bob)
    response = client.get("/")
    assert response.status_code == status
    assert response["Content-Type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in response.content.decode()
    assert ("Retry-After" in response) is (status == 503)


def test_an_api_error_that_escapes_drf_is_answered_in_json(rf):
    """A middleware's failure never reaches DRF's handler: handler500 answers it, in the API's shape."""
    from annotation.views import server_error

    try:
        raise wrapped(psycopg.OperationalError("server closed the connection unexpectedly"))
    except OperationalError:
        response = server_error(rf.get("/api/v1/projects/"))
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json"
    assert b'"code": "database_unavailable"' in response.content
