"""Everything that writes on the human side: the task queue, submissions, imports.

Locking rules (PostgreSQL). Locks are always taken in the order membership → task → lease, so
the queue cannot deadlock with itself:
- `lease_acquire` locks the rater's membership row (one rater's parallel requests queue up
  behind each other), then a task row with SKIP LOCKED, then writes the lease.
- `judgment_submit` locks the task row, then the lease row.
- `lease_skip` locks only the lease row.
Every change to a task's judgment count, and every lease written for it, happens while its row
is locked, so a fresh count read under that lock is exact.

SQLite has no row locks: its connections open transactions with BEGIN IMMEDIATE (see
config.env), which takes the database's write lock up front and serialises these functions.
The unique constraints on (task, rater) for leases and judgments hold on both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Count, Exists, F, IntegerField, OuterRef, Q, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.models import Answer, Judgment, Lease, Membership, Project, Task, TaskOutput
from annotation.questions import clean_answers


class QueueError(Exception):
    """A queue operation that cannot go ahead; `code` tells the caller why."""

    status = 409
    code = "conflict"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotAMember(QueueError):
    status = 403
    code = "not_a_member"


class LeaseNotFound(QueueError):
    status = 404
    code = "lease_not_found"


class LeaseSkipped(QueueError):
    code = "lease_skipped"


class LeaseExpired(QueueError):
    """The lease ran out and other raters have since filled the task."""

    code = "lease_expired"


class TaskClosed(QueueError):
    code = "task_closed"


# How many locked-but-full candidates lease_acquire steps over before giving up on a request.
MAX_CANDIDATES = 20


def _live_leases(now: datetime) -> Q:
    return Q(state=Lease.State.ACTIVE, expires_at__gt=now)


def _candidate_tasks(*, project: Project, rater: AbstractBaseUser, now: datetime, gold: bool):
    """Open tasks that still have room and that this rater has not judged, skipped or been refused."""
    done_by_rater = Lease.objects.filter(
        task=OuterRef("pk"), rater=rater, state__in=[Lease.State.SUBMITTED, Lease.State.SKIPPED]
    )
    tasks = Task.objects.filter(project=project, status=Task.Status.OPEN, is_gold=gold).filter(
        ~Exists(done_by_rater)
    )
    if not gold:
        live = (
            Lease.objects.filter(_live_leases(now), task=OuterRef("pk"))
            .order_by()
            .values("task")
            .annotate(n=Count("id"))
            .values("n")
        )
        tasks = (
            tasks.filter(judgment_count__lt=project.overlap)
            .annotate(live=Coalesce(Subquery(live, output_field=IntegerField()), Value(0)))
            .filter(judgment_count__lt=project.overlap - F("live"))
        )
    return tasks.order_by("priority", "id")


def _room_left(task: Task, *, overlap: int, now: datetime, exclude_lease: int | None = None) -> int:
    """Free places on a locked task, counted with a fresh read."""
    live = Lease.objects.filter(_live_leases(now), task=task)
    if exclude_lease is not None:
        live = live.exclude(pk=exclude_lease)
    return overlap - task.judgment_count - live.count()


def _write_lease(task: Task, *, rater: AbstractBaseUser, project: Project, now: datetime) -> Lease:
    output_ids = list(
        TaskOutput.objects.filter(task=task).order_by("position").values_list("output_id", flat=True)
    )
    if task.kind != Task.Kind.SINGLE:
        random.shuffle(output_ids)  # side order randomised per lease, and recorded
    expires_at = now + project.lease_time
    # A rater whose earlier lease on this task ran out (never submitted) gets it renewed.
    updated = Lease.objects.filter(task=task, rater=rater, state=Lease.State.ACTIVE).update(
        created_at=now, expires_at=expires_at, display_order=output_ids
    )
    if updated:
        return Lease.objects.select_related("task").get(task=task, rater=rater)
    return Lease.objects.create(
        task=task, rater=rater, created_at=now, expires_at=expires_at, display_order=output_ids
    )


def lease_acquire(*, project: Project, rater: AbstractBaseUser, now: datetime | None = None) -> Lease | None:
    """Hand the rater a task of this project, or None when nothing is left for them.

    A rater holding a live lease gets the same lease back. Gold tasks are mixed in at the
    project's gold rate and do not count against the overlap.
    """
    now = now or timezone.now()
    with transaction.atomic():
        membership = (
            Membership.objects.select_for_update().filter(user=rater, project=project, is_active=True).first()
        )
        if membership is None:
            raise NotAMember("you are not a rater of this project")
        held = (
            Lease.objects.select_related("task")
            .filter(_live_leases(now), rater=rater, task__project=project)
            .order_by("id")
            .first()
        )
        if held is not None:
            return held

        if project.gold_rate > 0 and random.random() < project.gold_rate:
            gold = _candidate_tasks(project=project, rater=rater, now=now, gold=True).first()
            if gold is not None:
                return _write_lease(gold, rater=rater, project=project, now=now)

        passed_over: list[int] = []
        for _ in range(MAX_CANDIDATES):
            task = (
                _candidate_tasks(project=project, rater=rater, now=now, gold=False)
                .exclude(pk__in=passed_over)
                .select_for_update(skip_locked=True, of=("self",))
                .first()
            )
            if task is None:
                break
            # The candidate query ran on a snapshot taken before we held the lock; a lease
            # committed in between is only visible to a fresh read made under the lock.
            if _room_left(task, overlap=project.overlap, now=now) > 0:
                return _write_lease(task, rater=rater, project=project, now=now)
            passed_over.append(task.pk)
        else:
            return None
        # Every candidate we saw was full or locked by someone else. A locked one may still have
        # room once its holder commits: wait for it rather than tell the rater the queue is empty.
        for task in _candidate_tasks(project=project, rater=rater, now=now, gold=False).exclude(
            pk__in=passed_over
        )[:MAX_CANDIDATES]:
            task = Task.objects.select_for_update().get(pk=task.pk)
            if task.status == Task.Status.OPEN and _room_left(task, overlap=project.overlap, now=now) > 0:
                return _write_lease(task, rater=rater, project=project, now=now)
        return None


def lease_skip(*, lease_id: int, rater: AbstractBaseUser) -> Lease:
    with transaction.atomic():
        lease = Lease.objects.select_for_update().filter(pk=lease_id, rater=rater).first()
        if lease is None:
            raise LeaseNotFound("no such lease of yours")
        if lease.state == Lease.State.SUBMITTED:
            raise QueueError("this task was already submitted")
        if lease.state == Lease.State.ACTIVE:
            lease.state = Lease.State.SKIPPED
            lease.save(update_fields=["state"])
        return lease


@dataclass
class Submission:
    judgment: Judgment
    created: bool  # False when this lease had already been submitted (a retried request)


def judgment_submit(
    *,
    lease_id: int,
    rater: AbstractBaseUser,
    answers: dict,
    time_spent_ms: int | None = None,
    now: datetime | None = None,
) -> Submission:
    """Record a rater's answers for a leased task. Returns only after the judgment is committed.

    Raises AnswerError for invalid answers (nothing written) and QueueError subclasses when the
    submission cannot be accepted. A late submission (lease expired) is accepted while the task
    still has room.
    """
    now = now or timezone.now()
    lease = Lease.objects.select_related("task__project").filter(pk=lease_id, rater=rater).first()
    if lease is None:
        raise LeaseNotFound("no such lease of yours")
    task, project = lease.task, lease.task.project
    output_ids = lease.display_order or list(
        TaskOutput.objects.filter(task=task).order_by("position").values_list("output_id", flat=True)
    )
    cleaned = clean_answers(project.questions, task_kind=task.kind, output_ids=output_ids, answers=answers)

    with transaction.atomic():
        task = Task.objects.select_for_update().get(pk=task.pk)
        lease = Lease.objects.select_for_update().get(pk=lease_id)
        if lease.state == Lease.State.SUBMITTED:
            return Submission(judgment=Judgment.objects.get(lease=lease), created=False)
        if lease.state == Lease.State.SKIPPED:
            raise LeaseSkipped("you skipped this task; its lease is released")
        late = lease.expires_at <= now
        if not task.is_gold:
            if task.status == Task.Status.CLOSED:
                raise TaskClosed("a curator closed this task")
            # A live lease holds its own place; a late one only gets a place nobody else holds.
            if _room_left(task, overlap=project.overlap, now=now, exclude_lease=lease.pk) <= 0:
                raise LeaseExpired(
                    "your lease on this task expired and other raters have completed it; "
                    "your answers were not saved"
                )
        try:
            with transaction.atomic():
                judgment = Judgment.objects.create(
                    project=project,
                    task=task,
                    rater=rater,
                    lease=lease,
                    display_order=output_ids,
                    time_spent_ms=time_spent_ms,
                    late=late,
                    round_number=task.round_number,
                )
        except IntegrityError as error:  # the database's (task, rater) constraint
            raise QueueError("you have already judged this task") from error
        Answer.objects.bulk_create(
            Answer(judgment=judgment, question=question["name"], kind=question["kind"], value=value)
            for question, value in cleaned
        )
        Lease.objects.filter(pk=lease.pk).update(state=Lease.State.SUBMITTED)
        count = task.judgment_count + 1
        fields = {"judgment_count": count}
        if not task.is_gold and count >= project.overlap:
            fields["status"] = Task.Status.COMPLETE
        Task.objects.filter(pk=task.pk).update(**fields)
    return Submission(judgment=judgment, created=True)
