"""Queue bench at scale: does next-task cost grow with a project's size and its raters' history?

    python bench/queue_scale.py [--tasks 1000000] [--raters 5000] [--active 500] [--history 2000]
                                [--history-kind open|queue|both] [--overlap 3] [--empty-tasks 20000]
                                [--duration 60] [--warmup 10] [--think-mean 5] [--with-curators] [--one-request]
                                [--rounds 1]
                                [--redis-url redis://127.0.0.1:6379/9]
                                [--database-url postgres://postgres@127.0.0.1:5432/refinery_bench]

It resets the bench database, seeds it with bench.seed (SQL, not the ORM), starts gunicorn and
runs bench.queue's paced raters (the `--active` raters, each thinking `--think-mean` seconds on
average per task) against:

- "empty": a project with `--empty-tasks` tasks and no history;
- "open" / "queue": a project of `--tasks` tasks and `--raters` raters, of whom the `--active`
  ones have `--history` past judgments each (bench.seed's history kinds: "open" is the worst
  case, every active rater's judged tasks still open at the front of the queue; "queue" is the
  history the queue itself leaves behind);
- with `--with-curators`, the last seeded project again while two curators reload the
  dashboard and raters pages (a second apart) and a third streams the judgments export, over
  and over, from a process of their own (not the raters' event loop). As deployed: the statistics cache is shared in Redis (`--redis-url`, also the
  broker), and a Celery worker on the background queue alone (at its lower priority,
  REFINERY_BACKGROUND_NICE) recomputes the pages' figures; STATS_INLINE_MAX_JUDGMENTS is 0, so
  the figures go to the worker whatever the project's size.

With `--rounds N` the last seeded project's runs (with and without the curators) take turns N times,
so that a machine whose speed drifts over minutes weighs on both alike: each round's p99 with
the curators is also given as a ratio to the same round's without them. The database is
checkpointed after seeding, so that no run writes out the seeding's pages, and a run after the
curators' waits until the background worker has finished the recomputes they asked for.

Before and after each seeded project's run it prints EXPLAIN (ANALYZE, BUFFERS) of the queue's
queries for an active rater with history: the rater's place in the queue (services.leases),
the candidate scan from that place, the same scan from the front of the queue (what the
queue costs without the place), and the one statement that reads the rater's live leases, moves
their place on and locks the candidate, as lease_acquire runs it on PostgreSQL. Then bench.queue's table for each run, the tasks table's HOT
updates, and the next-task p50/p95/p99 of each seeded project against the empty one. It exits
1 on a correctness count that is not 0 or on a 5xx, as bench.queue does; the timing targets
(p99 < 50 ms, within 20% of the empty project) are printed, not enforced: the figures depend
on the machine.
"""
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As in bench/queue.py: this folder must not come first on sys.path (bench/queue.py would shadow
# the standard library's `queue`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import time
from argparse import Namespace
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import psutil

from bench.queue import (
    DEFAULT_DATABASE_URL,
    Clock,
    ModeReport,
    drop_database,
    free_port,
    percentile,
    prepare_database,
    print_table,
    run_mode,
    start_gunicorn,
    stop_gunicorn,
    stop_session,
    wait_until_ready,
)

TARGET_P99_MS = 50.0


# ---------------------------------------------------------------------------------------------
# Plans


def queue_plans(*, project_id: int, rater_id: int) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the queue's queries for this rater, as lease_acquire runs them.

    Run in a transaction that is rolled back (the candidate scan locks a row).
    """
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import Lease, Membership, Project, Task
    from annotation.services import leases

    project = Project.objects.get(pk=project_id)
    member = Membership.objects.get(project_id=project_id, user_id=rater_id)
    # As lease_acquire reads them, with the project.
    project.membership_id, project.member_queue_version = member.pk, member.queue_version
    project.member_queue_priority, project.member_queue_task_id = member.queue_priority, member.queue_task_id
    recorded = leases._recorded_place(project)
    params = {
        "project": project_id,
        "open": Task.Status.OPEN,
        "gold": False,
        "rater": rater_id,
        "active": Lease.State.ACTIVE,
        "overlap": project.overlap,
        "now": leases.db_now(timezone.now()),
        "limit": 1,
    }
    if recorded is not None:
        params.update(start_priority=recorded[0], start_task=recorded[1])
    place_sql = leases._FIRST_UNFINISHED.format(start="" if recorded is None else leases._START)
    out = []
    with transaction.atomic(), connection.cursor() as cursor:

        def explain(title: str, sql: str, query_params: dict) -> None:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, query_params)
            plan = "\n".join(f"    {line}" for (line,) in cursor.fetchall())
            out.append(f"  {title}\n{plan}")

        where = "none recorded" if recorded is None else f"recorded at {recorded}"
        explain(f"the rater's place ({where}): _FIRST_UNFINISHED", place_sql, params)
        cursor.execute(place_sql, params)
        row = cursor.fetchone()
        for title, start in (("from the rater's place", row), ("from the front of the queue", None)):
            query = dict(params)
            if start is not None:
                query.update(start_priority=start[0], start_task=start[1])
            sql = leases._CANDIDATES.format(
                outputs="",
                start="" if start is None else leases._START,
                room=leases._ROOM,
                exclude="",
                lock="FOR UPDATE OF t SKIP LOCKED",
            )
            explain(f"the candidate scan {title}: _CANDIDATES", sql, query)
        # As lease_acquire runs on PostgreSQL: the live leases, the place and the candidate at once.
        sql, query = leases.held_place_and_candidate_query(
            project, rater_id, timezone.now(), project.max_pending_per_rater
        )
        explain("live leases, place and candidate in one statement: _HELD_PLACE_AND_CANDIDATE", sql, query)
        transaction.set_rollback(True)
    return f"Plans for rater {rater_id} of project {project_id}:\n" + "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Curators and an export, alongside the raters


@dataclass
class PageStats:
    ms: dict[str, list[float]] = field(default_factory=dict)
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)
    export_bytes: int = 0
    exports_done: int = 0
    client_cpu: float = 0.0  # CPU-seconds of the curators' and export's client process
    # Curator pages by the state of their figures: "fresh", "recomputing" (the last figures shown
    # while the worker computes), "computing" (none yet), "not recomputed" (the recompute could
    # not be sent).
    figures: dict[str, int] = field(default_factory=dict)
    statuses_in_order: dict[str, list[int]] = field(default_factory=dict)  # one per value in `ms`

    def add_figures(self, page: bytes) -> None:
        if b'id="figures-computing"' in page:
            state = "computing"
        elif b'id="figures-recomputing"' in page:
            state = "recomputing"
        elif b"could not be recomputed" in page:
            state = "not recomputed"
        else:
            state = "fresh"
        self.figures[state] = self.figures.get(state, 0) + 1

    def add(self, what: str, status: int, ms: float) -> None:
        self.ms.setdefault(what, []).append(ms)
        self.statuses_in_order.setdefault(what, []).append(status)
        counts = self.statuses.setdefault(what, {})
        counts[status] = counts.get(status, 0) + 1


def _curators_and_export(conn, base_url: str, project_id: int, cookie_name: str, cookies: list, token: str):
    """The curators' clients and the export download, in a process of their own (as they are on other
    machines): reading a gigabyte of export in the raters' event loop would delay the raters'
    measured answers. Runs until told to stop on `conn`, then sends its PageStats back."""
    stats = PageStats()

    async def curator(cookie: str) -> None:
        headers = {"Cookie": f"{cookie_name}={cookie}"}
        pages = {
            "dashboard": f"/projects/{project_id}/dashboard/",
            "raters page": f"/projects/{project_id}/raters/",
        }
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=120) as client:
            while True:
                for what, path in pages.items():
                    started = time.perf_counter()
                    response = await client.get(path, headers=headers)
                    stats.add(what, response.status_code, (time.perf_counter() - started) * 1000)
                    stats.add_figures(response.content)
                    await asyncio.sleep(1.0)

    async def exporter() -> None:
        headers = {"Authorization": f"Token {token}"}
        path = f"/api/v1/projects/{project_id}/export/?kind=judgments&format=jsonl"
        async with httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=600) as client:
            while True:
                started = time.perf_counter()
                async with client.stream("GET", path, headers=headers) as response:
                    async for chunk in response.aiter_bytes():
                        stats.export_bytes += len(chunk)
                stats.add("export (whole)", response.status_code, (time.perf_counter() - started) * 1000)
                stats.exports_done += 1

    async def until_stopped() -> None:
        users = [asyncio.create_task(curator(cookie)) for cookie in cookies]
        users.append(asyncio.create_task(exporter()))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # the stop
        for user in users:
            user.cancel()
        for outcome in await asyncio.gather(*users, return_exceptions=True):
            if not isinstance(outcome, asyncio.CancelledError | type(None)):
                print(f"a curator's client failed: {outcome!r}", file=sys.stderr)

    asyncio.run(until_stopped())
    stats.client_cpu = time.process_time()
    conn.send(stats)


def curator_background(*, base_url: str, project_id: int, curator_ids: list[int], export_token: str, stats):
    """Two curators reloading their pages, and an export streaming, in a process of their own
    (_curators_and_export): bench.queue.run_load's `background`. Their figures are added to `stats`."""
    import multiprocessing

    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    cookies = []
    for user in get_user_model().objects.filter(pk__in=curator_ids[:2]):
        client = Client()
        client.force_login(user)
        cookies.append(client.cookies[settings.SESSION_COOKIE_NAME].value)

    async def run(clock: Clock) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=_curators_and_export,
            args=(theirs, base_url, project_id, settings.SESSION_COOKIE_NAME, cookies, export_token),
            daemon=True,
        )
        process.start()
        try:
            await asyncio.Event().wait()  # until the raters are done and this is cancelled
        finally:
            ours.send("stop")
            found: PageStats = ours.recv()
            process.join(timeout=30)
            for what, values in found.ms.items():
                for value, status in zip(values, found.statuses_in_order[what], strict=True):
                    stats.add(what, status, value)
            for state, n in found.figures.items():
                stats.figures[state] = stats.figures.get(state, 0) + n
            stats.export_bytes += found.export_bytes
            stats.exports_done += found.exports_done
            stats.client_cpu += found.client_cpu

    return [run]


def checkpoint() -> None:
    """Write out the seeding's pages now, not during the first runs."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("CHECKPOINT")


def print_rounds(reports: dict, *, kind: str, rounds: int, next_task_ms) -> None:
    """The last seeded project's runs pooled over the rounds, and each round's p99 with the
    curators against the same round's without them."""
    names = [kind, f"{kind}+curators"]
    by_round = {
        name: [reports.get(name if n == 1 else f"{name} ({n})") for n in range(1, rounds + 1)]
        for name in names
    }
    print(f"\n{rounds} rounds, pooled (p50 / p95 / p99 ms), and each round's p99:")
    for name, runs in by_round.items():
        runs = [report for report in runs if report is not None]
        if not runs:
            continue
        pooled = [ms for report in runs for ms in next_task_ms(report)]
        each = " ".join(f"{percentile(next_task_ms(report), 99):.1f}" for report in runs)
        print(
            f"  {name}: {percentile(pooled, 50):.1f} / {percentile(pooled, 95):.1f} / "
            f"{percentile(pooled, 99):.1f}   rounds: {each}"
        )
    pairs = [
        (without, with_)
        for without, with_ in zip(*by_round.values(), strict=True)
        if without is not None and with_ is not None
    ]
    if pairs:
        ratios = sorted(
            percentile(next_task_ms(with_), 99) / percentile(next_task_ms(without), 99)
            for without, with_ in pairs
        )
        print(
            f"  p99 with the curators / without, per round: {' '.join(f'{r:.2f}' for r in ratios)} "
            f"(median {statistics.median(ratios):.2f})"
        )


def curator_env(redis_url: str) -> dict[str, str]:
    """The environment of gunicorn and the background worker in the curators' run: the statistics
    cache shared with the worker, and every project's figures computed by it."""
    return {
        "STATS_CACHE_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "STATS_INLINE_MAX_JUDGMENTS": "0",
    }


def forget_figures(redis_url: str) -> None:
    """Empty the statistics cache and the background queue left in Redis by an earlier run: the
    bench database was reset, and its new projects have the old ones' ids."""
    import redis
    from django.conf import settings

    client = redis.Redis.from_url(redis_url)
    stale = list(client.scan_iter(match="*:stats:*"))
    if stale:
        client.delete(*stale)
    queue = settings.REFINERY_BACKGROUND_QUEUE
    client.delete(queue)
    # A worker stopped mid-task leaves its message unacknowledged; the next worker would be handed
    # it again (a recompute of an old project's figures, at the new project's id). Only this
    # queue's messages are dropped.
    for tag, raw in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def start_background_worker(*, database_url: str, redis_url: str) -> subprocess.Popen:
    """A Celery worker on the background queue alone, one task at a time, in a session of its own;
    it lowers its own priority when it starts (config/celery.py)."""
    env = {
        **os.environ,
        **curator_env(redis_url),
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        "CELERY_TASK_ALWAYS_EAGER": "0",
    }
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "background"]
    command += ["--pool", "solo", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    command += ["--loglevel", "WARNING"]
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)


def wait_for_worker_nice(worker: subprocess.Popen, timeout: float = 120) -> int:
    """The worker's nice value once it lowered its priority (or `timeout` passed)."""
    from django.conf import settings

    deadline = time.monotonic() + timeout
    process = psutil.Process(worker.pid)
    while time.monotonic() < deadline and worker.poll() is None:
        if process.nice() >= settings.REFINERY_BACKGROUND_NICE:
            break
        time.sleep(0.2)
    if worker.poll() is not None:
        raise SystemExit(f"the background worker exited with status {worker.returncode}")
    return process.nice()


def _cpu_seconds(worker: subprocess.Popen) -> float:
    """The worker's CPU-seconds so far (NaN once it is gone)."""
    try:
        times = psutil.Process(worker.pid).cpu_times()
    except psutil.NoSuchProcess:
        return float("nan")
    return times.user + times.system


def wait_for_worker_idle(worker: subprocess.Popen, redis_url: str, timeout: float = 300) -> float:
    """Seconds until the background worker has nothing left to do (its queue empty, its CPU time
    still for two seconds running), or `timeout`: a recompute the curators asked for would
    otherwise run on into the next run."""
    import redis
    from django.conf import settings

    started = time.monotonic()
    client = redis.Redis.from_url(redis_url)
    still, last = 0, _cpu_seconds(worker)
    while time.monotonic() - started < timeout and worker.poll() is None and still < 2:
        time.sleep(1.0)
        now = _cpu_seconds(worker)
        queued = client.llen(settings.REFINERY_BACKGROUND_QUEUE)
        still = still + 1 if now - last < 0.02 and not queued else 0
        last = now
    return time.monotonic() - started


def stop_background_worker(worker: subprocess.Popen) -> float:
    """Stop the worker (a warm shutdown, then SIGKILL); its CPU-seconds."""
    cpu = _cpu_seconds(worker)
    stop_session(worker)
    return cpu


# ---------------------------------------------------------------------------------------------


def hot_updates() -> tuple[int, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'annotation_task'"
        )
        return cursor.fetchone()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--raters", type=int, default=5_000)
    parser.add_argument("--active", type=int, default=500, help="paced raters, each with --history judgments")
    parser.add_argument("--history", type=int, default=2_000)
    parser.add_argument("--history-kind", choices=["open", "queue", "both"], default="open")
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--empty-tasks", type=int, default=20_000, help="tasks of the empty project")
    parser.add_argument("--answers", action="store_true", help="seed answer rows with the judgments")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before the measurement, per run")
    parser.add_argument("--think-mean", type=float, default=5.0)
    parser.add_argument("--with-curators", action="store_true")
    parser.add_argument(
        "--one-request",
        action="store_true",
        help="raters submit with ?next=1, as the rating page does: the next task comes with each "
        "submission, and the submit-and-next latency is the next-task figure",
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="with --with-curators: the shared statistics cache and the broker of the background worker",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="the last seeded project's runs (and with --with-curators, its runs with them) alternate this often",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--keep-database", action="store_true", help="do not drop the bench database at the end"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if urlparse(args.database_url).scheme not in {"postgres", "postgresql"}:
        parser.error("--database-url must be a postgres:// URL")
    if urlparse(args.database_url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        parser.error("the bench measures PostgreSQL's CPU with psutil: it must run on this machine")

    prepare_database(args.database_url)
    from bench.seed import seed_project

    kinds = ["open", "queue"] if args.history_kind == "both" else [args.history_kind]
    seeded = {
        "empty": seed_project(
            name="scale empty", tasks=args.empty_tasks, raters=args.active, overlap=args.overlap
        )
    }
    for kind in kinds:
        print(
            f"seeding {kind}: {args.tasks} tasks, {args.raters} raters, {args.active} with "
            f"{args.history} judgments ...",
            file=sys.stderr,
        )
        seeded[kind] = seed_project(
            name=f"scale {kind}",
            tasks=args.tasks,
            raters=args.raters,
            active=args.active,
            history=args.history,
            history_kind=kind,
            overlap=args.overlap,
            curators=2 if args.with_curators else 0,
            answers=args.answers,
        )
        print(f"  seeded in {seeded[kind].seconds:.0f}s", file=sys.stderr)

    checkpoint()
    runs = [(name, name) for name in seeded]
    if args.with_curators:
        runs.append((f"{kinds[-1]}+curators", kinds[-1]))
    last = [run for run in runs if run[1] == kinds[-1]]
    for round_number in range(2, args.rounds + 1):
        runs += [(f"{run} ({round_number})", kind) for run, kind in last]
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start_gunicorn(
        database_url=args.database_url,
        port=port,
        workers=args.workers,
        threads=args.threads,
        worker_class="gthread" if args.threads > 1 else "sync",
        profile_dir=None,
        env=curator_env(args.redis_url) if args.with_curators else None,
    )
    worker = None
    worker_nice, worker_cpu = None, None
    if args.with_curators:
        forget_figures(args.redis_url)
        worker = start_background_worker(database_url=args.database_url, redis_url=args.redis_url)
    reports: dict[str, ModeReport] = {}
    plans: list[str] = []
    hot: dict[str, tuple[int, int]] = {}
    pages = PageStats()
    try:
        wait_until_ready(base_url, seeded["empty"].rater_tokens[0], server)
        if worker is not None:
            worker_nice = wait_for_worker_nice(worker)
        for run, kind in runs:
            s = seeded[kind]
            if kind != "empty":
                plans.append(
                    f"[{run}, before the run]\n"
                    + queue_plans(project_id=s.project_id, rater_id=s.rater_ids[0])
                )
            background = ()
            if "+curators" in run:
                background = curator_background(
                    base_url=base_url,
                    project_id=s.project_id,
                    curator_ids=s.curator_ids,
                    export_token=s.curator_tokens[-1],
                    stats=pages,
                )
            print(f"running {run}: {s.active or args.active} paced raters ...", file=sys.stderr)
            before = hot_updates()
            mode_args = Namespace(
                duration=args.duration,
                think_mean=args.think_mean,
                warmup=args.warmup,
                tasks=args.tasks,
                overlap=s.overlap,
                seed=args.seed,
            )
            report = run_mode(
                mode="paced-next" if args.one_request else "paced",
                args=mode_args,
                base_url=base_url,
                database_url=args.database_url,
                server=server,
                project_id=s.project_id,
                tokens=s.rater_tokens[: args.active],
                background=background,
            )
            report.load.mode = run
            reports[run] = report
            after = hot_updates()
            hot[run] = (after[0] - before[0], after[1] - before[1])
            if kind != "empty":
                plans.append(
                    f"[{run}, after the run]\n"
                    + queue_plans(project_id=s.project_id, rater_id=s.rater_ids[0])
                )
            if background and worker is not None and (run, kind) != runs[-1]:
                waited = wait_for_worker_idle(worker, args.redis_url)
                print(f"  the background worker was busy for {waited:.0f}s more", file=sys.stderr)
    finally:
        stop_gunicorn(server)
        if worker is not None:
            worker_cpu = stop_background_worker(worker)

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print("\n" + "\n\n".join(plans))
    print_table(
        list(reports.values()),
        header=(
            f"\nRefinery queue bench at scale: {args.tasks} tasks, {args.raters} raters, {args.active} active "
            f"with {args.history} judgments each (empty project: {args.empty_tasks} tasks), paced, think "
            f"time mean {args.think_mean:g}s, {psutil.cpu_count()} CPUs (load average now {load})\n"
        ),
    )
    print("\ntask rows updated during each run (HOT: without new index entries):")
    for run, (updated, hot_updated) in hot.items():
        print(f"  {run}: {updated} updated, {hot_updated} HOT ({hot_updated / max(updated, 1):.0%})")
    if pages.ms:
        print("\ncurators and export during the last run, warm-up included (ms p50 / p95 / max, statuses):")
        for what, values in pages.ms.items():
            print(
                f"  {what}: {len(values)} × {percentile(values, 50):.0f} / {percentile(values, 95):.0f} / "
                f"{max(values):.0f}  {pages.statuses[what]}"
            )
        print(f"  export: {pages.export_bytes / 1e6:.1f} MB streamed, {pages.exports_done} complete")
        print(f"  their clients (one process of the bench, nice 0): {pages.client_cpu:.1f} CPU-s")
        print(f"  curator pages by their figures: {pages.figures}")
        print(f"  background worker (figures): nice {worker_nice}, {worker_cpu:.1f} CPU-s over every run")

    def next_task_ms(report: ModeReport) -> list[float]:
        """How long raters waited for their next task: with --one-request, the submit-and-next
        requests that hand it out (a rater's first lease of the run is a plain next-task call)."""
        return report.load.next_task_ms + (report.load.submit_ms if args.one_request else [])

    empty_p = [percentile(next_task_ms(reports["empty"]), q) for q in (50, 95, 99)]
    what = "submit-and-next" if args.one_request else "next-task"
    print(f"\n{what} p50 / p95 / p99 (ms), against the empty project:")
    print(f"  empty: {empty_p[0]:.1f} / {empty_p[1]:.1f} / {empty_p[2]:.1f}")
    for run, report in reports.items():
        if run == "empty":
            continue
        p = [percentile(next_task_ms(report), q) for q in (50, 95, 99)]
        ratio = p[2] / empty_p[2] if empty_p[2] else float("nan")
        verdict = "meets" if p[2] < TARGET_P99_MS and ratio <= 1.2 else "misses"
        print(
            f"  {run}: {p[0]:.1f} / {p[1]:.1f} / {p[2]:.1f}   p99 ratio {ratio:.2f}   "
            f"({verdict} p99 < {TARGET_P99_MS:.0f} ms and ratio <= 1.2)"
        )
    if args.rounds > 1:
        print_rounds(reports, kind=kinds[-1], rounds=args.rounds, next_task_ms=next_task_ms)

    failed = False
    if not all(report.correctness.ok for report in reports.values()):
        print("\nFAILED: a correctness count is not 0", file=sys.stderr)
        failed = True
    bad = [code for report in reports.values() for (_, code) in report.load.statuses if code >= 500]
    bad += [code for counts in pages.statuses.values() for code in counts if code >= 500]
    if bad:
        print("\nFAILED: the server answered 5xx (its traceback is above)", file=sys.stderr)
        failed = True
    if not args.keep_database:
        drop_database(args.database_url)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
