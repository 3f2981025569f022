"""One error shape for the whole API: {"detail": message, "code": code, "field": name?}.

Services and selectors raise annotation.errors.ApplicationError, whose `code` says why; this
module alone decides which HTTP status each code answers with.
"""

from django.core.exceptions import RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent
from django.db import OperationalError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from annotation.errors import ApplicationError

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
    # The loop's (feedback_loop.services.LoopError).
    "round_in_progress": status.HTTP_409_CONFLICT,
    "round_state": status.HTTP_409_CONFLICT,
}


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
