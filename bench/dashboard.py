"""Curator pages benchmark: the dashboard and raters page of a big project, computed and cached.

    python bench/dashboard.py [--judgments 200000] [--overlap 3] [--raters 30] [--members 0] [--repeat 5]
                              [--new 100]
                              [--database-url postgres://postgres@127.0.0.1:5432/refinery_bench_pages]
                              [--keep] [--reuse]

It drops and re-creates the bench database, migrates it, seeds one likert + pairwise project
with about --judgments judgments (written in bulk, --overlap raters per task, drawn from
--raters raters; --members more raters who judged nothing yet), and reads each page in this process with Django's test client as a curator:

- computed: the statistics cache emptied before each read (every figure computed from the rows);
- cached: the same page again (the statistics version is read, the figures come from the cache);
- after a change: the first read after one more judgment written as the admin writes it (the
  curated version moved on: recomputed whatever the figures' age).

It prints the median wall time, the median CPU time of this process (what a web process spends on
the page, holding the GIL its other requests wait for) and the number of queries of each. Then the
background worker's recompute of both pages' figures (annotation.quality.figures_refresh), its
wall time and CPU (its own and its PostgreSQL backend's), three ways in this process: each page
reading the answers itself (the baseline), one reading for both, and the answer table kept from
the last recompute with --new judgments added since (kept_answer_table). The figures are this
machine's: on a shared machine they are noisy.
"""
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder would come first on sys.path, and bench/queue.py would
# shadow the standard library's `queue` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse
import random
import statistics
import time
import warnings
from urllib.parse import urlparse

from bench.queue import drop_database, prepare_database

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/refinery_bench_pages"
QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["helpful", "accurate"]},
    {"name": "preference", "kind": "pairwise", "allow_ties": True},
]
BATCH = 5000


def seed(
    *, judgments: int, overlap: int, raters: int, members: int, rng: random.Random
) -> tuple[int, object, list]:
    """The project id, its curator, and its raters."""
    from django.contrib.auth import get_user_model

    from annotation.models import Answer, Judgment, Membership, Output, Project, Prompt, Task, TaskOutput

    user_model = get_user_model()
    project = Project.objects.create(name="Bench pages", questions=QUESTIONS, overlap=overlap)
    curator = user_model.objects.create_user("curator")
    Membership.objects.create(user=curator, project=project, role=Membership.Role.CURATOR)
    people = user_model.objects.bulk_create(user_model(username=f"rater{i}") for i in range(raters))
    idle = user_model.objects.bulk_create(user_model(username=f"member{i}") for i in range(members))
    Membership.objects.bulk_create(
        Membership(user=user, project=project, role=Membership.Role.RATER) for user in people + idle
    )
    n_tasks = judgments // overlap
    for start in range(0, n_tasks, BATCH):
        size = min(BATCH, n_tasks - start)
        prompts = Prompt.objects.bulk_create(
            Prompt(project=project, external_id=f"p{start + i}", text="Summarise.") for i in range(size)
        )
        outputs = Output.objects.bulk_create(
            Output(prompt=prompt, text=f"Output {side}.") for prompt in prompts for side in (0, 1)
        )
        tasks = Task.objects.bulk_create(
            Task(project=project, prompt=prompt, kind=Task.Kind.PAIRWISE, status=Task.Status.COMPLETE)
            for prompt in prompts
        )
        TaskOutput.objects.bulk_create(
            TaskOutput(task=task, output=outputs[2 * i + side], position=side)
            for i, task in enumerate(tasks)
            for side in (0, 1)
        )
        rows = [
            Judgment(project=project, task=task, rater=rater, time_spent_ms=rng.randint(5_000, 90_000))
            for task in tasks
            for rater in rng.sample(people, overlap)
        ]
        rows = Judgment.objects.bulk_create(rows)
        outputs_of = {task.pk: (outputs[2 * i].pk, outputs[2 * i + 1].pk) for i, task in enumerate(tasks)}
        Answer.objects.bulk_create(
            answer
            for judgment in rows
            for answer in (
                Answer(
                    judgment=judgment,
                    question="quality",
                    kind="likert",
                    value={"helpful": rng.randint(3, 7), "accurate": rng.randint(2, 7)},
                ),
                Answer(
                    judgment=judgment,
                    question="preference",
                    kind="pairwise",
                    value={"preferred": rng.choice([*outputs_of[judgment.task_id], None])},
                ),
            )
        )
        print(f"  seeded {start + size:,} of {n_tasks:,} tasks", file=sys.stderr)
    return project.pk, curator, people


def timed(client, url: str, *, before=None, repeat: int) -> tuple[float, float, int]:
    """Median seconds, median CPU seconds of this process, and the queries of one read."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    times, cpu, queries = [], [], 0
    for _ in range(repeat):
        if before:
            before()
        with CaptureQueriesContext(connection) as captured:
            start, start_cpu = time.perf_counter(), time.process_time()
            response = client.get(url)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        assert response.status_code == 200, response.status_code
        queries = len(captured)
    return statistics.median(times), statistics.median(cpu), queries


def _cpu_seconds(backend) -> float:
    ours, theirs = time.process_time(), backend.cpu_times()
    return ours + theirs.user + theirs.system


def worker_refresh(project_id: int, people: list, *, new: int) -> None:
    """The background worker's recompute of both pages, three ways (see the module)."""
    import psutil
    from django.core.cache import caches
    from django.db import connection

    from annotation import quality
    from annotation.models import Project, Task, stats_version
    from tests.factories import write_judgment

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = psutil.Process(cursor.fetchone()[0])
    project = Project.objects.get(pk=project_id)
    cache = caches["stats"]

    def due() -> None:  # both pages shown, neither current
        cache.clear()
        for page in quality.PAGES:
            cache.add(quality._figures_key(project_id, page) + ":refresh", True)

    def measured(run) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), _cpu_seconds(backend)
        run()
        return time.perf_counter() - wall, _cpu_seconds(backend) - cpu

    rows = [
        (
            "each page reading the answers",
            measured(lambda: [quality.figures_compute(project, page) for page in quality.PAGES]),
        )
    ]
    quality._kept.clear()
    due()
    rows.append(
        (
            "one reading for both",
            measured(lambda: quality.figures_refresh(project_id=project_id, name="dashboard")),
        )
    )
    tasks = Task.objects.filter(project_id=project_id).exclude(judgments__rater=people[-1])[:new]
    for task in tasks:
        write_judgment(task, people[-1], {"quality": ("likert", {"helpful": 3, "accurate": 5})})
    due()
    rows.append(
        (
            f"kept table, {len(tasks)} new",
            measured(lambda: quality.figures_refresh(project_id=project_id, name="dashboard")),
        )
    )
    assert cache.get(quality._figures_key(project_id, "raters")).judged == stats_version(project_id)[0]
    print(
        "\nthe background worker: both pages' figures recomputed (CPU: the process and its PostgreSQL backend)"
    )
    print(f"{'recompute':<32} {'wall s':>8} {'CPU s':>8} {'CPU ratio':>10}")
    base = rows[0][1][1]
    for name, (wall, cpu) in rows:
        print(f"{name:<32} {wall:>8.3f} {cpu:>8.3f} {cpu / base:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--judgments", type=int, default=200_000)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--raters", type=int, default=30)
    parser.add_argument("--members", type=int, default=0, help="more raters, who judged nothing yet")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--new", type=int, default=100, help="judgments added before the kept table's recompute"
    )
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--keep", action="store_true", help="leave the bench database (dropped by default)")
    parser.add_argument(
        "--reuse", action="store_true", help="read the project a --keep run left (no reset, no seeding)"
    )
    args = parser.parse_args(argv)
    if urlparse(args.database_url).scheme not in {"postgres", "postgresql"}:
        parser.error("--database-url must be a postgres:// URL")

    # The test suite's settings: DEBUG off, static files by their plain names (no collectstatic).
    prepare_database(args.database_url, reset=not args.reuse, settings="config.test_settings")
    from django.contrib.auth import get_user_model
    from django.core.cache import caches
    from django.db import connection
    from django.test import Client
    from django.test.utils import setup_test_environment

    from annotation.models import Judgment, Project, Task
    from tests.factories import write_judgment

    setup_test_environment()  # the test client's response.context, and no SSL redirect
    warnings.filterwarnings("ignore", message="No directory at")  # no collectstatic: not needed here
    try:
        if args.reuse:
            project_id = Project.objects.get(name="Bench pages").pk
            curator = get_user_model().objects.get(username="curator")
            people = list(get_user_model().objects.filter(username__startswith="rater").order_by("pk"))
        else:
            project_id, curator, people = seed(
                judgments=args.judgments,
                overlap=args.overlap,
                raters=args.raters,
                members=args.members,
                rng=random.Random(0),
            )
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        client = Client()
        client.force_login(curator)
        print(
            f"project: {Judgment.objects.filter(project_id=project_id).count():,} judgments, "
            f"{len(people)} raters, overlap {args.overlap}"
        )
        print(f"{'page':<12} {'read':<22} {'median s':>9} {'CPU ms':>8} {'queries':>8}")
        for page in ("dashboard", "raters"):
            url = f"/projects/{project_id}/{page}/"
            client.get(url)  # imports, templates, matplotlib: not what is measured
            rows = [
                ("computed", timed(client, url, before=caches["stats"].clear, repeat=args.repeat)),
                ("cached", timed(client, url, repeat=args.repeat)),
            ]
            task = Task.objects.filter(project_id=project_id).exclude(judgments__rater=people[0]).first()
            write_judgment(task, people[0], {"quality": ("likert", {"helpful": 4, "accurate": 4})})
            rows.append(("after a change", timed(client, url, repeat=1)))
            for name, (seconds, cpu, queries) in rows:
                print(f"{page:<12} {name:<22} {seconds:>9.3f} {1000 * cpu:>8.1f} {queries:>8}")
        worker_refresh(project_id, people, new=args.new)
    finally:
        if not args.keep:
            drop_database(args.database_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
