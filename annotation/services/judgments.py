"""Raters' judgments: recording a submission for a leased task (locking: see services.leases)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, OperationalError, transaction
from django.db.models import Max
from django.db.models.functions import Length
from django.utils import timezone

from annotation.errors import LeaseExpired, LeaseNotFound, LeaseSkipped, QueueBusy, QueueError, TaskClosed
from annotation.models import Answer, Judgment, Lease, Output, Project, Task, Webhook
from annotation.questions import clean_answers, fix_limit
from annotation.services.leases import TASK_OF_LEASE, lease_acquire, room_left, row_lock, task_output_ids
from annotation.webhooks import webhook_event_emit


@dataclass
class Submission:
    judgment: Judgment
    created: bool  # False when this lease had already been submitted (a retried request)
    answers: dict | None = None  # the answers stored, by question name, when created


@dataclass
class SubmissionAndNext:
    submission: Submission
    next_lease: Lease | None  # None: nothing left for the rater, or next_error says why not
    next_error: QueueError | None = None  # why no next lease could be taken; the judgment is saved


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
    with transaction.atomic():
        # The task is locked first (and alone), found through the rater's lease; then the lease.
        found = list(
            Task.objects.raw(TASK_OF_LEASE.format(lock=row_lock("FOR UPDATE OF t")), [lease_id, rater.pk])
        )
        if not found:
            raise LeaseNotFound("no such lease of yours")
        task = found[0]
        (project,) = Project.objects.raw("SELECT * FROM annotation_project WHERE id = %s", [task.project_id])
        (lease,) = Lease.objects.raw(
            f"SELECT * FROM annotation_lease WHERE id = %s {row_lock('FOR UPDATE')}", [lease_id]
        )
        output_ids = lease.display_order or task_output_ids(task)
        # Invalid answers raise here and the transaction writes nothing.
        longest = Output.objects.filter(pk__in=output_ids).aggregate(n=Max(Length("text")))["n"] or 0
        cleaned = clean_answers(
            project.questions,
            task_kind=task.kind,
            output_ids=output_ids,
            answers=answers,
            max_fix_chars=fix_limit(longest, cap=project.max_fix_chars),
        )
        if lease.state == Lease.State.SUBMITTED:
            return Submission(judgment=Judgment.objects.get(lease=lease), created=False)
        if lease.state == Lease.State.SKIPPED:
            raise LeaseSkipped("you skipped this task; its lease is released")
        late = lease.expires_at <= now
        if task.status == Task.Status.CLOSED:
            raise TaskClosed("a curator closed this task")
        # A live lease holds its own place; a late one only gets a place nobody else holds.
        # Gold tasks have no overlap to fill.
        if (
            not task.is_gold
            and room_left(task, overlap=project.overlap, now=now, exclude_lease=lease.pk) <= 0
        ):
            raise LeaseExpired(
                "your lease on this task expired and other raters have completed it; "
                "your answers were not saved"
            )
        try:
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
        except IntegrityError as error:  # the database's (task, rater) constraint; all is rolled back
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
        stored = {question["name"]: value for question, value in cleaned}
        # In the transaction: its deliveries are enqueued only if this judgment commits.
        webhook_event_emit(
            project=project,
            event=Webhook.Event.JUDGMENT_SUBMITTED,
            payload={
                "judgment": judgment.pk,
                "task": task.pk,
                "task_kind": task.kind,
                "rater": {"id": rater.pk, "username": rater.get_username()},
                "late": late,
                "time_spent_ms": time_spent_ms,
                "round": task.round_number,
                "display_order": output_ids,
                "answers": stored,
                "created_at": judgment.created_at,
            },
        )
    return Submission(judgment=judgment, created=True, answers=stored)


def judgment_submit_and_next(
    *,
    lease_id: int,
    rater: AbstractBaseUser,
    answers: dict,
    time_spent_ms: int | None = None,
) -> SubmissionAndNext:
    """Record a rater's answers, then lease their next task of the same project.

    Two transactions, one after the other: the judgment is committed (and may be acknowledged)
    before the next lease is asked for, and the two never hold locks at once, so each keeps the
    lock order of services.leases. A refusal of the submission raises as judgment_submit does
    and no lease is taken. Once the judgment is saved, a failure to lease the next task is
    returned in `next_error`, never raised: the judgment stays saved.
    """
    submission = judgment_submit(lease_id=lease_id, rater=rater, answers=answers, time_spent_ms=time_spent_ms)
    try:
        lease = lease_acquire(project=submission.judgment.project_id, rater=rater)
    except QueueError as error:  # the rater was removed from the project meanwhile, say
        return SubmissionAndNext(submission=submission, next_lease=None, next_error=error)
    except OperationalError:  # a lock or statement timeout, SQLite's write lock: rolled back
        busy = QueueBusy("the database was busy; your answers are saved, ask for your next task again")
        return SubmissionAndNext(submission=submission, next_lease=None, next_error=busy)
    return SubmissionAndNext(submission=submission, next_lease=lease)
