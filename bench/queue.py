"""Queue benchmark: simulated raters against the app served by gunicorn on PostgreSQL.

    python bench/queue.py [--mode saturation|paced|both|saturation-next|paced-next|compare]
                          [--raters 50] [--paced-raters 200]
                          [--duration 30] [--think-mean 5] [--tasks N] [--overlap 3]
                          [--workers W] [--threads T] [--switch-interval S] [--server-timing]
                          [--database-url postgres://postgres@127.0.0.1:5432/refinery_bench]
                          [--restart-db-at SECONDS [--down-for 2]]

It drops and re-creates the bench database, migrates it, seeds one project per mode (tasks,
raters with API tokens), starts gunicorn on a free loopback port, and runs the raters with
asyncio and a minimal keep-alive HTTP/1.1 client (bench/keepalive.py), cheap in CPU because it
shares the machine with the server it measures:

- saturation: each rater loops next-task → submit with no pause;
- paced: each rater takes a task, thinks for an exponential time (mean --think-mean), submits,
  and takes the next one, as people do;
- saturation-next, paced-next: the same, submitting with `"next": true`, which answers with the
  next lease: one request per judgment instead of two (next-task only for the first task);
- compare: saturation, then saturation-next, against the same server.

It prints judgments per second, next-task and submit latency percentiles (with --server-timing,
gunicorn's own time per request beside them), CPU-seconds per judgment of gunicorn (master and
workers), of the bench database's PostgreSQL backends and of the load generator itself, the time
their threads waited for a core (taken by other processes: on a shared machine that, not the app,
can make the latency), and the correctness counts: over-collected tasks, duplicate (task, rater)
pairs, lost submissions (acknowledged but not in the database) and tasks whose judgment_count
disagrees with their judgments. It exits 1 if any of those is not 0, or if the server answered 5xx.

With --restart-db-at, PostgreSQL is stopped (fast: every session ends) that many seconds into each
measured run and started again --down-for seconds later, on a private cluster the bench makes for
itself (the shared server is never restarted). The raters must see only 503 database_unavailable
answers meanwhile, no reset connection, and the same correctness counts of 0; the bench prints how
long the database was away and when the 503s came.
Everything stays on 127.0.0.1.
"""
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Run as a script, this file's folder comes first on sys.path and the file would shadow the
# standard library's `queue` module (which asyncio imports).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import math
import os
import random
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse, urlunparse

import httpx
import psutil

from bench.keepalive import Connection, Response, TransportError

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/refinery_bench"

# A small project: one likert question with two criteria, and written feedback.
QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 7], "criteria": ["helpful", "accurate"]},
    {"name": "feedback", "kind": "feedback", "min_length": 3},
]
POST = (
    "I moved to a new city for work three months ago and still do not know anyone outside the "
    "office. My colleagues are friendly but everyone goes home straight after work. I tried a "
    "climbing gym once and felt awkward. How do adults actually make friends somewhere new? "
)
SUMMARY = "Someone who moved for work three months ago asks how adults make friends in a new city."
FEEDBACK = "Mention that they already tried a climbing gym and felt awkward; that detail matters for advice."


# ---------------------------------------------------------------------------------------------
# The load: what the simulated raters do and what they saw


@dataclass
class LoadResult:
    mode: str
    raters: int
    elapsed: float = 0.0
    next_task_ms: list[float] = field(default_factory=list)
    submit_ms: list[float] = field(default_factory=list)
    # Judgment ids the server acknowledged (201, or 200 for a retried submit): all must be stored.
    acknowledged: set[int] = field(default_factory=set)
    created: int = 0  # 201 responses
    statuses: Counter = field(default_factory=Counter)  # (endpoint, HTTP status) -> count
    transport_errors: int = 0
    out_of_work: int = 0  # raters told 204: nothing left for them
    # Every 5xx answer: (endpoint, status, the body's "code", or the content type when it is not JSON).
    server_errors: Counter = field(default_factory=Counter)
    server_error_times: list[float] = field(default_factory=list)  # time.monotonic() of each 5xx

    def record_server_error(self, endpoint: str, response: Response) -> None:
        if response.status_code < 500:
            return
        kind = response.headers.get("content-type", "")
        try:
            code = response.json().get("code") if kind.startswith("application/json") else None
        except ValueError:
            code = None
        self.server_errors[endpoint, response.status_code, code or f"not JSON: {kind or 'no type'}"] += 1
        self.server_error_times.append(time.monotonic())

    @property
    def judgments_per_second(self) -> float:
        return self.created / self.elapsed if self.elapsed else 0.0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q / 100 * len(ordered)))) - 1]


def _answers(rng: random.Random) -> dict:
    return {
        "answers": {
            "quality": {"helpful": rng.randint(1, 7), "accurate": rng.randint(1, 7)},
            "feedback": FEEDBACK,
        },
        "time_spent_ms": rng.randint(2000, 60000),
    }


async def _sleep_until(deadline: float, seconds: float) -> bool:
    """Sleep `seconds`, or until the deadline; False when the deadline came first."""
    wake = time.monotonic() + seconds
    if wake >= deadline:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        return False
    await asyncio.sleep(seconds)
    return True


async def _rater(
    client: Connection,
    *,
    token: str,
    project_id: int,
    clock: Clock,
    think_mean: float,
    max_judgments: int | None,
    rng: random.Random,
    result: LoadResult,
    one_request: bool = False,
) -> None:
    headers = {"Authorization": f"Token {token}"}
    next_url = f"/api/v1/projects/{project_id}/next-task/"
    deadline = clock.deadline
    # Paced raters arrive during the warm-up, spread out, and then think before they submit:
    # when the measurement starts each holds a task with an exponential time left to think
    # (memoryless), which is the steady state, without a stampede at the start.
    if think_mean and not await _sleep_until(deadline, rng.uniform(0, clock.warmup)):
        return
    lease_id = None  # a lease handed along with the last submission (one_request)
    while time.monotonic() < deadline:
        if max_judgments is not None and len(result.acknowledged) >= max_judgments:
            return
        if lease_id is None:
            measured = clock.measuring()
            started = time.perf_counter()
            try:
                response = await client.post(next_url, headers=headers)
            except TransportError:
                result.transport_errors += 1
                await _sleep_until(deadline, 0.05)
                continue
            if measured:
                result.next_task_ms.append((time.perf_counter() - started) * 1000)
                result.statuses["next-task", response.status_code] += 1
            if response.status_code == 204:
                result.out_of_work += 1
                return
            if response.status_code != 200:
                result.statuses["next-task", response.status_code] += not measured
                result.record_server_error("next-task", response)
                await _sleep_until(deadline, 0.05)
                continue
            lease_id = response.json()["id"]
        if think_mean and not await _sleep_until(deadline, rng.expovariate(1 / think_mean)):
            return  # the run ended while this rater was thinking: the lease simply stays open
        payload = {**_answers(rng), "next": True} if one_request else _answers(rng)
        submitted, lease_id = lease_id, None
        # A submission whose response was lost is retried: the server answers 200 with the same
        # judgment, so the client still learns its id.
        for _attempt in range(3):
            measured = clock.measuring()
            started = time.perf_counter()
            try:
                response = await client.post(
                    f"/api/v1/leases/{submitted}/submit/", headers=headers, json=payload
                )
            except TransportError:
                result.transport_errors += 1
                continue
            if measured:
                result.submit_ms.append((time.perf_counter() - started) * 1000)
            if measured or response.status_code not in (200, 201):
                result.statuses["submit", response.status_code] += 1
            result.record_server_error("submit", response)
            if response.status_code in (200, 201):
                body = response.json()
                result.acknowledged.add((body["judgment"] if one_request else body)["id"])
                result.created += measured and response.status_code == 201
                if one_request and body["next"] is not None:
                    lease_id = body["next"]["id"]
                elif one_request and body["next_error"] is None:
                    result.out_of_work += 1
                    return
            break


@dataclass
class Clock:
    """A warm-up, not measured, then `duration` seconds measured."""

    warmup: float
    duration: float
    start: float = field(default_factory=time.monotonic)

    @property
    def measure_from(self) -> float:
        return self.start + self.warmup

    @property
    def deadline(self) -> float:
        return self.measure_from + self.duration

    def measuring(self) -> bool:
        return time.monotonic() >= self.measure_from


async def _measure(result: LoadResult, clock: Clock, *, every: float | None, on_start, tick) -> None:
    """Call on_start when the warm-up ends, then tick (and print progress) every few seconds."""
    await asyncio.sleep(max(0.0, clock.measure_from - time.monotonic()))
    if on_start is not None:
        on_start()
    while True:
        await asyncio.sleep(every or 1.0)
        if tick is not None:
            tick()
        if every:
            elapsed = time.monotonic() - clock.measure_from
            print(
                f"[{result.mode}] {min(elapsed, clock.duration):5.1f}/{clock.duration:.0f}s  "
                f"{result.created:6d} judgments  {result.created / elapsed:6.1f}/s  "
                f"next-task p95 {percentile(result.next_task_ms[-2000:], 95):7.1f} ms",
                file=sys.stderr,
                flush=True,
            )


async def run_load(
    *,
    base_url: str,
    project_id: int,
    tokens: list[str],
    mode: str,
    duration: float,
    think_mean: float = 5.0,
    warmup: float = 2.0,
    max_judgments: int | None = None,
    seed: int = 0,
    progress_every: float | None = 2.0,
    on_start=None,
    tick=None,
    background=(),
) -> LoadResult:
    """Run one rater per token: `warmup` seconds unmeasured, then `duration` seconds measured.

    `mode` is "saturation" (no pause between tasks) or "paced" (exponential think time with
    mean `think_mean` seconds between taking a task and submitting it); with "-next" after it,
    each submission asks for the next lease too (one request per judgment). `on_start` is called
    when the measurement starts and `tick` every second or two after (the bench reads CPU
    times there). Latencies and judgment counts cover the measured part; `acknowledged` holds
    every judgment id the server acknowledged, warm-up included. `background`: functions of the
    Clock returning coroutines (other users of the server, say), run alongside the raters and
    cancelled when they are done.
    """
    think = 0.0 if mode.startswith("saturation") else think_mean
    result = LoadResult(mode=mode, raters=len(tokens))
    # One keep-alive connection per rater, as a browser tab keeps one to the server.
    clients = [Connection(base_url, timeout=60.0) for _ in tokens]
    clock = Clock(warmup=warmup, duration=duration)
    measure = asyncio.create_task(_measure(result, clock, every=progress_every, on_start=on_start, tick=tick))
    others = [asyncio.create_task(start(clock)) for start in background]
    try:
        await asyncio.gather(
            *(
                _rater(
                    client,
                    token=token,
                    project_id=project_id,
                    clock=clock,
                    think_mean=think,
                    max_judgments=max_judgments,
                    rng=random.Random(seed * 100_003 + i),
                    result=result,
                    one_request=mode.endswith("-next"),
                )
                for i, (client, token) in enumerate(zip(clients, tokens, strict=True))
            )
        )
    finally:
        measure.cancel()
        for other in others:
            other.cancel()
        for outcome in await asyncio.gather(*others, return_exceptions=True):
            if not isinstance(outcome, asyncio.CancelledError | type(None)):
                print(f"a background task failed: {outcome!r}", file=sys.stderr)
        result.elapsed = max(0.0, time.monotonic() - clock.measure_from)
        await asyncio.gather(*(client.aclose() for client in clients))
    return result


# ---------------------------------------------------------------------------------------------
# The database: create, seed, check (Django is set up in this process for that)


def reset_database(url: str, *, create: bool = True) -> None:
    """Drop (and re-create) the bench database, from the server's `postgres` maintenance database."""
    import psycopg
    from psycopg import sql

    name = urlparse(url).path.lstrip("/")
    if not name.startswith("refinery_bench"):
        raise SystemExit(
            f"refusing to drop database {name!r}: give the bench its own refinery_bench_* database"
        )
    with psycopg.connect(_maintenance_url(url), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if create:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(url: str) -> None:
    """Close this process's connections and drop the bench database."""
    from django.db import connections

    connections.close_all()
    reset_database(url, create=False)
    print(f"dropped {urlparse(url).path.lstrip('/')}", file=sys.stderr)


def prepare_database(url: str, *, reset: bool = True, settings: str = "config.settings", **env: str) -> None:
    """Reset and migrate the bench database (unless `reset` is false: a database a run kept), and
    set Django up on it in this process with `settings` and any further environment `env`."""
    # The app runs as deployed (DEBUG off), which needs a key; the bench's sessions are throwaway.
    os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
    if reset:
        print(f"resetting {urlparse(url).path.lstrip('/')} and migrating ...", file=sys.stderr)
        reset_database(url)
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
            cwd=ROOT,
            env={**os.environ, "DATABASE_URL": url, "DEBUG": "0"},
            check=True,
        )
    os.environ.update(DATABASE_URL=url, DEBUG="0", DJANGO_SETTINGS_MODULE=settings, **env)
    import django

    django.setup()


def _maintenance_url(url: str) -> str:
    return urlunparse(urlparse(url)._replace(path="/postgres", query=""))


def seed(
    *, mode: str, raters: int, tasks: int, overlap: int, using: str = "default"
) -> tuple[int, list[str]]:
    """A project with `tasks` single-output tasks and `raters` raters, in the database `using`;
    returns (project id, tokens)."""
    from django.contrib.auth import get_user_model
    from django.db import connections
    from rest_framework.authtoken.models import Token

    from annotation.models import Membership, Output, Project, Prompt, Task, TaskOutput
    from annotation.questions import validate_questions_config

    project = Project.objects.using(using).create(
        name=f"bench {mode} {time.strftime('%H:%M:%S')}",
        questions=validate_questions_config(QUESTIONS),
        overlap=overlap,
        lease_seconds=600,
    )
    batch = 2000
    prompts = Prompt.objects.using(using).bulk_create(
        (
            Prompt(project=project, external_id=f"{mode}-{i}", text=f"Summarise post {i}.", context=POST)
            for i in range(tasks)
        ),
        batch_size=batch,
    )
    outputs = Output.objects.using(using).bulk_create(
        (Output(prompt=prompt, text=SUMMARY, model_name="bench") for prompt in prompts), batch_size=batch
    )
    task_rows = Task.objects.using(using).bulk_create(
        (Task(project=project, prompt=prompt) for prompt in prompts), batch_size=batch
    )
    TaskOutput.objects.using(using).bulk_create(
        (
            TaskOutput(task=task, output=output, position=0)
            for task, output in zip(task_rows, outputs, strict=True)
        ),
        batch_size=batch,
    )
    User = get_user_model()
    # "!" is an unusable password: the raters only ever use their API tokens.
    users = User.objects.using(using).bulk_create(
        User(username=f"{mode}-rater-{i}", password="!") for i in range(raters)
    )
    tokens = Token.objects.using(using).bulk_create(
        Token(user=user, key=Token.generate_key()) for user in users
    )
    Membership.objects.using(using).bulk_create(Membership(user=user, project=project) for user in users)
    with connections[using].cursor() as cursor:
        cursor.execute("ANALYZE")  # a live database has statistics; give the planner the same
    return project.pk, [token.key for token in tokens]


@dataclass
class Correctness:
    over_collected: int  # tasks with more judgments than the overlap
    duplicates: int  # (task, rater) pairs judged more than once
    lost: int  # acknowledged judgment ids missing from the database
    count_drift: int  # tasks whose judgment_count is not their number of judgments

    @property
    def ok(self) -> bool:
        return not (self.over_collected or self.duplicates or self.lost or self.count_drift)


def check_correctness(*, project_id: int, acknowledged: set[int], using: str = "default") -> Correctness:
    from django.db.models import Count, F

    from annotation.models import Judgment, Project, Task

    overlap = Project.objects.using(using).get(pk=project_id).overlap
    judgments = Judgment.objects.using(using).filter(project_id=project_id, task__is_gold=False)
    over = judgments.values("task").annotate(n=Count("id")).filter(n__gt=overlap).count()
    dups = judgments.values("task", "rater").annotate(n=Count("id")).filter(n__gt=1).count()
    stored = set(Judgment.objects.using(using).filter(project_id=project_id).values_list("pk", flat=True))
    drift = (
        Task.objects.using(using)
        .filter(project_id=project_id)
        .annotate(n=Count("judgments"))
        .exclude(judgment_count=F("n"))
        .count()
    )
    return Correctness(
        over_collected=over, duplicates=dups, lost=len(acknowledged - stored), count_drift=drift
    )


# ---------------------------------------------------------------------------------------------
# The server and the CPU it uses


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_gunicorn(
    *,
    database_url: str,
    port: int,
    workers: int,
    threads: int,
    worker_class: str,
    profile_dir: str | None,
    extra_args: list[str] = (),
    access_log: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """gunicorn with the project's config file (config/gunicorn.conf.py), as deployed.

    `access_log`: a file that gets one line per request, the microseconds gunicorn spent on it
    (read by `server_ms`); `extra_args` go to gunicorn as they are; `env` adds to its environment.
    """
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "0",
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        "--config",
        str(ROOT / "config" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        worker_class,
        "--backlog",
        "2048",
        "--timeout",
        "120",
        "--preload",
        "--log-level",
        "warning",
    ]
    if profile_dir:
        env["BENCH_PROFILE_DIR"] = profile_dir
        command[command.index("--config") + 1] = str(ROOT / "bench" / "gunicorn_profile.py")
    if access_log:
        command += ["--access-logfile", access_log, "--access-logformat", "%(D)s"]
    command += list(extra_args)
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)


def server_ms(access_log: str, offset: int) -> list[float]:
    """The milliseconds gunicorn spent on each request logged after `offset` bytes of its access log.

    gunicorn's clock starts when a worker thread has read the request and stops when the response
    is written: the time a request waited for a thread, or on the client's event loop, is not in it.
    """
    with open(access_log, "rb") as log:
        log.seek(offset)
        return [int(line) / 1000 for line in log.read().split() if line.isdigit()]


def wait_until_ready(base_url: str, token: str, server: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base_url, trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"gunicorn exited with status {server.returncode}")
            try:
                if (
                    client.get("/api/v1/projects/", headers={"Authorization": f"Token {token}"}).status_code
                    == 200
                ):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"gunicorn did not answer within {timeout:.0f}s")


def stop_gunicorn(server: subprocess.Popen) -> None:
    stop_session(server)


def stop_session(process: subprocess.Popen) -> None:
    """Stop a server started in a session of its own: SIGTERM (a warm shutdown), then after 30 s
    SIGKILL to the whole session, its workers too (busy with a long request, say)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _run_queue_wait(pid: int) -> float:
    """Seconds the threads of a process have spent runnable but not running (Linux schedstat;
    0 elsewhere): time lost to other processes on the cores, not to locks or I/O."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                total += int(stat.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9


class CpuMeter:
    """CPU-seconds used by a changing set of processes since `start()`, sampled by `sample()`,
    and the seconds their threads waited for a core (`waited`).

    Processes that appear after the start count in full; the last sample of one that has
    exited is kept.
    """

    def __init__(self, find_pids):
        self.find_pids = find_pids
        self.processes: dict[int, psutil.Process] = {}
        self.baseline: dict[int, float] = {}
        self.latest: dict[int, float] = {}
        self.wait_baseline: dict[int, float] = {}
        self.wait_latest: dict[int, float] = {}

    def _read(self) -> None:
        for pid in self.find_pids():
            if pid not in self.processes:
                try:
                    self.processes[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
        for pid, process in list(self.processes.items()):
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                del self.processes[pid]
                continue
            self.latest[pid] = times.user + times.system
            self.wait_latest[pid] = _run_queue_wait(pid)

    def start(self) -> None:
        self.processes.clear()
        self.latest.clear()
        self.wait_latest.clear()
        self._read()
        self.baseline = dict(self.latest)
        self.wait_baseline = dict(self.wait_latest)

    def sample(self) -> None:
        self._read()

    @property
    def seconds(self) -> float:
        return sum(cpu - self.baseline.get(pid, 0.0) for pid, cpu in self.latest.items())

    @property
    def waited(self) -> float:
        return sum(w - self.wait_baseline.get(pid, 0.0) for pid, w in self.wait_latest.items())


def _niced(pid: int) -> bool:
    try:
        return psutil.Process(pid).nice() > 0
    except psutil.Error:
        return False


def gunicorn_pids(server: subprocess.Popen, *, niced: bool = False):
    """gunicorn's processes (niced=False), or the niced children they started (export downloads)."""

    def find() -> list[int]:
        try:
            master = psutil.Process(server.pid)
            pids = [master.pid] + [child.pid for child in master.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []
        return [pid for pid in pids if _niced(pid) == niced]

    return find


class PostgresBackends:
    """The pids of the server processes on the bench database (client backends, autovacuum)."""

    def __init__(self, database_url: str):
        import psycopg

        self.name = urlparse(database_url).path.lstrip("/")
        self.url = _maintenance_url(database_url)
        self.conn = psycopg.connect(self.url, autocommit=True)

    def __call__(self) -> list[int]:
        import psycopg

        try:
            if self.conn.closed:  # the server restarted (--restart-db-at): connect again
                self.conn = psycopg.connect(self.url, autocommit=True)
            rows = self.conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (self.name,))
        except psycopg.OperationalError:
            return []  # the server is away; its processes of the moment are not counted
        return [pid for (pid,) in rows.fetchall()]

    def niced(self, niced: bool = True):
        """The backends with (or without) a nice value: those of niced processes (config.priority)."""
        return lambda: [pid for pid in self() if _niced(pid) == niced]

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------------------------------------
# One mode, start to end


@dataclass
class ModeReport:
    load: LoadResult
    correctness: Correctness
    cpu: dict[str, float]  # CPU-seconds over the run, by who
    waited: dict[str, float]  # seconds their threads waited for a core (Linux), by who
    machine_busy: float  # CPU-seconds used by the whole machine over the run
    restart: dict[str, float] | None = None  # --restart-db-at: when the database stopped and came back
    server_ms: list[float] | None = None  # --server-timing: gunicorn's own time per request


def restart_summary(report: ModeReport) -> str:
    """The database restart of a run, as seen by the raters."""
    times, load = report.restart, report.load
    if not times or "back" not in times:
        return "the database was not restarted (the run ended first)"
    errors = [t - times["stopping"] for t in load.server_error_times]
    answers = ", ".join(
        f"{e} {code} {kind}: {n}" for (e, code, kind), n in sorted(load.server_errors.items())
    )
    return (
        f"database down {times['back'] - times['stopping']:.2f}s (stop {times['stopped'] - times['stopping']:.2f}s, "
        f"start {times['back'] - times['started']:.2f}s); 5xx answers: {answers or 'none'}"
        + (f" (from {min(errors):+.2f}s to {max(errors):+.2f}s after the stop began)" if errors else "")
        + f"; transport errors {load.transport_errors}"
    )


def run_mode(
    *,
    mode: str,
    args,
    base_url: str,
    database_url: str,
    server: subprocess.Popen,
    project_id: int,
    tokens: list[str],
    background=(),
) -> ModeReport:
    from django.db import connections

    connections.close_all()  # the bench's own connection should not sit among the backends measured
    find_pg = PostgresBackends(database_url)
    meters = {
        "gunicorn": CpuMeter(gunicorn_pids(server)),
        "postgres": CpuMeter(find_pg.niced(False)),
        "client": CpuMeter(lambda: [os.getpid()]),
        # Background work at a lower priority: export children and the backends of niced processes.
        "niced": CpuMeter(lambda: gunicorn_pids(server, niced=True)() + find_pg.niced(True)()),
    }

    def tick() -> None:
        for meter in meters.values():
            meter.sample()

    machine: dict[str, object] = {}

    restart: dict[str, float] = {}
    restarter: threading.Thread | None = None

    def restart_database() -> None:
        time.sleep(args.restart_db_at)
        restart["stopping"] = time.monotonic()
        args.cluster.stop("fast")
        restart["stopped"] = time.monotonic()
        time.sleep(args.down_for)
        restart["started"] = time.monotonic()
        args.cluster.start()
        restart["back"] = time.monotonic()
        print(f"[{mode}] {restart_summary_line(restart)}", file=sys.stderr, flush=True)

    access_log = getattr(args, "access_log", None)

    def on_start() -> None:
        nonlocal restarter
        for meter in meters.values():
            meter.start()
        if access_log:
            machine["access_log_offset"] = os.path.getsize(access_log)
        machine["before"] = psutil.cpu_times()
        if getattr(args, "restart_db_at", None) is not None and restarter is None:
            restarter = threading.Thread(target=restart_database, daemon=True)
            restarter.start()

    load = asyncio.run(
        run_load(
            base_url=base_url,
            project_id=project_id,
            tokens=tokens,
            mode=mode,
            duration=args.duration,
            think_mean=args.think_mean,
            warmup=args.warmup,
            max_judgments=args.tasks * args.overlap,
            seed=args.seed,
            on_start=on_start,
            tick=tick,
            background=background,
        )
    )
    if "before" not in machine:  # the load ended within the warm-up (the queue ran dry)
        on_start()
    if restarter is not None:
        restarter.join()
    tick()
    machine_after = psutil.cpu_times()
    find_pg.close()
    busy = sum(
        getattr(machine_after, f) - getattr(machine["before"], f)
        for f in ("user", "system", "nice", "irq", "softirq", "steal")
        if hasattr(machine_after, f)
    )
    correctness = check_correctness(project_id=project_id, acknowledged=load.acknowledged)
    return ModeReport(
        load=load,
        correctness=correctness,
        cpu={name: meter.seconds for name, meter in meters.items()},
        waited={name: meter.waited for name, meter in meters.items()},
        machine_busy=busy,
        restart=restart or None,
        server_ms=server_ms(access_log, machine["access_log_offset"]) if access_log else None,
    )


def restart_summary_line(restart: dict[str, float]) -> str:
    return f"database stopped (fast) and back after {restart['back'] - restart['stopping']:.2f}s"


def print_table(reports: list[ModeReport], *, header: str) -> None:
    def ms(values: list[float]) -> str:
        return " / ".join(f"{percentile(values, q):.1f}" for q in (50, 95, 99))

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.1f}" if values else "nan"

    def per_judgment(report: ModeReport, who: str) -> str:
        judgments = max(report.load.created, 1)
        return f"{report.cpu[who] / judgments * 1000:.2f} ({report.cpu[who] / report.load.elapsed:.2f})"

    def waited(report: ModeReport) -> str:
        judgments = max(report.load.created, 1)
        return " / ".join(f"{report.waited[who] / judgments * 1000:.2f}" for who in ("gunicorn", "postgres"))

    def others(report: ModeReport) -> str:
        statuses = {
            f"{endpoint} {code}": n
            for (endpoint, code), n in sorted(report.load.statuses.items())
            if (endpoint, code) not in {("next-task", 200), ("submit", 201), ("next-task", 204)}
        }
        return ", ".join(f"{k}: {n}" for k, n in statuses.items()) or "none"

    rows = [
        ("raters", lambda r: str(r.load.raters)),
        ("run time (s)", lambda r: f"{r.load.elapsed:.1f}"),
        ("judgments (201)", lambda r: str(r.load.created)),
        ("judgments / s", lambda r: f"{r.load.judgments_per_second:.1f}"),
        ("next-task p50 / p95 / p99 (ms)", lambda r: ms(r.load.next_task_ms)),
        ("submit p50 / p95 / p99 (ms)", lambda r: ms(r.load.submit_ms)),
        *(
            [
                (
                    "in gunicorn p50 / p95 / p99 (mean) ms, all",
                    lambda r: f"{ms(r.server_ms)} ({mean(r.server_ms)})",
                )
            ]
            if any(r.server_ms is not None for r in reports)
            else []
        ),
        ("CPU-ms per judgment (cores): gunicorn", lambda r: per_judgment(r, "gunicorn")),
        ("CPU-ms per judgment (cores): postgres", lambda r: per_judgment(r, "postgres")),
        ("CPU-ms per judgment (cores): load gen.", lambda r: per_judgment(r, "client")),
        *(
            [("CPU-ms per judgment (cores): niced work", lambda r: per_judgment(r, "niced"))]
            if any(r.cpu.get("niced") for r in reports)
            else []
        ),
        ("waiting for a core, ms per judgment: gunicorn / postgres", waited),
        ("cores busy, all processes on the machine", lambda r: f"{r.machine_busy / r.load.elapsed:.2f}"),
        ("raters who ran out of tasks (204)", lambda r: str(r.load.out_of_work)),
        ("other responses", others),
        ("transport errors", lambda r: str(r.load.transport_errors)),
        ("over-collected tasks", lambda r: str(r.correctness.over_collected)),
        ("duplicate (task, rater) pairs", lambda r: str(r.correctness.duplicates)),
        ("lost submissions", lambda r: str(r.correctness.lost)),
        ("judgment_count drift", lambda r: str(r.correctness.count_drift)),
    ]
    cells = [[label, *(fmt(r) for r in reports)] for label, fmt in rows]
    titles = ["", *(r.load.mode for r in reports)]
    widths = [max(len(row[i]) for row in [titles, *cells]) for i in range(len(titles))]
    print(header)
    for row in [titles, *cells]:
        print(
            "  ".join(
                [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))]
            )
        )


MODES = ["saturation", "paced", "saturation-next", "paced-next"]
MODE_SETS = {"both": ["saturation", "paced"], "compare": ["saturation", "saturation-next"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode", choices=[*MODE_SETS, *(m for m in MODES if m not in MODE_SETS)], default="both"
    )
    parser.add_argument("--raters", type=int, default=50, help="raters in saturation mode")
    parser.add_argument("--paced-raters", type=int, default=200, help="raters in paced mode")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per mode")
    parser.add_argument("--think-mean", type=float, default=5.0, help="mean think time in paced mode (s)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds of load before the measurement starts, per mode"
    )
    parser.add_argument(
        "--tasks", type=int, default=10_000, help="tasks per mode (the queue must not run dry)"
    )
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (gthread when > 1)")
    parser.add_argument("--worker-class", default=None, help="gunicorn worker class (default: by --threads)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", metavar="DIR", help="write a cProfile file per gunicorn worker here")
    parser.add_argument(
        "--server-timing",
        action="store_true",
        help="log gunicorn's time per request and print its percentiles beside the raters' latencies",
    )
    parser.add_argument(
        "--switch-interval",
        type=float,
        metavar="SECONDS",
        help="Python's switch interval in the gunicorn workers (GUNICORN_SWITCH_INTERVAL; "
        "default: config/gunicorn.conf.py's)",
    )
    parser.add_argument(
        "--gunicorn-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more gunicorn command-line argument (repeat it: --gunicorn-arg=--keep-alive --gunicorn-arg=5)",
    )
    parser.add_argument(
        "--restart-db-at",
        type=float,
        metavar="SECONDS",
        help="stop PostgreSQL (fast) this many seconds into each measured run and start it again "
        "--down-for seconds later; the bench then runs on a private cluster of its own (initdb on a "
        "free port, as the postgres user when run as root), never on --database-url's server. "
        "503 database_unavailable answers are expected then; any other 5xx fails the run",
    )
    parser.add_argument("--down-for", type=float, default=2.0, help="seconds the database stays down")
    args = parser.parse_args(argv)
    if urlparse(args.database_url).scheme not in {"postgres", "postgresql"}:
        parser.error("--database-url must be a postgres:// URL")
    if urlparse(args.database_url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        parser.error("the bench measures PostgreSQL's CPU with psutil: it must run on this machine")
    worker_class = args.worker_class or ("gthread" if args.threads > 1 else "sync")
    modes = MODE_SETS.get(args.mode, [args.mode])
    if args.restart_db_at is None:
        return _run(args, modes, worker_class)
    from bench.private_postgres import PrivatePostgres

    args.cluster = PrivatePostgres.create()
    args.database_url = args.cluster.url(urlparse(args.database_url).path.lstrip("/") or "refinery_bench")
    print(f"private PostgreSQL cluster on port {args.cluster.port}", file=sys.stderr)
    try:
        return _run(args, modes, worker_class)
    finally:
        from django.db import connections

        connections.close_all()
        args.cluster.close()


def _run(args, modes: list[str], worker_class: str) -> int:

    prepare_database(args.database_url)
    seeded = {}
    for mode in modes:
        raters = args.raters if mode.startswith("saturation") else args.paced_raters
        seeded[mode] = seed(mode=mode, raters=raters, tasks=args.tasks, overlap=args.overlap)
        print(f"seeded {mode}: {args.tasks} tasks, {raters} raters, overlap {args.overlap}", file=sys.stderr)

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    logs = tempfile.TemporaryDirectory(prefix="bench-queue-")
    args.access_log = os.path.join(logs.name, "access.log") if args.server_timing else None
    server = start_gunicorn(
        database_url=args.database_url,
        port=port,
        workers=args.workers,
        threads=args.threads,
        worker_class=worker_class,
        profile_dir=args.profile,
        extra_args=args.gunicorn_arg,
        access_log=args.access_log,
        env={} if args.switch_interval is None else {"GUNICORN_SWITCH_INTERVAL": str(args.switch_interval)},
    )
    reports = []
    try:
        wait_until_ready(base_url, seeded[modes[0]][1][0], server)
        for mode in modes:
            project_id, tokens = seeded[mode]
            print(f"running {mode}: {len(tokens)} raters for {args.duration:.0f}s ...", file=sys.stderr)
            reports.append(
                run_mode(
                    mode=mode,
                    args=args,
                    base_url=base_url,
                    database_url=args.database_url,
                    server=server,
                    project_id=project_id,
                    tokens=tokens,
                )
            )
    finally:
        stop_gunicorn(server)
        logs.cleanup()

    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = (
        f"\nRefinery queue bench: PostgreSQL {pg_version}, gunicorn {worker_class} "
        f"{args.workers} worker(s) × {args.threads} thread(s), {psutil.cpu_count()} CPUs "
        f"(load average now {load}), overlap {args.overlap}, {args.tasks} tasks per mode, "
        f"think time mean {args.think_mean:g}s (paced)"
        + (f", switch interval {args.switch_interval:g}s" if args.switch_interval is not None else "")
        + (f", gunicorn {' '.join(args.gunicorn_arg)}" if args.gunicorn_arg else "")
        + "\n"
    )
    print_table(reports, header=header)
    failed = False
    if args.restart_db_at is not None:
        print()
        for report in reports:
            print(f"{report.load.mode}: {restart_summary(report)}")
    if not all(report.correctness.ok for report in reports):
        print("\nFAILED: a correctness count is not 0", file=sys.stderr)
        failed = True
    expected = (503, "database_unavailable") if args.restart_db_at is not None else None
    if any((code, kind) != expected for report in reports for (_, code, kind) in report.load.server_errors):
        print("\nFAILED: the server answered 5xx (its traceback is above)", file=sys.stderr)
        failed = True
    if args.restart_db_at is not None and any(report.load.transport_errors for report in reports):
        print("\nFAILED: connections were reset across the database restart", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
