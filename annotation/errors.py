"""The domain errors of the human side: every refusal a service or selector raises carries a `code`.

Codes say why, not how to answer: annotation.api.errors alone maps them to HTTP statuses, and
the curator pages turn them into form errors. `extra` holds whatever else a client is told
(the field at fault, the line of an import). A subclass names its code in its bases:
`class TaskClosed(QueueError, code="task_closed")`.
"""

from __future__ import annotations

import errno


class ApplicationError(Exception):
    """A request the domain refuses; `str()` is the message shown to the user."""

    code = "invalid"

    def __init_subclass__(cls, code: str = "", **kwargs):
        super().__init_subclass__(**kwargs)
        if code:
            cls.code = code

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    @property
    def extra(self) -> dict:
        """What a client is told besides the message and the code."""
        return {}


class NotFound(ApplicationError, code="not_found"):
    """Nothing of that name the user may see (it may exist, hidden from them)."""


class NotAllowed(ApplicationError, code="permission_denied"):
    """The user sees the object but may not do this to it."""


# ---------------------------------------------------------------- the rating queue


class QueueError(ApplicationError, code="conflict"):
    """A queue operation that cannot go ahead; `code` tells the caller why."""


class NotAMember(QueueError, code="not_a_member"):
    """The user is not an active rater of the project."""


class LeaseNotFound(QueueError, code="lease_not_found"):
    """No such lease of the user's."""


class LeaseSkipped(QueueError, code="lease_skipped"):
    """The rater gave the task back; its lease is released."""


class LeaseExpired(QueueError, code="lease_expired"):
    """The lease ran out and other raters have since filled the task."""


class TaskClosed(QueueError, code="task_closed"):
    """A curator closed the task."""


class QueueBusy(QueueError, code="busy"):
    """The database could not serve the request in time; nothing was written by it."""


class EnqueueError(QueueError, code="invalid"):
    """New outputs or tasks that cannot be written as asked; nothing was written."""


class ProjectTemplateError(ApplicationError):
    """A project cannot be created from a template as asked; nothing was written."""


# ---------------------------------------------------------------- the machine


def no_space(exc: BaseException) -> bool:
    """Whether `exc` is a write refused for lack of disk space (or of quota): here, or on the
    database server (PostgreSQL's disk_full, 53100, under Django's OperationalError; the
    transaction is rolled back). pyarrow's IO errors are OSErrors that carry the system's message
    but not always its errno."""
    if getattr(exc.__cause__, "sqlstate", None) == "53100":
        return True
    if not isinstance(exc, OSError):
        return False
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc)
