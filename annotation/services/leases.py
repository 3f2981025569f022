"""The rating queue: handing tasks out to raters as leases, and giving them back.

Locking rules (PostgreSQL). Locks are always taken in the order membership → task → lease, so
the queue cannot deadlock with itself:
- `lease_acquire` locks the rater's membership row (one rater's parallel requests queue up
  behind each other), then a task row with SKIP LOCKED, then writes the lease. The rater's live
  leases are counted under the membership lock, so however many requests they send at once they
  never hold more than the project's `max_pending_per_rater`. When every candidate it could lock
  was full or locked, it waits for a locked one while still holding those it passed over: that
  wait gives up after WAIT_FOR_LOCKED_MS, so two such requests cannot deadlock.
- `judgment_submit` locks the task row, then the lease row.
- `lease_skip` locks only the lease row.
- `judgment_submit` then records a `judgment.submitted` webhook event (annotation.webhooks):
  nothing when the project has no active webhook (probed in the same statement that locks the
  lease); otherwise delivery rows, whose foreign key takes a key-share lock on webhook rows. Nothing that locks webhook rows locks tasks or leases,
  so the order above still holds. The deliveries are sent only after the commit.
Every change to a task's judgment count, and every lease written for it, happens while its row
is locked, so a fresh count read under that lock is exact.

SQLite has no row locks: its connections open transactions with BEGIN IMMEDIATE (see
config.env), which takes the database's write lock up front and serialises these functions.
The unique constraints on (task, rater) for leases and judgments hold on both.

Each rater has a place in the queue (Membership.queue_*): every open, non-gold task ordered
before it is one they submitted or skipped. The candidate scan starts there, so the tasks a
rater has already judged, which may stay open for a long while when others have not caught up,
are stepped over once, not on every request. The place is moved on under the membership lock,
and only past tasks the rater finished (a task passed over because it was full or locked may
have room again later). Tasks never go back to open and a finished lease stays finished, so only
a new task can come before a place: task writers (services.tasks.task_create, Task.save) bump
the project's tasks_version in the transaction that writes it, taking the project row's lock,
which the queue never takes. The version is read with the membership, before the statement that
moves the place on takes its snapshot: a place recorded under a version older than the
project's is worked out again from the front of the queue.

The queue's SQL and its row-lock helpers (row_lock, room_left, task_output_ids) are shared with
services.judgments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from contextlib import contextmanager
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from annotation.errors import LeaseNotFound, NotAMember, QueueError
from annotation.models import Lease, Project, Task
from annotation.rows import columns, fetch_rows, json_param, model_from_row

# How many locked-but-full candidates lease_acquire steps over before giving up on a request.
MAX_CANDIDATES = 20
# How long lease_acquire waits for a candidate another request holds locked, once every candidate
# it could lock was full (PostgreSQL; a holder commits in milliseconds).
WAIT_FOR_LOCKED_MS = 200
LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE for a lock wait past lock_timeout

# The queue's reads are written in SQL: they run on every request for a task or a submission,
# and building them with the ORM cost more CPU than everything else in those requests (see
# bench/queue.py). They run on PostgreSQL and SQLite alike; `{lock}` becomes a row-lock clause
# on PostgreSQL and nothing on SQLite, whose transactions are serialised instead.


# The rater's active membership, with its project, locking only the membership row.
_PROJECT_OF_MEMBER = f"""
    SELECT {columns(Project, "p")}, m.id, m.queue_version, m.queue_priority, m.queue_task_id
    FROM annotation_project p JOIN annotation_membership m ON m.project_id = p.id
    WHERE m.user_id = %s AND m.project_id = %s AND m.is_active = %s
    {{lock}}"""

# The live leases the rater already holds in the project, oldest first, on tasks still open (a
# curator may have closed one since: it no longer counts, and the rater is handed another task).
_HELD_LEASES = f"""
    SELECT {columns(Lease, "l")} FROM annotation_lease l JOIN annotation_task t ON t.id = l.task_id
    WHERE l.rater_id = %s AND t.project_id = %s AND l.state = %s AND l.expires_at > %s
    AND t.status = %s
    ORDER BY l.id LIMIT %s"""

# Open tasks, in queue order, that the rater has not submitted or skipped and that, gold tasks
# aside, still have room: judgment_count plus live leases below the overlap. `own_lease_id` is
# the rater's lease on the task, which can only be an expired active one (the tasks of their
# live leases are excluded by the caller). The rater's lease is read by a scalar subquery, a
# probe of the (task, rater) index per task visited: written as NOT EXISTS, PostgreSQL plans an
# anti-join that may read all of the rater's leases for every task it visits.
_CANDIDATES = f"""
    SELECT {columns(Task, "t")},
        (SELECT l.id FROM annotation_lease l WHERE l.task_id = t.id AND l.rater_id = %(rater)s)
        AS own_lease_id
        {{outputs}}
    FROM annotation_task t
    WHERE t.project_id = %(project)s AND t.status = %(open)s AND t.is_gold = %(gold)s
    AND COALESCE(
        (SELECT l.state FROM annotation_lease l WHERE l.task_id = t.id AND l.rater_id = %(rater)s),
        %(active)s
    ) = %(active)s
    {{start}}
    {{room}}
    {{exclude}}
    ORDER BY t.priority, t.id LIMIT %(limit)s
    {{lock}}"""
# Where the scan starts: the rater's place in the queue.
_START = "AND (t.priority, t.id) >= (%(start_priority)s, %(start_task)s)"

# The rater's place: the first open, non-gold task at or after their recorded place that they
# have not submitted or skipped. It steps over each task they finished once, then moves on.
_FIRST_UNFINISHED = """
    SELECT t.priority, t.id FROM annotation_task t
    WHERE t.project_id = %(project)s AND t.status = %(open)s AND t.is_gold = %(gold)s
    {start}
    AND COALESCE(
        (SELECT l.state FROM annotation_lease l WHERE l.task_id = t.id AND l.rater_id = %(rater)s),
        %(active)s
    ) = %(active)s
    ORDER BY t.priority, t.id LIMIT 1"""
# Past the last open task: where the place goes when the rater has finished every open task.
_LAST_OPEN = """
    SELECT t.priority, t.id FROM annotation_task t
    WHERE t.project_id = %(project)s AND t.status = %(open)s AND t.is_gold = %(gold)s
    ORDER BY t.priority DESC, t.id DESC LIMIT 1"""
_SET_PLACE = """
    UPDATE annotation_membership SET queue_version = %s, queue_priority = %s, queue_task_id = %s
    WHERE id = %s"""
# On PostgreSQL the place is found and recorded in one statement: it moves on after nearly every
# judgment (the task just finished is stepped over), so this runs once per next-task request.
_FIRST_UNFINISHED_RECORDED = """
    WITH f AS ({first}),
    u AS (
        UPDATE annotation_membership m
        SET queue_version = %(version)s, queue_priority = f.priority, queue_task_id = f.id
        FROM f WHERE m.id = %(membership)s
        AND (m.queue_version, m.queue_priority, m.queue_task_id) IS DISTINCT FROM (%(version)s, f.priority, f.id)
    )
    SELECT priority, id FROM f"""
_ROOM = """AND t.judgment_count < %(overlap)s AND t.judgment_count + (
        SELECT COUNT(*) FROM annotation_lease l
        WHERE l.task_id = t.id AND l.state = %(active)s AND l.expires_at > %(now)s
    ) < %(overlap)s"""

# A locked task's live leases, read afresh (see room_left), with its content: the first row is
# its prompt's, carrying the count; then one row per output, in order. The content is what the
# answer shows the rater (selectors.lease_task_content): read here, it costs no statement of its own.
_LIVE_LEASES_AND_CONTENT = """
    SELECT 0 AS part, (
        SELECT COUNT(*) FROM annotation_lease
        WHERE task_id = %s AND state = %s AND expires_at > %s AND id <> %s
    ), external_id, text, context, 0 AS position
    FROM annotation_prompt WHERE id = %s
    UNION ALL
    SELECT 1, o.id, NULL, o.text, NULL, x.position
    FROM annotation_output o JOIN annotation_taskoutput x ON x.output_id = o.id WHERE x.task_id = %s
    ORDER BY 1, 6"""

# The task of a rater's lease, locking only the task row.
TASK_OF_LEASE = f"""
    SELECT {columns(Task, "t")} FROM annotation_task t JOIN annotation_lease l ON l.task_id = t.id
    WHERE l.id = %s AND l.rater_id = %s
    {{lock}}"""

_INSERT_LEASE = """
    INSERT INTO annotation_lease (task_id, rater_id, state, created_at, expires_at, display_order)
    VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"""

# PostgreSQL: what a request for a task reads and writes once the membership is locked, in two
# statements rather than five (each round trip is a wait for a core on a busy machine). The first
# reads the rater's live leases, finds and records their place (as _FIRST_UNFINISHED_RECORDED),
# and locks the first candidate from there (as _CANDIDATES, with its output ids). Its snapshot is
# taken after the membership lock was granted, as the separate statements' were.
_HELD_PLACE_AND_CANDIDATE = """
    WITH held AS (
        SELECT l.id, l.task_id FROM annotation_lease l JOIN annotation_task t ON t.id = l.task_id
        WHERE l.rater_id = %(rater)s AND t.project_id = %(project)s AND l.state = %(active)s
        AND l.expires_at > %(now)s AND t.status = %(open)s
        ORDER BY l.id LIMIT %(held_limit)s
    ),
    f AS ({first}),
    u AS (
        UPDATE annotation_membership m
        SET queue_version = %(version)s, queue_priority = f.priority, queue_task_id = f.id
        FROM f WHERE m.id = %(membership)s
        AND (m.queue_version, m.queue_priority, m.queue_task_id) IS DISTINCT FROM (%(version)s, f.priority, f.id)
    ),
    c AS ({candidate})
    SELECT (SELECT array_agg(id ORDER BY id) FROM held), (SELECT array_agg(task_id ORDER BY id) FROM held),
        f.priority, f.id, c.*
    FROM (SELECT 1) AS one LEFT JOIN f ON TRUE LEFT JOIN c ON TRUE"""
_OUTPUT_IDS = """, (SELECT array_agg(x.output_id ORDER BY x.position) FROM annotation_taskoutput x
        WHERE x.task_id = t.id) AS output_ids"""
_FROM_PLACE = "AND (t.priority, t.id) >= (SELECT priority, id FROM f)"
_NOT_HELD = "AND t.id NOT IN (SELECT task_id FROM held)"

# The second counts the locked task's live leases afresh (see room_left), writes the new lease if
# there is room, and reads the task's content, as _LIVE_LEASES_AND_CONTENT does: its first row
# carries the new lease's id (NULL: the task was full). Its snapshot is taken after the task's
# lock was granted, so it sees every lease written for the task.
_LEASE_IF_ROOM_AND_CONTENT = """
    WITH live AS (
        SELECT COUNT(*) AS n FROM annotation_lease
        WHERE task_id = %(task)s AND state = %(active)s AND expires_at > %(now)s
    ),
    written AS (
        INSERT INTO annotation_lease (task_id, rater_id, state, created_at, expires_at, display_order)
        SELECT %(task)s, %(rater)s, %(active)s, %(now)s, %(expires)s, %(order)s
        WHERE %(room)s - (SELECT n FROM live) > 0
        RETURNING id
    )
    SELECT 0 AS part, (SELECT id FROM written), external_id, text, context, 0 AS position
    FROM annotation_prompt WHERE id = %(prompt)s
    UNION ALL
    SELECT 1, o.id, NULL, o.text, NULL, x.position
    FROM annotation_output o JOIN annotation_taskoutput x ON x.output_id = o.id WHERE x.task_id = %(task)s
    ORDER BY 1, 6"""


def row_lock(clause: str) -> str:
    return clause if connection.features.has_select_for_update else ""


def db_now(now: datetime):
    return connection.ops.adapt_datetimefield_value(now)


def _held_lease(lease_id: int, project: Project) -> Lease:
    """A live lease the rater holds, with its task (the project's `max_pending_per_rater` reached)."""
    (row,) = fetch_rows(
        f"SELECT {columns(Lease, 'l')}, {columns(Task, 't')} FROM annotation_lease l"
        " JOIN annotation_task t ON t.id = l.task_id WHERE l.id = %s",
        [lease_id],
    )
    lease = model_from_row(Lease, row)
    lease.task = model_from_row(Task, row, len(Lease._meta.concrete_fields))
    lease.task.project = project
    return lease


def _candidate_tasks(
    *,
    project: Project,
    rater: AbstractBaseUser,
    now: datetime,
    gold: bool,
    lock: bool = False,
    exclude: Sequence[int] = (),
    limit: int = 1,
    start: tuple[int, int] | None = None,
) -> list[Task]:
    """See _CANDIDATES. With `lock`, the first candidate nobody else holds is locked (SKIP LOCKED).

    `start`: (priority, task id) where the scan starts, the rater's place (non-gold tasks only).
    """
    params = {
        "rater": rater.pk,
        "project": project.pk,
        "open": Task.Status.OPEN,
        "gold": gold,
        "active": Lease.State.ACTIVE,
        "overlap": project.overlap,
        "now": db_now(now),
        "limit": limit,
    }
    exclude_sql = ""
    if exclude:
        names = [f"exclude{i}" for i in range(len(exclude))]
        params.update(zip(names, exclude, strict=True))
        exclude_sql = "AND t.id NOT IN (" + ", ".join(f"%({name})s" for name in names) + ")"
    if start is not None:
        params.update(start_priority=start[0], start_task=start[1])
    skip_locked = lock and connection.features.has_select_for_update_skip_locked
    sql = _CANDIDATES.format(
        outputs="",
        start="" if start is None else _START,
        room="" if gold else _ROOM,
        exclude=exclude_sql,
        lock="FOR UPDATE OF t SKIP LOCKED" if skip_locked else "",
    )
    width = len(Task._meta.concrete_fields)
    tasks = []
    for row in fetch_rows(sql, params, prepare=False):  # a scan: planned from where it starts
        task = model_from_row(Task, row)
        task.own_lease_id = row[width]
        tasks.append(task)
    return tasks


def _recorded_place(project: Project) -> tuple[int, int] | None:
    """The place recorded in the rater's membership (read with the project, _PROJECT_OF_MEMBER),
    unless it was recorded under an older tasks_version (then it is worked out from the front)."""
    if project.member_queue_version == project.tasks_version and project.member_queue_task_id is not None:
        return (project.member_queue_priority, project.member_queue_task_id)
    return None


def _queue_place(project: Project, rater: AbstractBaseUser) -> tuple[int, int] | None:
    """The rater's place in the queue, moved on past the tasks they finished; the membership is locked.

    `project` is read with its membership's place (_PROJECT_OF_MEMBER). None: no open task.
    """
    recorded = _recorded_place(project)
    params = {
        "project": project.pk,
        "open": Task.Status.OPEN,
        "gold": False,
        "rater": rater.pk,
        "active": Lease.State.ACTIVE,
    }
    if recorded is not None:
        params.update(start_priority=recorded[0], start_task=recorded[1])
    first = _FIRST_UNFINISHED.format(start="" if recorded is None else _START)
    recorded_by_query = connection.vendor == "postgresql"
    if recorded_by_query:
        params.update(version=project.tasks_version, membership=project.membership_id)
        first = _FIRST_UNFINISHED_RECORDED.format(first=first)
    with connection.cursor() as cursor:
        cursor.execute(first, params)
        row = cursor.fetchone()
        recorded_by_query = recorded_by_query and row is not None
        if row is None:  # every open task from the place on is finished: the place goes past the last
            cursor.execute(_LAST_OPEN, params)
            last = cursor.fetchone()
            row = None if last is None else (last[0], last[1] + 1)
            if row is not None and recorded is not None:
                row = max(row, recorded)
        place = None if row is None else (row[0], row[1])
        moved = place != recorded or project.member_queue_version != project.tasks_version
        if place is not None and moved and not recorded_by_query:
            cursor.execute(_SET_PLACE, [project.tasks_version, place[0], place[1], project.membership_id])
    return place


def room_left(task: Task, *, overlap: int, now: datetime, exclude_lease: int | None = None) -> int:
    """Free places on a locked task: the overlap less its judgments and its live leases.

    The leases are counted by a statement of its own, run once the task is locked, so that it
    sees leases committed while we waited for the lock. The task's judgment_count is current: it
    only changes under that lock, and a row read FOR UPDATE is its latest version. The same
    statement reads the task's output ids, kept as `task.output_ids` for `_write_lease`, and its
    content, kept as `task.content` for selectors.lease_task_content.
    """
    (_, live, *prompt, _), *outputs = fetch_rows(
        _LIVE_LEASES_AND_CONTENT,
        [task.pk, Lease.State.ACTIVE, db_now(now), exclude_lease or 0, task.prompt_id, task.pk],
    )
    task.output_ids = [output_id for _, output_id, _, _, _, _ in outputs]
    task.content = (*prompt, {output_id: text for _, output_id, _, text, _, _ in outputs})
    return overlap - task.judgment_count - live


def task_output_ids(task: Task) -> list[int]:
    found = getattr(task, "output_ids", None)
    if found is not None:
        return list(found)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT output_id FROM annotation_taskoutput WHERE task_id = %s ORDER BY position", [task.pk]
        )
        return [output_id for (output_id,) in cursor.fetchall()]


def _display_order(task: Task) -> list[int]:
    output_ids = task_output_ids(task)
    if task.kind != Task.Kind.SINGLE:
        random.shuffle(output_ids)  # side order randomised per lease, and recorded
    return output_ids


def _written_lease(task: Task, *, lease_id: int, rater, now: datetime, expires_at, output_ids) -> Lease:
    """The Lease just inserted (in SQL, as the reads are: Lease.objects.create cost as much as they)."""
    lease = Lease(
        id=lease_id,
        task_id=task.pk,
        rater_id=rater.pk,
        state=Lease.State.ACTIVE,
        created_at=now,
        expires_at=expires_at,
        display_order=output_ids,
    )
    lease._state.adding = False
    lease._state.db = connection.alias
    lease.task = task
    return lease


def _write_lease(task: Task, *, rater: AbstractBaseUser, project: Project, now: datetime) -> Lease | None:
    """Lease a locked task with room to the rater; None if their old lease on it was just closed."""
    task.project = project
    output_ids = _display_order(task)
    expires_at = now + project.lease_time
    if task.own_lease_id is None:
        display_order = json_param(Lease, "display_order", output_ids)
        ((lease_id,),) = fetch_rows(
            _INSERT_LEASE,
            [task.pk, rater.pk, Lease.State.ACTIVE, db_now(now), db_now(expires_at), display_order],
        )
        return _written_lease(
            task, lease_id=lease_id, rater=rater, now=now, expires_at=expires_at, output_ids=output_ids
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


def held_place_and_candidate_query(
    project: Project, rater_id: int, now: datetime, held_limit: int
) -> tuple[str, dict]:
    """_HELD_PLACE_AND_CANDIDATE and its parameters, for a project read with its membership's place
    (as lease_acquire reads it; bench/queue_scale.py prints its plan)."""
    recorded = _recorded_place(project)
    params = {
        "rater": rater_id,
        "project": project.pk,
        "open": Task.Status.OPEN,
        "gold": False,
        "active": Lease.State.ACTIVE,
        "overlap": project.overlap,
        "now": db_now(now),
        "limit": 1,
        "held_limit": held_limit,
        "version": project.tasks_version,
        "membership": project.membership_id,
    }
    if recorded is not None:
        params.update(start_priority=recorded[0], start_task=recorded[1])
    candidate = _CANDIDATES.format(
        outputs=_OUTPUT_IDS,
        start=_FROM_PLACE,
        room=_ROOM,
        exclude=_NOT_HELD,
        lock="FOR UPDATE OF t SKIP LOCKED",
    )
    first = _FIRST_UNFINISHED.format(start="" if recorded is None else _START)
    return _HELD_PLACE_AND_CANDIDATE.format(first=first, candidate=candidate), params


def _held_place_and_candidate(project: Project, rater: AbstractBaseUser, now: datetime, held_limit: int):
    """PostgreSQL, under the membership lock: the rater's live leases (ids, and their tasks' ids),
    their place in the queue (found and recorded, as _queue_place; None: no unfinished open task
    from the recorded place on), and the first candidate from there, locked (None: none free)."""
    ((held, held_tasks, priority, place_id, *found),) = fetch_rows(
        *held_place_and_candidate_query(project, rater.pk, now, held_limit),
        prepare=False,  # scans
    )
    place = None if place_id is None else (priority, place_id)
    task = None
    if found[0] is not None:
        width = len(Task._meta.concrete_fields)
        task = model_from_row(Task, found)
        task.own_lease_id, output_ids = found[width], found[width + 1]
        task.output_ids = list(output_ids or [])
    return held or [], held_tasks or [], place, task


def _lease_if_room(task: Task, *, rater: AbstractBaseUser, project: Project, now: datetime) -> Lease | None:
    """PostgreSQL: lease a locked task the rater never leased, if it has room (one statement); the
    task's content is kept as `task.content`, as room_left keeps it. None: the task is full."""
    task.project = project
    output_ids = _display_order(task)
    expires_at = now + project.lease_time
    (_, lease_id, *prompt, _), *outputs = fetch_rows(
        _LEASE_IF_ROOM_AND_CONTENT,
        {
            "task": task.pk,
            "rater": rater.pk,
            "active": Lease.State.ACTIVE,
            "now": db_now(now),
            "expires": db_now(expires_at),
            "order": json_param(Lease, "display_order", output_ids),
            "room": project.overlap - task.judgment_count,
            "prompt": task.prompt_id,
        },
    )
    if lease_id is None:
        return None
    task.content = (*prompt, {output_id: text for _, output_id, _, text, _, _ in outputs})
    return _written_lease(
        task, lease_id=lease_id, rater=rater, now=now, expires_at=expires_at, output_ids=output_ids
    )


def lease_acquire(
    *, project: Project | int, rater: AbstractBaseUser, now: datetime | None = None
) -> Lease | None:
    """Hand the rater a task of this project, or None when nothing is left for them.

    A rater holding the project's `max_pending_per_rater` live leases (one by default) gets the
    oldest of them back; below it, a task they do not hold yet. Gold tasks are mixed in at the
    project's gold rate and do not count against the overlap. `project` is a Project or its id:
    its settings are read afresh in the transaction, with the rater's membership.
    """
    now = now or timezone.now()
    project_id = project if isinstance(project, int) else project.pk
    with transaction.atomic():
        found = fetch_rows(
            _PROJECT_OF_MEMBER.format(lock=row_lock("FOR UPDATE OF m")), [rater.pk, project_id, True]
        )
        if not found:
            raise NotAMember("you are not a rater of this project")
        project = model_from_row(Project, found[0])
        (
            project.membership_id,
            project.member_queue_version,
            project.member_queue_priority,
            project.member_queue_task_id,
        ) = found[0][len(Project._meta.concrete_fields) :]
        # Read under the membership lock: a parallel request of the same rater has committed.
        limit = project.max_pending_per_rater
        gold_first = project.gold_rate > 0 and random.random() < project.gold_rate
        passed_over: list[int] = []
        if connection.vendor == "postgresql" and not gold_first:
            held, holding, start, task = _held_place_and_candidate(project, rater, now, limit)
            if len(held) >= limit:
                return _held_lease(held[0], project)
            if start is None:  # every open task from the place on is finished: recorded as before
                start = _queue_place(project, rater)
            elif task is not None:
                if task.own_lease_id is None:
                    lease = _lease_if_room(task, rater=rater, project=project, now=now)
                elif room_left(task, overlap=project.overlap, now=now) > 0:
                    lease = _write_lease(task, rater=rater, project=project, now=now)
                else:
                    lease = None
                if lease is not None:
                    return lease
                passed_over.append(task.pk)
        else:
            held = [
                model_from_row(Lease, row)
                for row in fetch_rows(
                    _HELD_LEASES,
                    [rater.pk, project.pk, Lease.State.ACTIVE, db_now(now), Task.Status.OPEN, limit],
                )
            ]
            if len(held) >= limit:
                held[0].task.project = project
                return held[0]
            holding = [lease.task_id for lease in held]
            start = _queue_place(project, rater)

        if gold_first:
            for gold in _candidate_tasks(project=project, rater=rater, now=now, gold=True, exclude=holding):
                lease = _write_lease(gold, rater=rater, project=project, now=now)
                if lease is not None:
                    return lease

        passed_over += holding
        for _ in range(MAX_CANDIDATES - len(passed_over) + len(holding)):
            found = _candidate_tasks(
                project=project, rater=rater, now=now, gold=False, lock=True, exclude=passed_over, start=start
            )
            if not found:
                break
            task = found[0]
            # The candidate query ran on a snapshot taken before we held the lock; a lease
            # committed in between is only visible to a fresh read made under the lock.
            if room_left(task, overlap=project.overlap, now=now) > 0:
                lease = _write_lease(task, rater=rater, project=project, now=now)
                if lease is not None:
                    return lease
            passed_over.append(task.pk)
        else:
            return None
        # Every candidate we saw was full or locked by someone else. A locked one may still have
        # room once its holder commits: wait for it rather than tell the rater the queue is empty.
        # The tasks passed over stay locked until the commit, so two requests in here may each wait
        # for a task the other holds: each wait is bounded (WAIT_FOR_LOCKED_MS, in a savepoint), so
        # such a pair gives up its candidate instead of deadlocking (and failing a rater's request).
        with _bounded_lock_waits():
            for candidate in _candidate_tasks(
                project=project,
                rater=rater,
                now=now,
                gold=False,
                exclude=passed_over,
                limit=MAX_CANDIDATES,
                start=start,
            ):
                task = _lock_task_waiting(candidate.pk)
                if task is None:
                    continue
                task.own_lease_id = candidate.own_lease_id
                if task.status == Task.Status.OPEN and room_left(task, overlap=project.overlap, now=now) > 0:
                    lease = _write_lease(task, rater=rater, project=project, now=now)
                    if lease is not None:
                        return lease
        return None


@contextmanager
def _bounded_lock_waits():
    """On PostgreSQL, row-lock waits in this block give up after WAIT_FOR_LOCKED_MS."""
    if connection.vendor != "postgresql":
        yield
        return
    with connection.cursor() as cursor:
        cursor.execute(f"SET LOCAL lock_timeout = '{int(WAIT_FOR_LOCKED_MS)}ms'")
    yield  # on an error, rolling back (the transaction or its savepoint) undoes the setting too
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL lock_timeout TO DEFAULT")


def _lock_task_waiting(task_id: int) -> Task | None:
    """The task, locked once its holder commits; None if the lock was not granted in time."""
    try:
        with transaction.atomic():  # a savepoint: a wait given up leaves the transaction usable
            return Task.objects.select_for_update().get(pk=task_id)
    except OperationalError as error:
        if getattr(error.__cause__, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
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
