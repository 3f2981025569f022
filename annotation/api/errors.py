"""One error shape for the whole API: {"detail": message, "code": code, "field": name?}.

Services and selectors raise annotation.errors.ApplicationError, whose `code` says why; this
module alone decides which HTTP status each code answers with.

Two failures of the machine rather than the request have codes of their own, here and on the
HTML pages (annotation.views.server_error):

- `database_unavailable`, 503 with Retry-After: the database cannot be reached (restarting, down,
  the connection broken mid-request). Nothing of the request was committed, unless the connection
  broke while the commit itself was under way; a retried submission is answered with the judgment
  either way (submits are idempotent per lease). The broken connection is dropped when the
  request ends (Django closes connections that raised and fail their usability check, and
  CONN_HEALTH_CHECKS checks a kept one before its next request), so the worker reconnects by
  itself once the database is back: no restart of the web processes is needed.
- `no_space`, 507 Insufficient Storage: a file could not be written for lack of disk space (an
  upload spooled to disk, an export being built), or the database server's disk is full (its
  transaction was rolled back). What was half-written was removed; nothing refers to it.
"""

import logging

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import InterfaceError, OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.errors import ApplicationError, no_space

logger = logging.getLogger(__name__)

# The status each domain error code answers with; any other code is a 400.
STATUS_OF_CODE = {
    "invalid": status.HTTP_400_BAD_REQUEST,
    "not_found": status.HTTP_404_NOT_FOUND,
    "permission_denied": status.HTTP_403_FORBIDDEN,
    "not_a_member": status.HTTP_403_FORBIDDEN,
    "lease_not_found": status.HTTP_404_NOT_FOUND,
    "conflict": status.HTTP_409_CONFLICT,
    "lease_skipped": status.HTTP_409_CONFLICT,
    "lease_expired": status.HTTP_409_CONFLICT,
    "task_closed": status.HTTP_409_CONFLICT,
    "busy": status.HTTP_503_SERVICE_UNAVAILABLE,
    "database_unavailable": status.HTTP_503_SERVICE_UNAVAILABLE,
    "no_space": status.HTTP_507_INSUFFICIENT_STORAGE,
    # The loop's (feedback_loop.services.LoopError).
    "round_in_progress": status.HTTP_409_CONFLICT,
    "round_state": status.HTTP_409_CONFLICT,
}


DATABASE_UNAVAILABLE = "the database is unavailable for a moment; please try again"
DATABASE_RETRY_AFTER = "2"  # seconds: a restarting PostgreSQL is back in about that
NO_SPACE = "the server has no space left on its disk to store this; nothing was saved"

# SQLSTATEs of a connection that is gone or cannot be made now: class 08 (connection exception),
# and the server shutting down, crashed, or starting (57P01-57P03). Not 57014 (a query cancelled
# by statement_timeout), which is the same class but says nothing about the connection.
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03")


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached, rather than that a query failed."""
    if isinstance(exc, InterfaceError):  # "connection already closed"
        return True
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    if cause is None or not type(cause).__module__.startswith("psycopg"):
        # SQLite: a file that cannot be opened (a lock wait past its timeout is `busy`).
        return "unable to open database file" in str(exc)
    sqlstate = getattr(cause, "sqlstate", None)
    # No SQLSTATE: the client library's own failure (connection refused, server closed the
    # connection unexpectedly, lost synchronisation), which always concerns the connection.
    return sqlstate is None or sqlstate.startswith(_UNAVAILABLE_STATES)


def _first_message(detail, prefix=""):
    """Flatten DRF's nested validation errors to the first (field, message)."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if not value:
                continue
            if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
                name = f"{prefix}[{key}]"
            elif key in ("non_field_errors", "__all__"):
                name = prefix
            elif key.startswith("["):
                name = f"{prefix}{key}"
            else:
                name = f"{prefix}.{key}" if prefix else key
            return _first_message(value, name)
    if isinstance(detail, list):
        for index, value in enumerate(detail):
            if isinstance(value, dict | list):
                if value:
                    return _first_message(value, f"{prefix}[{index}]")
                continue
            return prefix, str(value)
    return prefix, str(detail)


def exception_handler(exc, context):
    if isinstance(exc, ApplicationError):
        return Response(
            {"detail": str(exc), "code": exc.code, **exc.extra},
            status=STATUS_OF_CODE.get(exc.code, status.HTTP_400_BAD_REQUEST),
        )
    if isinstance(exc, OperationalError) and "database is locked" in str(exc):
        # SQLite's write lock stayed busy past its timeout. The transaction was rolled back and
        # nothing was written; the server does not retry on its own, the client may (submits
        # are idempotent per lease).
        return Response(
            {"detail": "the database is busy; nothing was saved, please try again", "code": "busy"},
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    if database_unavailable(exc):
        logger.warning("database unavailable: %s", exc)
        return Response(
            {"detail": DATABASE_UNAVAILABLE, "code": "database_unavailable"},
            status=STATUS_OF_CODE["database_unavailable"],
            headers={"Retry-After": DATABASE_RETRY_AFTER},
        )
    if no_space(exc):
        logger.error("no space left on device: %s", exc)
        return Response({"detail": NO_SPACE, "code": "no_space"}, status=STATUS_OF_CODE["no_space"])
    if isinstance(exc, RequestDataTooBig):
        return Response(
            {"detail": "the request body is larger than the server accepts", "code": "too_large"},
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
        )
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return Response(
            {
                "detail": "the form has more fields or files than the server accepts",
                "code": "too_many_fields",
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        field, message = _first_message(exc.detail)
        response.data = {
            "detail": f"{field}: {message}" if field else message,
            "code": "invalid",
            "field": field or None,
            "errors": exc.detail,
        }
    elif isinstance(response.data, dict) and "code" not in response.data:
        # DRF's own errors (not found, not allowed, not authenticated ...) carry their code on the detail.
        detail = response.data.get("detail", "")
        response.data = {"detail": str(detail), "code": getattr(detail, "code", None) or "error"}
    return response
