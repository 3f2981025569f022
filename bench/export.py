"""Export benchmark: every export kind, as JSONL and as parquet, from a project of 1M judgments.

    python bench/export.py [--judgments 1000000] [--kinds judgments,sft,preference,refiner,qa2]
                           [--formats jsonl,parquet] [--baseline] [--reuse] [--keep]
                           [--database-url postgres://postgres@127.0.0.1:5432/refinery_bench_export]

It drops and re-creates the bench database, migrates it and seeds it with SQL (INSERT ... SELECT
over generate_series): a project of --judgments judgments, overlap 3, over single-output,
pairwise and ranking tasks, about 2.4 answers each (a likert score, a comparison or a ranking;
written feedback on every one; a fix on two in five; statuses and rounds mixed), and a (QA)²
project of as many judgments for the qa2 kind. --reuse keeps a database seeded before, of the
same size.

Each export runs in its own process (Django set up, the rows read by annotation.exporting and
written to a file, as `manage.py export_judgments` does, less its system checks), and the table
gives its rows, wall seconds (the process's start included), rows per second, CPU seconds and
peak RSS (the child's own, from wait4). With --baseline each export is also read as ORM objects
with prefetches (tests/export_reference.py, what the exports did before), for a ratio. Then a
download of the judgments in each format through Django's request handler (the test client, in a
child process, reading the response as a server sends it), made in an export process of its own
as deployed and then in the web process (EXPORT_IN_PROCESS): seconds to its first byte and to its
last, the CPU seconds of the web process and of the export process, and the peak RSS. Wall
seconds depend on what else the machine runs; CPU seconds less so. The database is dropped at the
end unless --keep.
"""
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder would come first on sys.path, and bench/queue.py would shadow
# the standard library's `queue` module (which psycopg imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse
import json
import os
import re
import resource
import secrets
import subprocess
import tempfile
import time
from urllib.parse import urlparse

from bench.queue import drop_database, prepare_database

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/refinery_bench_export"
KINDS = ("judgments", "sft", "preference", "refiner", "qa2")
FORMATS = ("jsonl", "parquet")
OVERLAP = 3
RATERS = 100
TABLES = ("prompt", "output", "task", "taskoutput", "judgment", "answer")
QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["helpful", "accurate"]},
    {"name": "feedback", "kind": "feedback", "min_length": 3},
    {"name": "fix", "kind": "fix"},
    {"name": "preference", "kind": "pairwise", "allow_ties": True},
    {"name": "order", "kind": "ranking", "allow_ties": True},
]
POST = (
    "I moved to a new city for work three months ago and still do not know anyone outside the "
    "office. My colleagues are friendly but everyone goes home straight after work. How do adults "
    "actually make friends somewhere new?"
)


# ---------------------------------------------------------------------------------------------
# Seeding, in SQL: ids are given, not returned, so each table is one INSERT ... SELECT


def _next_id(cursor, table: str) -> int:
    cursor.execute(f"SELECT coalesce(max(id), 0) + 1 FROM {table}")
    return cursor.fetchone()[0]


def seed_project(project, judgments: int, *, qa2: bool) -> None:
    """`judgments` judgments (overlap 3) of a project with their tasks, outputs and answers."""
    from django.db import connection, transaction

    from annotation.models import Membership

    tasks = -(-judgments // OVERLAP)
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, email,"
            " is_staff, is_active, date_joined) SELECT '!', false, %s || g, '', '', '', false, true, now()"
            " FROM generate_series(0, %s) g",
            [f"p{project.pk}-rater-", RATERS - 1],
        )
        cursor.execute("SELECT min(id) FROM auth_user WHERE username LIKE %s", [f"p{project.pk}-rater-%"])
        user = cursor.fetchone()[0]
        Membership.objects.bulk_create(
            Membership(user_id=user + r, project=project, role=Membership.Role.RATER) for r in range(RATERS)
        )
        prompt, output, task, judgment = (
            _next_id(cursor, f"annotation_{table}") for table in ("prompt", "output", "task", "judgment")
        )
        p = {
            "project": project.pk,
            "tasks": tasks,
            "count": judgments,
            "prompt": prompt,
            "output": output,
            "task": task,
            "judgment": judgment,
            "user": user,
            "post": POST,
        }
        # Task t: single (half), pairwise (three in ten) or ranking (two in ten); qa2's all single.
        if qa2:
            kind, shown = "'single'", "1"
        else:
            kind = "CASE WHEN mod(t, 10) < 5 THEN 'single' WHEN mod(t, 10) < 8 THEN 'pairwise' ELSE 'ranking' END"
            shown = "CASE WHEN mod(t, 10) < 5 THEN 1 WHEN mod(t, 10) < 8 THEN 2 ELSE 3 END"
        cursor.execute(
            "INSERT INTO annotation_prompt (id, project_id, external_id, text, context, data, split, created_at)"
            " SELECT %(prompt)s + t, %(project)s, 'post-' || t, 'Summarise post ' || t || '.',"
            " CASE WHEN mod(t, 4) = 0 THEN '' ELSE %(post)s END,"
            " CASE WHEN mod(t, 20) = 0 THEN jsonb_build_object('tests', 'assert f(' || t || ')',"
            " 'entry_point', 'f') ELSE '{}'::jsonb END, 'train', now()"
            " FROM generate_series(0, %(tasks)s - 1) t",
            p,
        )
        cursor.execute(
            "INSERT INTO annotation_task (id, project_id, prompt_id, kind, status, judgment_count, is_gold,"
            f" priority, created_at) SELECT %(task)s + t, %(project)s, %(prompt)s + t, {kind}, 'done',"
            f" {OVERLAP}, false, 0, now() FROM generate_series(0, %(tasks)s - 1) t",
            p,
        )
        # Output ids are %(output)s + 3t + position: answers name them without a lookup.
        cursor.execute(
            "INSERT INTO annotation_output (id, prompt_id, text, source, model_name, adapter, generation,"
            " created_at) SELECT %(output)s + 3 * t + p, %(prompt)s + t, 'Output ' || p || ' for post ' || t"
            " || ': someone who moved for work asks how adults make friends in a new city.', 'model',"
            " 'bench-model', '', '{}'::jsonb, now()"
            f" FROM generate_series(0, %(tasks)s - 1) t, generate_series(0, ({shown}) - 1) p",
            p,
        )
        cursor.execute(
            "INSERT INTO annotation_taskoutput (task_id, output_id, position)"
            " SELECT %(task)s + (id - %(output)s) / 3, id, mod(id - %(output)s, 3)"
            " FROM annotation_output WHERE id >= %(output)s ORDER BY id",
            p,
        )
        # Judgment i: task i mod T, rater (task + 37 (i div T)) mod 100: a task's judgments are
        # spread over the ids, as raters come and go.
        cursor.execute(
            "INSERT INTO annotation_judgment (id, project_id, task_id, rater_id, display_order,"
            " time_spent_ms, late, status, round_number, created_at)"
            " SELECT %(judgment)s + i, %(project)s, %(task)s + mod(i, %(tasks)s),"
            " %(user)s + mod(mod(i, %(tasks)s) + 37 * (i / %(tasks)s), 100),"
            " (SELECT jsonb_agg(output_id ORDER BY CASE WHEN mod(i, 2) = 0 THEN position ELSE -position END)"
            "  FROM annotation_taskoutput WHERE task_id = %(task)s + mod(i, %(tasks)s)),"
            " 1000 + mod(i, 50000), mod(i, 13) = 0,"
            " CASE WHEN mod(i, 100) < 70 THEN 'pending' WHEN mod(i, 100) < 90 THEN 'accepted'"
            "  WHEN mod(i, 100) < 97 THEN 'rejected' ELSE 'excluded' END,"
            " NULLIF(mod(i, 4), 0), now() - make_interval(secs => %(count)s - i)"
            " FROM generate_series(0, %(count)s - 1) i",
            p,
        )

        def shown_at(position: str) -> str:  # the id of the judgment's task's output at a position
            return f"(%(output)s + 3 * (j.task_id - %(task)s) + {position})"

        if qa2:
            answers = [
                "'assumption', 'rubric', CASE WHEN mod(j.id, 3) = 0 THEN jsonb_build_object('flags',"
                " jsonb_build_array('questionable_assumption'), 'notes', jsonb_build_object("
                " 'questionable_assumption', 'The question assumes post ' || j.id || ' exists.'))"
                ' ELSE \'{"flags": [], "notes": {}}\'::jsonb END',
                "'acceptable', 'likert', jsonb_build_object('acceptable', (mod(j.id, 5) >= 2)::int)",
            ]
            optional = "'explanation', 'feedback', to_jsonb('Not acceptable: it should say why, ' || j.id)"
        else:
            ranked = [f"jsonb_build_array({shown_at(f'mod(j.id + {k}, 3)')})" for k in range(3)]
            answers = [
                "CASE t.kind WHEN 'single' THEN 'quality' WHEN 'pairwise' THEN 'preference' ELSE 'order' END,"
                " CASE t.kind WHEN 'single' THEN 'likert' ELSE t.kind END,"
                " CASE t.kind WHEN 'single' THEN jsonb_build_object('helpful', 1 + mod(j.id, 7),"
                "  'accurate', 1 + mod(j.id, 5))"
                " WHEN 'pairwise' THEN jsonb_build_object('preferred', CASE WHEN mod(j.id, 10) = 0 THEN NULL"
                f"  ELSE {shown_at('mod(j.id, 2)')} END, 'strength', 'better')"
                " ELSE jsonb_build_object('ranking', CASE WHEN mod(j.id, 7) = 0 THEN jsonb_build_array("
                f"  jsonb_build_array({shown_at(0)}, {shown_at(1)}), jsonb_build_array({shown_at(2)}))"
                f"  ELSE jsonb_build_array({', '.join(ranked)}) END) END",
                "'feedback', 'feedback', to_jsonb('Mention that they already tried a climbing gym, ' || j.id)",
            ]
            optional = "'fix', 'fix', to_jsonb('Someone who moved for work, fixed by a rater: ' || j.id)"
        selects = [
            f"SELECT j.id, {n}, {answer} FROM annotation_judgment j JOIN annotation_task t ON t.id = j.task_id"
            f" WHERE j.project_id = %(project)s{' AND mod(j.id, 5) < 2' if n == 9 else ''}"
            for n, answer in [*enumerate(answers), (9, optional)]
        ]
        cursor.execute(
            "INSERT INTO annotation_answer (judgment_id, question, kind, value)"
            f" SELECT judgment_id, question, kind, value FROM ({' UNION ALL '.join(selects)})"
            " a (judgment_id, n, question, kind, value) ORDER BY judgment_id, n",
            p,
        )
    with connection.cursor() as cursor:
        for table in ("auth_user", "annotation_membership", *(f"annotation_{t}" for t in TABLES)):
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        cursor.execute("ANALYZE")


def seed(judgments: int) -> dict[str, int]:
    """The two bench projects (their ids by export kind) and a curator of both."""
    from django.contrib.auth import get_user_model

    from annotation.models import Membership, Project
    from annotation.services.projects import project_create_from_template

    main = Project.objects.create(name="Bench exports", questions=QUESTIONS, overlap=OVERLAP)
    qa2 = project_create_from_template(name="Bench exports (QA)²", template="qa2", overlap=OVERLAP)
    curator = get_user_model().objects.create_user("bench-curator", password=secrets.token_urlsafe(16))
    for project, is_qa2 in ((main, False), (qa2, True)):
        Membership.objects.create(user=curator, project=project, role=Membership.Role.CURATOR)
        started = time.perf_counter()
        seed_project(project, judgments, qa2=is_qa2)
        print(
            f"seeded {project.name!r}: {judgments} judgments in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
        )
    return {kind: (qa2 if kind == "qa2" else main).pk for kind in KINDS}


# ---------------------------------------------------------------------------------------------
# Measuring: each export in a child process


def run_child(argv: list[str], env: dict) -> tuple[float, float, int, str, str]:
    """Run a child to its end: (wall seconds, its CPU seconds, its peak RSS in bytes, its standard
    output and error)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        child = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = (stream.read().decode(errors="replace") for stream in (out, err))
    if child.returncode:
        raise SystemExit(f"{' '.join(argv[1:])} failed:\n{stderr}")
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, stdout, stderr


def export(reading: str, project_id: int, kind: str, fmt: str, target: str) -> None:
    """(In a child process.) One export to a file, read by annotation.exporting or, for the baseline,
    as ORM objects with prefetches one judgment at a time (tests/export_reference.py, what the
    exports did before); both written by annotation.exporting's writers, as export_judgments does."""
    import django

    django.setup()
    from annotation import exporting
    from annotation.models import Project
    from tests import export_reference

    module = export_reference if reading == "orm" else exporting
    rows = module.export_rows(Project.objects.get(pk=project_id), kind=kind)
    if fmt == "parquet":
        count = exporting.write_parquet(rows, target, kind=kind)
    else:
        with open(target, "w", encoding="utf-8") as stream:
            count = exporting.write_jsonl(rows, stream)
    print(f"Wrote {count} {kind} rows", file=sys.stderr)


def download(project_id: int, kind: str, fmt: str) -> None:
    """(In a child process.) A download through Django's handler, read as a server sends it, made in a
    child process of its own (annotation.export_process) and, with EXPORT_IN_PROCESS, in this one:
    seconds to the first byte and to the last, and the CPU seconds of this process (the web
    process's share) and of its children (the export's, when it is made in one)."""
    import django
    from django.conf import settings

    django.setup()
    import pyarrow.parquet as pq
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(username="bench-curator"))
    for in_process in (False, True):
        settings.EXPORT_IN_PROCESS = in_process
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        response = client.get(f"/projects/{project_id}/exports/{kind}.{fmt}", HTTP_HOST="localhost")
        assert response.status_code == 200 and response.streaming, response
        first = None
        size = lines = 0
        with tempfile.TemporaryFile() as body:
            for chunk in response.streaming_content:
                first = first if first is not None else time.perf_counter() - started
                size += len(chunk)
                lines += chunk.count(b"\n")  # counted as it comes: the body is never held in memory
                body.write(chunk)
            total = time.perf_counter() - started
            response.close()
            body.seek(0)
            rows = pq.ParquetFile(body).metadata.num_rows if fmt == "parquet" else lines
        own_after, children_after = (
            resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        print(
            json.dumps(
                {
                    "in_process": in_process,
                    "first_byte_s": first,
                    "total_s": total,
                    "bytes": size,
                    "rows": rows,
                    "web_cpu_s": _cpu(own_after) - _cpu(own),
                    "export_process_cpu_s": _cpu(children_after) - _cpu(children),
                }
            )
        )


def _cpu(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--judgments", type=int, default=1_000_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--reuse", action="store_true", help="use the bench database as seeded before")
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also time the ORM-object reading (tests/export_reference.py) of each export: slow at 1M",
    )
    parser.add_argument("--download", metavar="PROJECT:KIND:FORMAT", help=argparse.SUPPRESS)  # a child's part
    parser.add_argument("--export", metavar="READING:PROJECT:KIND:FORMAT:FILE", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.update(DATABASE_URL=args.database_url, DEBUG="0", DJANGO_SETTINGS_MODULE="config.settings")
    if args.download:
        project_id, kind, fmt = args.download.split(":")
        download(int(project_id), kind, fmt)
        return 0
    if args.export:
        reading, project_id, kind, fmt, target = args.export.split(":", 4)
        export(reading, int(project_id), kind, fmt, target)
        return 0
    if urlparse(args.database_url).scheme not in {"postgres", "postgresql"}:
        parser.error("--database-url must be a postgres:// URL")

    prepare_database(args.database_url, reset=not args.reuse)
    env = dict(os.environ)  # the children's: this database, as deployed
    from annotation.models import Project

    if args.reuse:
        projects = {
            kind: Project.objects.get(name="Bench exports (QA)²" if kind == "qa2" else "Bench exports").pk
            for kind in KINDS
        }
    else:
        projects = seed(args.judgments)
    from django.db import connections

    connections.close_all()

    def measure(argv: list[str], target: Path) -> tuple[int, float, float, int, int]:
        seconds, cpu, rss, _, err = run_child(argv, env)
        rows = int(re.search(r"Wrote (\d+) ", err).group(1))
        size = target.stat().st_size
        target.unlink()
        return rows, seconds, cpu, rss, size

    load = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for kind in args.kinds.split(","):
            for fmt in args.formats.split(","):
                target = Path(folder) / f"{kind}.{fmt}"

                def child(reading: str) -> list[str]:
                    where = f"{reading}:{projects[kind]}:{kind}:{fmt}:{target}"  # noqa: B023
                    return [sys.executable, __file__, "--database-url", args.database_url, "--export", where]

                rows, seconds, cpu, rss, size = measure(child("values"), target)
                orm = None
                if args.baseline:
                    orm = measure(child("orm"), target)
                    assert orm[0] == rows, (kind, fmt, orm[0], rows)
                results.append((kind, fmt, rows, seconds, cpu, rss, size, orm))
                print(f"  {kind} {fmt}: {rows} rows in {seconds:.1f} s", file=sys.stderr)
        downloads = []
        for fmt in args.formats.split(","):
            where = f"{projects['judgments']}:judgments:{fmt}"
            argv = [sys.executable, __file__, "--database-url", args.database_url, "--download", where]
            seconds, cpu, rss, out, _ = run_child(argv, env)
            downloads += [(fmt, rss, json.loads(line)) for line in out.strip().splitlines()[-2:]]
    print(
        f"\nexports of {args.judgments} judgments per project (PostgreSQL; one process each, its start"
        f" included; load average {load:.1f} before, {os.getloadavg()[0]:.1f} after)\n"
    )
    header = "| kind | format | rows | seconds | rows/s | CPU s | peak RSS MB | file MB |"
    rule = "|---|---|---:|---:|---:|---:|---:|---:|"
    if args.baseline:
        header += " ORM-object reading: seconds | CPU s | peak RSS MB | ratio |"
        rule += "---:|---:|---:|---:|"
    print(header)
    print(rule)
    for kind, fmt, rows, seconds_, cpu_, rss_, size, orm in results:
        line = (
            f"| {kind} | {fmt} | {rows} | {seconds_:.1f} | {rows / seconds_:,.0f} | {cpu_:.1f} |"
            f" {rss_ / 2**20:.0f} | {size / 2**20:.1f} |"
        )
        if orm:
            line += f" {orm[1]:.1f} | {orm[2]:.1f} | {orm[3] / 2**20:.0f} | {orm[1] / seconds_:.1f}x |"
        print(line)
    print(
        "\ndownloads of judgments (Django's handler, streamed; peak RSS of the web process's, both"
        " ways together)\n\n| format | made in | rows | MB | first byte s | last byte s | web process CPU s"
        " | export process CPU s | peak RSS MB |\n|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for fmt, rss, streamed in downloads:
        print(
            f"| {fmt} | {'the web process' if streamed['in_process'] else 'a child process'} |"
            f" {streamed['rows']} | {streamed['bytes'] / 2**20:.1f} | {streamed['first_byte_s']:.2f} |"
            f" {streamed['total_s']:.1f} | {streamed['web_cpu_s']:.1f} | {streamed['export_process_cpu_s']:.1f} |"
            f" {rss / 2**20:.0f} |"
        )
    if not args.keep:
        drop_database(args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
