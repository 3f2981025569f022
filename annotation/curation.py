"""Everything a curator writes: judgment review, project membership, and the audit trail of both.

Every change is recorded as an AuditEvent (who, what, when, why, status before and after) in
the same transaction as the change itself, so the log cannot miss a change nor record one that
was rolled back.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from annotation import selectors
from annotation.errors import ApplicationError
from annotation.models import (
    TRAINING_STATUSES,
    AuditEvent,
    Judgment,
    Lease,
    Membership,
    Project,
    stats_changed,
)

REVIEW_ACTIONS = {
    Judgment.Status.ACCEPTED: AuditEvent.Action.ACCEPT,
    Judgment.Status.REJECTED: AuditEvent.Action.REJECT,
    Judgment.Status.EXCLUDED: AuditEvent.Action.EXCLUDE,
    Judgment.Status.PENDING: AuditEvent.Action.REOPEN,
}
# Statuses that need a reason: taking a rater's work out of the data should say why.
REASON_REQUIRED = (Judgment.Status.REJECTED, Judgment.Status.EXCLUDED)
# Ids per query: SQLite caps the parameters of one statement.
CHUNK = 500


class CurationError(ApplicationError, ValueError):
    """A curation request that cannot go ahead, with a message for the curator."""


def judgments_review(
    *,
    actor: AbstractBaseUser,
    judgments: QuerySet[Judgment] | Iterable[int],
    status: str,
    reason: str = "",
) -> int:
    """Set the review status of judgments; returns how many changed.

    Judgments already in `status` are left alone and not audited. Each changed judgment gets one
    AuditEvent. Raises PermissionDenied if any judgment is outside the actor's curated projects,
    and CurationError for an unknown status or a missing reason.
    """
    if status not in REVIEW_ACTIONS:
        raise CurationError(f"status must be one of {', '.join(REVIEW_ACTIONS)} (got {status!r})")
    reason = (reason or "").strip()
    if status in REASON_REQUIRED and not reason:
        raise CurationError(f"say why these judgments are {Judgment.Status(status).label.lower()}")
    ids = (
        list(judgments.values_list("pk", flat=True))
        if isinstance(judgments, QuerySet)
        else [int(pk) for pk in judgments]
    )
    curated = set(selectors.project_list_curated(actor).values_list("pk", flat=True))
    now = timezone.now()
    changed = 0
    touched: set[int] = set()
    with transaction.atomic():
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            # Locked, so the "before" we audit is the status we overwrite, whatever runs beside us.
            rows = list(
                Judgment.objects.select_for_update()
                .filter(pk__in=chunk)
                .order_by("pk")
                .values_list("pk", "project_id", "status")
            )
            if not {project_id for _, project_id, _ in rows} <= curated:
                raise PermissionDenied("you can only review the judgments of projects you curate")
            rows = [row for row in rows if row[2] != status]
            if not rows:
                continue
            changed += (
                Judgment.objects.filter(pk__in=[pk for pk, _, _ in rows])
                .exclude(status=status)
                .update(status=status)
            )
            AuditEvent.objects.bulk_create(
                AuditEvent(
                    actor=actor,
                    project_id=project_id,
                    action=REVIEW_ACTIONS[status],
                    object_type="judgment",
                    object_id=pk,
                    reason=reason,
                    before={"status": before},
                    after={"status": status},
                    created_at=now,
                )
                for pk, project_id, before in rows
            )
            touched.update(project_id for _, project_id, _ in rows)
        # What the projects' statistics count has changed (the last writes: see stats_changed).
        for project_id in sorted(touched):
            stats_changed(project_id)
    return changed


def _is_project_admin(user: AbstractBaseUser, project: Project) -> bool:
    return (
        user.is_superuser
        or Membership.objects.filter(
            user=user, project=project, is_active=True, role=Membership.Role.ADMIN
        ).exists()
    )


def _membership_state(membership: Membership | None) -> dict:
    if membership is None:
        return {}
    return {"role": membership.role, "is_active": membership.is_active}


def membership_add(
    *, actor: AbstractBaseUser, project: Project, user: AbstractBaseUser, role: str, reason: str = ""
) -> Membership:
    """Make `user` an active member of the project with `role` (adding, reactivating or changing them).

    Curators may grant rater and curator roles; the project admin role takes a project admin or
    a superuser. An unchanged membership is returned as it is, and not audited.
    """
    if role not in Membership.Role.values:
        raise CurationError(f"role must be one of {', '.join(Membership.Role.values)} (got {role!r})")
    if not selectors.project_can_curate(actor, project):
        raise PermissionDenied("only the project's curators can add members")
    if role == Membership.Role.ADMIN and not _is_project_admin(actor, project):
        raise PermissionDenied("only the project's admins can make someone a project admin")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(user=user, project=project).first()
        if membership and membership.role == Membership.Role.ADMIN and not _is_project_admin(actor, project):
            raise PermissionDenied("only the project's admins can change a project admin's membership")
        before = _membership_state(membership)
        if membership is None:
            membership = Membership.objects.create(user=user, project=project, role=role)
            action = AuditEvent.Action.MEMBER_ADD
        elif before == {"role": role, "is_active": True}:
            return membership
        else:
            membership.role, membership.is_active = role, True
            membership.save(update_fields=["role", "is_active"])
            action = AuditEvent.Action.MEMBER_CHANGE
        AuditEvent.objects.create(
            actor=actor,
            project=project,
            action=action,
            object_type="membership",
            object_id=membership.pk,
            reason=reason.strip() or f"{user.get_username()} as {role}",
            before=before,
            after=_membership_state(membership),
        )
    return membership


def user_create(*, username: str) -> tuple[AbstractBaseUser, str]:
    """A new account with a generated password, returned once (the caller shows it, nothing keeps it)."""
    user_model = get_user_model()
    username = username.strip()
    if not username:
        raise CurationError("give a username")
    if user_model.objects.filter(**{f"{user_model.USERNAME_FIELD}__iexact": username}).exists():
        raise CurationError(f"the username {username!r} is taken")
    password = secrets.token_urlsafe(12)
    user = user_model.objects.create_user(username=username, password=password)
    return user, password


def membership_add_by_username(
    *, actor: AbstractBaseUser, project: Project, username: str, role: str, create_account: bool = False
) -> tuple[AbstractBaseUser, str | None]:
    """membership_add for an account named by its username, made first with `create_account`.

    All or nothing: a refused membership leaves no new account behind. Returns the user and,
    for a new account, its one-time password.
    """
    password = None
    with transaction.atomic():
        if create_account:
            user, password = user_create(username=username)
        else:
            user = get_user_model().objects.filter(username=username).first()
            if user is None:
                raise CurationError(
                    f"there is no account {username!r}; tick “Create a new account” to make one"
                )
        membership_add(actor=actor, project=project, user=user, role=role)
    return user, password


def rater_deactivate(
    *,
    actor: AbstractBaseUser,
    project: Project,
    user: AbstractBaseUser,
    exclude_judgments: bool = False,
    reason: str = "",
) -> int:
    """Take a member off the project: no new tasks, their held leases released; returns judgments excluded.

    With `exclude_judgments`, their pending and accepted judgments become excluded from training
    (rejected ones stay rejected), each audited like a curator's exclusion.
    """
    if not selectors.project_can_curate(actor, project):
        raise PermissionDenied("only the project's curators can deactivate members")
    reason = (reason or "").strip()
    if not reason:
        raise CurationError("say why this member is deactivated")
    if user.pk == actor.pk:
        raise CurationError("you cannot deactivate yourself")
    with transaction.atomic():
        membership = Membership.objects.select_for_update().filter(user=user, project=project).first()
        if membership is None:
            raise CurationError(f"{user.get_username()} is not a member of {project.name}")
        if membership.role == Membership.Role.ADMIN and not _is_project_admin(actor, project):
            raise PermissionDenied("only the project's admins can deactivate a project admin")
        if membership.is_active:
            before = _membership_state(membership)
            membership.is_active = False
            membership.save(update_fields=["is_active"])
            AuditEvent.objects.create(
                actor=actor,
                project=project,
                action=AuditEvent.Action.MEMBER_DEACTIVATE,
                object_type="membership",
                object_id=membership.pk,
                reason=reason,
                before=before,
                after=_membership_state(membership),
            )
        # A released lease is "skipped": its place goes back to the pool at once, and a late
        # submission on it is refused (judgment_submit does not look at the membership).
        Lease.objects.filter(rater=user, task__project=project, state=Lease.State.ACTIVE).update(
            state=Lease.State.SKIPPED
        )
        if not exclude_judgments:
            return 0
        judgments = Judgment.objects.filter(
            project=project,
            rater=user,
            status__in=TRAINING_STATUSES,
        )
        return judgments_review(
            actor=actor, judgments=judgments, status=Judgment.Status.EXCLUDED, reason=reason
        )
