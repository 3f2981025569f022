"""Everything that writes on the human side: the task queue, submissions, imports.

Locking rules (PostgreSQL). Locks are always taken in the order membership → task → lease, so
the queue cannot deadlock with itself:
- `lease_acquire` locks the rater's membership row (one rater's parallel requests queue up
  behind each other), then a task row with SKIP LOCKED, then writes the lease.
- `judgment_submit` locks the task row, then the lease row.
- `lease_skip` locks only the lease row.
- `judgment_submit` then records a `judgment.submitted` webhook event (annotation.webhooks):
  one indexed read when the project has no webhooks; otherwise delivery rows, whose foreign key
  takes a key-share lock on webhook rows. Nothing that locks webhook rows locks tasks or leases,
  so the order above still holds. The deliveries are sent only after the commit.
Every change to a task's judgment count, and every lease written for it, happens while its row
is locked, so a fresh count read under that lock is exact.

SQLite has no row locks: its connections open transactions with BEGIN IMMEDIATE (see
config.env), which takes the database's write lock up front and serialises these functions.
The unique constraints on (task, rater) for leases and judgments hold on both.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Max
from django.db.models.functions import Length
from django.utils import timezone

from annotation import templates_qa2
from annotation.models import Answer, Judgment, Lease, Output, Project, Prompt, Task, TaskOutput, Webhook
from annotation.questions import clean_answers, fix_limit, questions_for
from annotation.webhooks import webhook_event_emit


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

# The queue's reads are written in SQL: they run on every request for a task or a submission,
# and building them with the ORM cost more CPU than everything else in those requests (see
# bench/queue.py). They run on PostgreSQL and SQLite alike; `{lock}` becomes a row-lock clause
# on PostgreSQL and nothing on SQLite, whose transactions are serialised instead.

# The rater's active membership, with its project, locking only the membership row.
_PROJECT_OF_MEMBER = """
    SELECT p.* FROM annotation_project p JOIN annotation_membership m ON m.project_id = p.id
    WHERE m.user_id = %s AND m.project_id = %s AND m.is_active = %s
    {lock}"""

# A live lease the rater already holds in the project, on a task still open (a curator may have
# closed it since: the rater is then handed another task).
_HELD_LEASE = """
    SELECT l.* FROM annotation_lease l JOIN annotation_task t ON t.id = l.task_id
    WHERE l.rater_id = %s AND t.project_id = %s AND l.state = %s AND l.expires_at > %s
    AND t.status = %s
    ORDER BY l.id LIMIT 1"""

# Open tasks, in queue order, that the rater has not submitted or skipped and that, gold tasks
# aside, still have room: judgment_count plus live leases below the overlap. `own_lease_id` is
# the rater's lease on the task, which can only be an expired active one (a live one is handed
# back first). The rater's lease is read by a scalar subquery, a probe of the (task, rater)
# index per task visited: written as NOT EXISTS, PostgreSQL plans an anti-join that may read
# all of the rater's leases for every task it visits.
_CANDIDATES = """
    SELECT t.*,
        (SELECT l.id FROM annotation_lease l WHERE l.task_id = t.id AND l.rater_id = %(rater)s)
        AS own_lease_id
    FROM annotation_task t
    WHERE t.project_id = %(project)s AND t.status = %(open)s AND t.is_gold = %(gold)s
    AND COALESCE(
        (SELECT l.state FROM annotation_lease l WHERE l.task_id = t.id AND l.rater_id = %(rater)s),
        %(active)s
    ) = %(active)s
    {room}
    {exclude}
    ORDER BY t.priority, t.id LIMIT %(limit)s
    {lock}"""
_ROOM = """AND t.judgment_count < %(overlap)s AND t.judgment_count + (
        SELECT COUNT(*) FROM annotation_lease l
        WHERE l.task_id = t.id AND l.state = %(active)s AND l.expires_at > %(now)s
    ) < %(overlap)s"""

# A locked task's live leases, read afresh (see _room_left).
_LIVE_LEASES = """
    SELECT COUNT(*) FROM annotation_lease
    WHERE task_id = %s AND state = %s AND expires_at > %s AND id <> %s"""

# The task of a rater's lease, locking only the task row.
_TASK_OF_LEASE = """
    SELECT t.* FROM annotation_task t JOIN annotation_lease l ON l.task_id = t.id
    WHERE l.id = %s AND l.rater_id = %s
    {lock}"""


def _lock(clause: str) -> str:
    return clause if connection.features.has_select_for_update else ""


def _db_now(now: datetime):
    return connection.ops.adapt_datetimefield_value(now)


def _candidate_tasks(
    *,
    project: Project,
    rater: AbstractBaseUser,
    now: datetime,
    gold: bool,
    lock: bool = False,
    exclude: Sequence[int] = (),
    limit: int = 1,
) -> list[Task]:
    """See _CANDIDATES. With `lock`, the first candidate nobody else holds is locked (SKIP LOCKED)."""
    params = {
        "rater": rater.pk,
        "project": project.pk,
        "open": Task.Status.OPEN,
        "gold": gold,
        "active": Lease.State.ACTIVE,
        "overlap": project.overlap,
        "now": _db_now(now),
        "limit": limit,
    }
    exclude_sql = ""
    if exclude:
        names = [f"exclude{i}" for i in range(len(exclude))]
        params.update(zip(names, exclude, strict=True))
        exclude_sql = "AND t.id NOT IN (" + ", ".join(f"%({name})s" for name in names) + ")"
    skip_locked = lock and connection.features.has_select_for_update_skip_locked
    sql = _CANDIDATES.format(
        room="" if gold else _ROOM,
        exclude=exclude_sql,
        lock="FOR UPDATE OF t SKIP LOCKED" if skip_locked else "",
    )
    return list(Task.objects.raw(sql, params))


def _room_left(task: Task, *, overlap: int, now: datetime, exclude_lease: int | None = None) -> int:
    """Free places on a locked task: the overlap less its judgments and its live leases.

    The leases are counted by a statement of its own, run once the task is locked, so that it
    sees leases committed while we waited for the lock. The task's judgment_count is current: it
    only changes under that lock, and a row read FOR UPDATE is its latest version.
    """
    with connection.cursor() as cursor:
        cursor.execute(_LIVE_LEASES, [task.pk, Lease.State.ACTIVE, _db_now(now), exclude_lease or 0])
        (live,) = cursor.fetchone()
    return overlap - task.judgment_count - live


def _output_ids(task: Task) -> list[int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT output_id FROM annotation_taskoutput WHERE task_id = %s ORDER BY position", [task.pk]
        )
        return [output_id for (output_id,) in cursor.fetchall()]


def _write_lease(task: Task, *, rater: AbstractBaseUser, project: Project, now: datetime) -> Lease | None:
    """Lease a locked task with room to the rater; None if their old lease on it was just closed."""
    task.project = project
    output_ids = _output_ids(task)
    if task.kind != Task.Kind.SINGLE:
        random.shuffle(output_ids)  # side order randomised per lease, and recorded
    expires_at = now + project.lease_time
    if task.own_lease_id is None:
        return Lease.objects.create(
            task=task, rater=rater, created_at=now, expires_at=expires_at, display_order=output_ids
        )
    # A rater whose earlier lease on this task ran out (never submitted) gets it renewed, unless
    # they submitted or skipped it since the candidate query's snapshot was taken.
    renewed = Lease.objects.filter(pk=task.own_lease_id, state=Lease.State.ACTIVE).update(
        created_at=now, expires_at=expires_at, display_order=output_ids
    )
    if not renewed:
        return None
    lease = Lease.objects.get(pk=task.own_lease_id)
    lease.task = task
    return lease


def lease_acquire(
    *, project: Project | int, rater: AbstractBaseUser, now: datetime | None = None
) -> Lease | None:
    """Hand the rater a task of this project, or None when nothing is left for them.

    A rater holding a live lease gets the same lease back. Gold tasks are mixed in at the
    project's gold rate and do not count against the overlap. `project` is a Project or its id:
    its settings are read afresh in the transaction, with the rater's membership.
    """
    now = now or timezone.now()
    project_id = project if isinstance(project, int) else project.pk
    with transaction.atomic():
        found = list(
            Project.objects.raw(
                _PROJECT_OF_MEMBER.format(lock=_lock("FOR UPDATE OF m")), [rater.pk, project_id, True]
            )
        )
        if not found:
            raise NotAMember("you are not a rater of this project")
        project = found[0]
        held = list(
            Lease.objects.raw(
                _HELD_LEASE, [rater.pk, project.pk, Lease.State.ACTIVE, _db_now(now), Task.Status.OPEN]
            )
        )
        if held:
            held[0].task.project = project
            return held[0]

        if project.gold_rate > 0 and random.random() < project.gold_rate:
            for gold in _candidate_tasks(project=project, rater=rater, now=now, gold=True):
                lease = _write_lease(gold, rater=rater, project=project, now=now)
                if lease is not None:
                    return lease

        passed_over: list[int] = []
        for _ in range(MAX_CANDIDATES):
            found = _candidate_tasks(
                project=project, rater=rater, now=now, gold=False, lock=True, exclude=passed_over
            )
            if not found:
                break
            task = found[0]
            # The candidate query ran on a snapshot taken before we held the lock; a lease
            # committed in between is only visible to a fresh read made under the lock.
            if _room_left(task, overlap=project.overlap, now=now) > 0:
                lease = _write_lease(task, rater=rater, project=project, now=now)
                if lease is not None:
                    return lease
            passed_over.append(task.pk)
        else:
            return None
        # Every candidate we saw was full or locked by someone else. A locked one may still have
        # room once its holder commits: wait for it rather than tell the rater the queue is empty.
        for candidate in _candidate_tasks(
            project=project, rater=rater, now=now, gold=False, exclude=passed_over, limit=MAX_CANDIDATES
        ):
            task = Task.objects.select_for_update().get(pk=candidate.pk)
            task.own_lease_id = candidate.own_lease_id
            if task.status == Task.Status.OPEN and _room_left(task, overlap=project.overlap, now=now) > 0:
                lease = _write_lease(task, rater=rater, project=project, now=now)
                if lease is not None:
                    return lease
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
    answers: dict | None = None  # the answers stored, by question name, when created


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
            Task.objects.raw(_TASK_OF_LEASE.format(lock=_lock("FOR UPDATE OF t")), [lease_id, rater.pk])
        )
        if not found:
            raise LeaseNotFound("no such lease of yours")
        task = found[0]
        (project,) = Project.objects.raw("SELECT * FROM annotation_project WHERE id = %s", [task.project_id])
        (lease,) = Lease.objects.raw(
            f"SELECT * FROM annotation_lease WHERE id = %s {_lock('FOR UPDATE')}", [lease_id]
        )
        output_ids = lease.display_order or _output_ids(task)
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
            and _room_left(task, overlap=project.overlap, now=now, exclude_lease=lease.pk) <= 0
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


# ---------------------------------------------------------------- new outputs and tasks


class EnqueueError(QueueError):
    """New outputs or tasks that cannot be written as asked; nothing was written."""

    status = 400
    code = "invalid"


# How many outputs a task of each kind shows (ranking: from 2 to 10).
TASK_SIZES = {Task.Kind.SINGLE: (1, 1), Task.Kind.PAIRWISE: (2, 2), Task.Kind.RANKING: (2, 10)}


@dataclass(frozen=True)
class NewOutput:
    """An output to write, with its provenance. `key` makes writing it idempotent (see outputs_enqueue)."""

    text: str
    key: str
    model_name: str = ""
    adapter: str = ""
    source: str = Output.Source.MODEL
    round_number: int | None = None
    generation: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewTask:
    """A task over outputs of one prompt; the outputs are written first if they are not there yet."""

    prompt_id: int
    outputs: tuple[NewOutput, ...]
    round_number: int | None = None
    priority: int = 0


@dataclass
class EnqueueResult:
    outputs_created: int = 0
    tasks_created: int = 0
    tasks: list[Task] = field(default_factory=list)  # every task asked for, created or found


def outputs_enqueue(
    *, project: Project, items: Sequence[NewTask], task_kind: str, seed: int = 0
) -> EnqueueResult:
    """Write outputs and the rating tasks over them, in one transaction; safe to call again.

    Every output carries a `key` (stored in its `generation` as `"key"`), unique in the project:
    an output whose key is already there is not written again, and a task over exactly the same
    outputs and of the same kind is not made twice, so a worker that crashed halfway can simply
    run the same call again. Pairwise and ranking tasks get their outputs in an order shuffled by
    a RNG seeded from `seed` and the prompt (the rater's page shuffles them again per lease).
    """
    if task_kind not in TASK_SIZES:
        raise EnqueueError(f"task kind must be one of {', '.join(TASK_SIZES)} (got {task_kind!r})")
    if not questions_for(project.questions, task_kind):
        raise EnqueueError(f"the project asks no questions on {task_kind} tasks")
    low, high = TASK_SIZES[task_kind]
    prompt_ids = {item.prompt_id for item in items}
    for item in items:
        if not low <= len(item.outputs) <= high:
            raise EnqueueError(f"a {task_kind} task shows {low} to {high} outputs (got {len(item.outputs)})")
        if len({output.key for output in item.outputs}) != len(item.outputs):
            raise EnqueueError("the outputs of a task need distinct keys")
    result = EnqueueResult()
    with transaction.atomic():
        # Two calls for one project queue up here, so a key is looked up and written by one at a time.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        found = set(Prompt.objects.filter(project=project, pk__in=prompt_ids).values_list("pk", flat=True))
        if found != prompt_ids:
            raise EnqueueError(f"prompt {min(prompt_ids - found)} is not in project {project.name!r}")
        keys = sorted({output.key for item in items for output in item.outputs})
        existing: dict[str, int] = {}
        for start in range(0, len(keys), 500):
            for pk, generation in Output.objects.filter(
                prompt__project=project, generation__key__in=keys[start : start + 500]
            ).values_list("pk", "generation"):
                existing[generation["key"]] = pk
        for item in items:
            output_ids = []
            for new in item.outputs:
                if new.key not in existing:
                    existing[new.key] = Output.objects.create(
                        prompt_id=item.prompt_id,
                        text=new.text,
                        source=new.source,
                        model_name=new.model_name,
                        adapter=new.adapter,
                        round_number=new.round_number,
                        generation={**new.generation, "key": new.key},
                    ).pk
                    result.outputs_created += 1
                output_ids.append(existing[new.key])
            task = _task_over(project, task_kind, output_ids)
            if task is None:
                if task_kind != Task.Kind.SINGLE:
                    random.Random(f"{seed}:{item.prompt_id}").shuffle(output_ids)
                task = Task.objects.create(
                    project=project,
                    prompt_id=item.prompt_id,
                    kind=task_kind,
                    round_number=item.round_number,
                    priority=item.priority,
                )
                TaskOutput.objects.bulk_create(
                    TaskOutput(task=task, output_id=pk, position=i) for i, pk in enumerate(output_ids)
                )
                result.tasks_created += 1
            result.tasks.append(task)
    return result


def _task_over(project: Project, kind: str, output_ids: list[int]) -> Task | None:
    """The task of this kind over exactly these outputs (in any order), if there is one."""
    candidates = Task.objects.filter(project=project, kind=kind, task_outputs__output_id=output_ids[0])
    for task in candidates:
        if sorted(task.task_outputs.values_list("output_id", flat=True)) == sorted(output_ids):
            return task
    return None


# ---------------------------------------------------------------- projects from templates

# name → (label, a function returning the project fields the template sets: questions, guidelines)
PROJECT_TEMPLATES = {templates_qa2.NAME: (templates_qa2.LABEL, templates_qa2.template_fields)}


class ProjectTemplateError(QueueError):
    """A project cannot be created from a template as asked; nothing was written."""

    status = 400
    code = "invalid"


def project_create_from_template(
    *, name: str, template: str, overlap: int = 2, description: str = ""
) -> Project:
    """A new project asking the template's questions under its guidelines, validated like a form's."""
    if template not in PROJECT_TEMPLATES:
        raise ProjectTemplateError(
            f"template must be one of {', '.join(PROJECT_TEMPLATES)} (got {template!r})"
        )
    project = Project(name=name, description=description, overlap=overlap, **PROJECT_TEMPLATES[template][1]())
    try:
        project.full_clean()
    except ValidationError as error:
        raise ProjectTemplateError(
            "; ".join(f"{field}: {' '.join(messages)}" for field, messages in error.message_dict.items())
        ) from error
    project.save()
    return project
