"""The domain errors of the human side: every refusal a service or selector raises carries a `code`.

Codes say why, not how to answer: annotation.api.errors alone maps them to HTTP statuses, and
the curator pages turn them into form errors. `extra` holds whatever else a client is told
(the field at fault, the line of an import).
"""

from __future__ import annotations


class ApplicationError(Exception):
    """A request the domain refuses; `str()` is the message shown to the user."""

    code = "invalid"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    @property
    def extra(self) -> dict:
        """What a client is told besides the message and the code."""
        return {}


class NotFound(ApplicationError):
    """Nothing of that name the user may see (it may exist, hidden from them)."""

    code = "not_found"


class NotAllowed(ApplicationError):
    """The user sees the object but may not do this to it."""

    code = "permission_denied"


# ---------------------------------------------------------------- the rating queue


class QueueError(ApplicationError):
    """A queue operation that cannot go ahead; `code` tells the caller why."""

    code = "conflict"


class NotAMember(QueueError):
    code = "not_a_member"


class LeaseNotFound(QueueError):
    code = "lease_not_found"


class LeaseSkipped(QueueError):
    code = "lease_skipped"


class LeaseExpired(QueueError):
    """The lease ran out and other raters have since filled the task."""

    code = "lease_expired"


class TaskClosed(QueueError):
    code = "task_closed"


class EnqueueError(QueueError):
    """New outputs or tasks that cannot be written as asked; nothing was written."""

    code = "invalid"


class ProjectTemplateError(ApplicationError):
    """A project cannot be created from a template as asked; nothing was written."""

    code = "invalid"
