"""Bulk seeding for the benches: a project of any size, written by SQL on PostgreSQL.

    from bench.seed import seed_project
    seeded = seed_project(name="scale", tasks=1_000_000, raters=5_000, active=500, history=2_000)

Rows are written by `INSERT ... SELECT generate_series(...)`, a statement per table, so a
million tasks take a minute or two rather than the ORM's hours. Django must be set up, on a
PostgreSQL database. What is written:

- the project (the questions of bench.queue.QUESTIONS unless given, `overlap`);
- `prompts` prompts (shared by the tasks round-robin: task i shows prompt i mod prompts, which
  the schema allows) with one output each, two for pairwise tasks; the tasks, in queue order
  (priority 0, by id), and their task outputs;
- `raters` raters (auth users with an unusable password, an API token and a rater membership)
  and `curators` curators (a curator membership and a token);
- history: each of the first `active` raters has `history` past judgments, each with its lease
  (state submitted) and, with `answers`, its answer rows (single tasks only). The tasks'
  judgment counts and statuses agree with the judgments. `history_kind`:
  - "queue": as the queue hands tasks out: judgment j goes to the j // overlap-th task in queue
    order, by active rater j mod active, so the judged tasks are complete and the rest open;
  - "open": the worst case for a scan in queue order: every active rater has judged the same
    first `history` tasks and they are still open (others have not caught up). For them to
    stay open with `active` judgments each, the project's overlap is `active + overlap`
    (above the limit of 50 that forms enforce; the database allows it).

Finally the tables are vacuumed and analysed, as autovacuum would have done on a live database.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

HISTORY_KINDS = ("queue", "open")
OUTPUTS_PER_TASK = {"single": 1, "pairwise": 2}
TABLES = (
    "auth_user",
    "authtoken_token",
    "annotation_project",
    "annotation_membership",
    "annotation_prompt",
    "annotation_output",
    "annotation_task",
    "annotation_taskoutput",
    "annotation_lease",
    "annotation_judgment",
    "annotation_answer",
)


@dataclass
class Seeded:
    project_id: int
    overlap: int
    rater_ids: list[int]  # in order: the active raters first
    rater_tokens: list[str]
    curator_ids: list[int] = field(default_factory=list)
    curator_tokens: list[str] = field(default_factory=list)
    active: int = 0
    seconds: float = 0.0

    @property
    def active_tokens(self) -> list[str]:
        return self.rater_tokens[: self.active]


def seed_project(
    *,
    name: str,
    tasks: int,
    raters: int,
    active: int = 0,
    history: int = 0,
    history_kind: str = "queue",
    overlap: int = 3,
    task_kind: str = "single",
    prompts: int | None = None,
    curators: int = 0,
    answers: bool = False,
    questions: list | None = None,
    lease_seconds: int = 600,
    vacuum: bool = True,
) -> Seeded:
    from django.db import connection

    from annotation.models import Project
    from annotation.questions import validate_questions_config
    from bench.queue import FEEDBACK, POST, QUESTIONS, SUMMARY

    if connection.vendor != "postgresql":
        raise RuntimeError("bench.seed writes with PostgreSQL's generate_series")
    if history_kind not in HISTORY_KINDS:
        raise ValueError(f"history_kind: one of {HISTORY_KINDS}")
    if task_kind not in OUTPUTS_PER_TASK:
        raise ValueError(f"task_kind: one of {tuple(OUTPUTS_PER_TASK)}")
    active = min(active, raters) if history else 0
    if history_kind == "queue" and active and (overlap > active or active * history > tasks * overlap):
        raise ValueError("queue history needs overlap <= active and active * history <= tasks * overlap")
    if history_kind == "open" and history > tasks:
        raise ValueError("open history needs history <= tasks")
    started = time.monotonic()
    prompts = min(tasks, prompts or 10_000) or 1
    stored_overlap = overlap + active if history_kind == "open" and active else overlap
    per_task = OUTPUTS_PER_TASK[task_kind]
    project = Project.objects.create(
        name=name,
        questions=validate_questions_config(questions or QUESTIONS),
        overlap=overlap,
        lease_seconds=lease_seconds,
    )
    Project.objects.filter(pk=project.pk).update(overlap=stored_overlap)  # past the form's limit
    pid = project.pk
    prefix = f"s{pid}"
    with connection.cursor() as cursor:

        def run(sql: str, params=None) -> None:
            cursor.execute(sql, params)

        def analyse(table: str) -> None:  # the next statements are planned on its fresh statistics
            cursor.execute(f"ANALYZE {table}")

        run(
            """INSERT INTO annotation_prompt (project_id, external_id, text, context, data, split, created_at)
            SELECT %s, 'p' || i, 'Summarise post ' || i || '.', %s, '{}', 'train', now()
            FROM generate_series(0, %s - 1) i ORDER BY i""",
            [pid, POST, prompts],
        )
        analyse("annotation_prompt")
        run(
            """INSERT INTO annotation_output
                (prompt_id, text, source, model_name, adapter, generation, created_at)
            SELECT p.id, %s, 'model', 'bench-' || k, '', '{}', now()
            FROM annotation_prompt p, generate_series(0, %s - 1) k WHERE p.project_id = %s
            ORDER BY p.id, k""",
            [SUMMARY, per_task, pid],
        )
        analyse("annotation_output")
        run(
            """INSERT INTO annotation_task
                (project_id, prompt_id, kind, status, judgment_count, is_gold, priority, created_at)
            SELECT %s, pr.id, %s, 'open', 0, false, 0, now()
            FROM generate_series(0, %s - 1) i
            JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n
                  FROM annotation_prompt WHERE project_id = %s) pr ON pr.n = i %% %s
            ORDER BY i""",
            [pid, task_kind, tasks, pid, prompts],
        )
        analyse("annotation_task")
        run(
            """INSERT INTO annotation_taskoutput (task_id, output_id, position)
            SELECT t.id, o.id, o.position FROM annotation_task t
            JOIN (SELECT o.id, o.prompt_id, row_number() OVER (PARTITION BY o.prompt_id ORDER BY o.id) - 1
                      AS position
                  FROM annotation_output o JOIN annotation_prompt p ON p.id = o.prompt_id
                  WHERE p.project_id = %s) o ON o.prompt_id = t.prompt_id
            WHERE t.project_id = %s ORDER BY t.id, o.position""",
            [pid, pid],
        )
        analyse("annotation_taskoutput")

        def people(role: str, count: int) -> tuple[list[int], list[str]]:
            if not count:
                return [], []
            # "!" is an unusable password: they only ever use their API tokens (or a session).
            run(
                """INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,
                    is_staff, is_active, date_joined)
                SELECT '!', false, %s || '-' || %s || '-' || i, '', '', '', false, true, now()
                FROM generate_series(0, %s - 1) i ORDER BY i""",
                [prefix, role, count],
            )
            analyse("auth_user")
            run(
                """INSERT INTO authtoken_token (key, user_id, created)
                SELECT substr(md5(random()::text || u.id) || md5(u.id || random()::text), 1, 40), u.id, now()
                FROM auth_user u WHERE u.username LIKE %s""",
                [f"{prefix}-{role}-%"],
            )
            analyse("authtoken_token")
            run(
                """INSERT INTO annotation_membership (user_id, project_id, role, is_active, created_at)
                SELECT u.id, %s, %s, true, now() FROM auth_user u WHERE u.username LIKE %s ORDER BY u.id""",
                [pid, role, f"{prefix}-{role}-%"],
            )
            analyse("annotation_membership")
            run(
                """SELECT u.id, t.key FROM auth_user u JOIN authtoken_token t ON t.user_id = u.id
                WHERE u.username LIKE %s ORDER BY u.id""",
                [f"{prefix}-{role}-%"],
            )
            rows = cursor.fetchall()
            return [row[0] for row in rows], [row[1] for row in rows]

        rater_ids, rater_tokens = people("rater", raters)
        curator_ids, curator_tokens = people("curator", curators)

        if active and history:
            judgments = active * history
            if history_kind == "queue":
                task_of, rater_of = "j / %(overlap)s", "j %% %(active)s"
            else:
                task_of, rater_of = "j %% %(history)s", "j / %(history)s"
            run(
                f"""INSERT INTO annotation_lease (task_id, rater_id, state, created_at, expires_at, display_order)
                SELECT t.id, r.id, 'submitted', now() - interval '1 day',
                    now() - interval '1 day' + %(lease)s * interval '1 second',
                    (SELECT jsonb_agg(o.output_id ORDER BY o.position) FROM annotation_taskoutput o
                     WHERE o.task_id = t.id)
                FROM generate_series(0, %(judgments)s - 1) j
                JOIN (SELECT id, row_number() OVER (ORDER BY priority, id) - 1 AS n FROM annotation_task
                      WHERE project_id = %(project)s) t ON t.n = {task_of}
                JOIN (SELECT user_id AS id, row_number() OVER (ORDER BY id) - 1 AS n
                      FROM annotation_membership
                      WHERE project_id = %(project)s AND role = 'rater') r ON r.n = {rater_of}
                ORDER BY j""",
                {
                    "project": pid,
                    "judgments": judgments,
                    "overlap": overlap,
                    "active": active,
                    "history": history,
                    "lease": lease_seconds,
                },
            )
            analyse("annotation_lease")
            run(
                """INSERT INTO annotation_judgment (project_id, task_id, rater_id, lease_id, display_order,
                    time_spent_ms, late, status, created_at)
                SELECT %s, l.task_id, l.rater_id, l.id, l.display_order, 20000 + l.id %% 40000, false,
                    'pending', l.created_at + interval '1 minute'
                FROM annotation_lease l JOIN annotation_task t ON t.id = l.task_id
                WHERE t.project_id = %s ORDER BY l.id""",
                [pid, pid],
            )
            analyse("annotation_judgment")
            if answers and task_kind == "single":
                run(
                    """INSERT INTO annotation_answer (judgment_id, question, kind, value)
                    SELECT j.id, q.question, q.kind, CASE q.kind
                        WHEN 'likert' THEN jsonb_build_object('helpful', 1 + j.id %% 7, 'accurate', 1 + j.id %% 5)
                        ELSE to_jsonb(%s::text) END
                    FROM annotation_judgment j,
                        (VALUES ('quality', 'likert'), ('feedback', 'feedback')) q(question, kind)
                    WHERE j.project_id = %s ORDER BY j.id, q.question""",
                    [FEEDBACK, pid],
                )
                analyse("annotation_answer")
            run(
                """UPDATE annotation_task t SET judgment_count = c.n,
                    status = CASE WHEN c.n >= %s THEN 'complete' ELSE 'open' END
                FROM (SELECT task_id, count(*) AS n FROM annotation_judgment WHERE project_id = %s
                      GROUP BY task_id) c
                WHERE t.id = c.task_id""",
                [stored_overlap, pid],
            )
    if vacuum:
        database_analyse(vacuum=True)
    return Seeded(
        project_id=pid,
        overlap=stored_overlap,
        rater_ids=rater_ids,
        rater_tokens=rater_tokens,
        curator_ids=curator_ids,
        curator_tokens=curator_tokens,
        active=active,
        seconds=time.monotonic() - started,
    )


def database_analyse(*, vacuum: bool = False) -> None:
    """VACUUM (when asked) and ANALYZE the tables the seeder writes (outside any transaction)."""
    from django.db import connection

    with connection.cursor() as cursor:
        for table in TABLES:
            cursor.execute(f"{'VACUUM (ANALYZE)' if vacuum else 'ANALYZE'} {table}")
