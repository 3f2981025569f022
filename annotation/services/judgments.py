"""Raters' judgments: recording a submission for a leased task (locking: see services.leases)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, OperationalError, connection, transaction
from django.utils import timezone

from annotation.errors import LeaseExpired, LeaseNotFound, LeaseSkipped, QueueBusy, QueueError, TaskClosed
from annotation.models import Answer, Judgment, Lease, Project, Task, Webhook
from annotation.questions import clean_answers, fix_limit
from annotation.rows import columns, fetch_rows, json_param, model_from_row
from annotation.services.leases import (
    TASK_OF_LEASE,
    db_now,
    lease_acquire,
    row_lock,
    task_output_ids,
)
from annotation.webhooks import webhook_event_emit

# Read once the task is locked: the rater's lease (locked), the project, the live leases of
# others on the task (a fresh count: see services.leases.room_left) and whether the project has
# an active webhook. One statement, as the queue's other hot reads are (services.leases).
_LEASE_AND_PROJECT = f"""
    SELECT {columns(Lease, "l")}, {columns(Project, "p")},
        (SELECT COUNT(*) FROM annotation_lease x
         WHERE x.task_id = l.task_id AND x.state = %s AND x.expires_at > %s AND x.id <> l.id),
        EXISTS (SELECT 1 FROM annotation_webhook w WHERE w.project_id = p.id AND w.active = %s)
    FROM annotation_lease l JOIN annotation_project p ON p.id = %s
    WHERE l.id = %s
    {{lock}}"""
_LEASE_WIDTH = len(Lease._meta.concrete_fields)
_PROJECT_WIDTH = len(Project._meta.concrete_fields)

_INSERT_JUDGMENT = """
    INSERT INTO annotation_judgment (project_id, task_id, rater_id, lease_id, display_order,
        time_spent_ms, late, status, round_number, created_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"""
_SUBMIT_LEASE = "UPDATE annotation_lease SET state = %s WHERE id = %s"
_COUNT_JUDGMENT = "UPDATE annotation_task SET judgment_count = %s, status = %s WHERE id = %s"


def _write_judgment(judgment: Judgment, cleaned: list, *, task_count: int, task_status: str) -> int:
    """Insert the judgment and its answers, mark its lease submitted, count it on its task.

    The task and the lease are locked by the caller. On PostgreSQL the four writes are one
    statement (data-modifying WITH queries); SQLite runs them one by one. Returns the judgment's id.
    """
    judgment_params = [
        judgment.project_id,
        judgment.task_id,
        judgment.rater_id,
        judgment.lease_id,
        json_param(Judgment, "display_order", judgment.display_order),
        judgment.time_spent_ms,
        judgment.late,
        judgment.status,
        judgment.round_number,
        db_now(judgment.created_at),
    ]
    answers = [
        (question["name"], question["kind"], json_param(Answer, "value", value))
        for question, value in cleaned
    ]
    lease_params = [Lease.State.SUBMITTED, judgment.lease_id]
    task_params = [task_count, task_status, judgment.task_id]
    if connection.vendor == "postgresql":
        answers_sql = ""
        if answers:
            rows = ", ".join(["(%s, %s, %s)"] * len(answers))
            answers_sql = (
                "a AS (INSERT INTO annotation_answer (judgment_id, question, kind, value)"
                f" SELECT j.id, v.question, v.kind, v.value FROM j, (VALUES {rows}) AS v (question, kind, value)),"
            )
        ((judgment_id,),) = fetch_rows(  # prepared: one statement per number of answers
            f"WITH j AS ({_INSERT_JUDGMENT}), {answers_sql}"
            f" l AS ({_SUBMIT_LEASE}), t AS ({_COUNT_JUDGMENT}) SELECT id FROM j",
            [*judgment_params, *(p for answer in answers for p in answer), *lease_params, *task_params],
        )
        return judgment_id
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_JUDGMENT, judgment_params)
        (judgment_id,) = cursor.fetchone()
        if answers:
            cursor.execute(
                "INSERT INTO annotation_answer (judgment_id, question, kind, value) VALUES "
                + ", ".join(["(%s, %s, %s, %s)"] * len(answers)),
                [p for answer in answers for p in (judgment_id, *answer)],
            )
        cursor.execute(_SUBMIT_LEASE, lease_params)
        cursor.execute(_COUNT_JUDGMENT, task_params)
        return judgment_id


def _longest_output(output_ids: list[int]) -> int:
    """The length in characters of the longest of these outputs (0 for none)."""
    if not output_ids:
        return 0
    marks = ", ".join(["%s"] * len(output_ids))
    ((longest,),) = fetch_rows(
        f"SELECT MAX(LENGTH(text)) FROM annotation_output WHERE id IN ({marks})", output_ids
    )
    return longest or 0


def _asks_for_fixes(questions) -> bool:
    return isinstance(questions, list) and any(
        isinstance(q, dict) and q.get("kind") == "fix" for q in questions
    )


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
        found = fetch_rows(TASK_OF_LEASE.format(lock=row_lock("FOR UPDATE OF t")), [lease_id, rater.pk])
        if not found:
            raise LeaseNotFound("no such lease of yours")
        task = model_from_row(Task, found[0])
        (row,) = fetch_rows(
            _LEASE_AND_PROJECT.format(lock=row_lock("FOR UPDATE OF l")),
            [Lease.State.ACTIVE, db_now(now), True, task.project_id, lease_id],
        )
        lease = model_from_row(Lease, row)
        project = model_from_row(Project, row, _LEASE_WIDTH)
        others_live, has_webhooks = row[_LEASE_WIDTH + _PROJECT_WIDTH :]
        output_ids = lease.display_order or task_output_ids(task)
        # Invalid answers raise here and the transaction writes nothing. The outputs' length
        # only bounds fixes.
        longest = _longest_output(output_ids) if _asks_for_fixes(project.questions) else 0
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
        if not task.is_gold and project.overlap - task.judgment_count - others_live <= 0:
            raise LeaseExpired(
                "your lease on this task expired and other raters have completed it; "
                "your answers were not saved"
            )
        # The writes are SQL too; the ORM's create, bulk_create and update cost more than they do.
        judgment = Judgment(
            project_id=project.pk,
            task_id=task.pk,
            rater_id=rater.pk,
            lease_id=lease.pk,
            display_order=output_ids,
            time_spent_ms=time_spent_ms,
            late=late,
            status=Judgment.Status.PENDING,
            round_number=task.round_number,
            created_at=timezone.now(),
        )
        count = task.judgment_count + 1
        status = Task.Status.COMPLETE if not task.is_gold and count >= project.overlap else task.status
        try:
            judgment.id = _write_judgment(judgment, cleaned, task_count=count, task_status=status)
        except IntegrityError as error:  # the database's (task, rater) constraint; all is rolled back
            raise QueueError("you have already judged this task") from error
        judgment._state.adding = False
        judgment._state.db = connection.alias
        judgment.project, judgment.task, judgment.rater, judgment.lease = project, task, rater, lease
        stored = {question["name"]: value for question, value in cleaned}
        # In the transaction: its deliveries are enqueued only if this judgment commits. The
        # project's webhooks were probed with the lease: without one, there is nothing to record.
        if has_webhooks:
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
