"""CPU of one submit-and-next request, measured in one process, without concurrency.

    python bench/request_cpu.py [--requests 500] [--warmup 50] [--tasks 1000] [--profile FILE.prof]
                                [--compare-prepared [--block 50]]
                                [--database-url postgres://postgres@127.0.0.1:5432/refinery_bench]

It drops and re-creates the bench database (as bench/queue.py does), seeds one project, and has
one rater call `POST /api/v1/leases/{id}/submit/?next=1` in a loop through the WSGI application
(DEBUG off, the deployed middleware and settings), each call submitting the lease the previous
one handed out. With --compare-prepared, the measured requests alternate, in blocks of
--block, between the hot statements prepared (DATABASE_PREPARED_STATEMENTS, the default) and not,
and both are printed with their ratio: a baseline measured in the same process, on the same
connection, as the machine's speed drifts. Nothing runs in parallel, so the figures do not depend on the machine's load
as the saturation bench's do: the CPU time of this process (thread CPU time) per request, the
CPU time of its PostgreSQL backend per request, and the SQL statements per request. With
--profile, a cProfile of the measured requests (CPU time) is written to FILE.

For a figure that does not depend on the machine at all, count instructions: run it twice under
`valgrind --tool=callgrind` with the same --tasks and different --requests; the difference of
the two totals over the difference of the requests is the instructions per request.
"""
# ruff: noqa: E402

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# As in bench/queue.py: this folder must not shadow the standard library's `queue` module.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse
import cProfile
import io
import json
import statistics
import time
from collections import Counter
from urllib.parse import urlparse

import psutil

from bench.queue import DEFAULT_DATABASE_URL, FEEDBACK, prepare_database, seed


def _call(application, *, method: str, path: str, query: str, token: str, body: bytes) -> tuple[int, bytes]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_AUTHORIZATION": f"Token {token}",
        "HTTP_ACCEPT": "*/*",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    statuses = []

    def start_response(status, headers, exc_info=None):
        statuses.append(int(status.split()[0]))

    response = application(environ, start_response)
    try:
        content = b"".join(response)
    finally:
        getattr(response, "close", lambda: None)()
    return statuses[0], content


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="measured submit-and-next requests")
    parser.add_argument("--warmup", type=int, default=50, help="requests before the measurement")
    parser.add_argument("--tasks", type=int, default=1000, help="tasks seeded (more than the requests)")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument(
        "--profile", metavar="FILE", help="write a cProfile (CPU time) of the measured requests"
    )
    parser.add_argument(
        "--compare-prepared",
        action="store_true",
        help="alternate between prepared statements on and off, and print both",
    )
    parser.add_argument("--block", type=int, default=50, help="with --compare-prepared: requests per block")
    args = parser.parse_args(argv)
    if urlparse(args.database_url).scheme not in {"postgres", "postgresql"}:
        parser.error("--database-url must be a postgres:// URL")
    if urlparse(args.database_url).hostname not in {"127.0.0.1", "localhost", "::1"}:
        parser.error("the backend's CPU is read with psutil: PostgreSQL must run on this machine")

    prepare_database(args.database_url, LOG_LEVEL="WARNING")
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.db import connection

    total = args.warmup + args.requests
    if total >= args.tasks:
        parser.error("--tasks must be more than --warmup plus --requests")
    project_id, tokens = seed(mode="request-cpu", raters=1, tasks=args.tasks, overlap=3)
    token = tokens[0]
    application = get_wsgi_application()

    status, content = _call(
        application,
        method="POST",
        path=f"/api/v1/projects/{project_id}/next-task/",
        query="",
        token=token,
        body=b"",
    )
    if status != 200:
        raise SystemExit(f"next-task answered {status}: {content[:300]!r}")
    lease_id = json.loads(content)["id"]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        (backend_pid,) = cursor.fetchone()
    backend = psutil.Process(backend_pid)

    statements: Counter = Counter()
    counting = {"on": False}

    def count(execute, sql, params, many, context):
        if counting["on"]:
            statements[" ".join(sql.split())[:90]] += 1
        return execute(sql, params, many, context)

    answers = {"quality": {"helpful": 5, "accurate": 4}, "feedback": FEEDBACK}
    profile = cProfile.Profile(time.thread_time) if args.profile else None
    modes = ["prepared", "not prepared"] if args.compare_prepared else ["as configured"]
    cpu_ms: dict[str, list[float]] = {mode: [] for mode in modes}
    backend_ms: dict[str, float] = dict.fromkeys(modes, 0.0)

    def backend_cpu_ms() -> float:
        times = backend.cpu_times()
        return (times.user + times.system) * 1000

    mode, backend_start = modes[0], 0.0
    with connection.execute_wrapper(count):
        for i in range(total):
            if i >= args.warmup and (i - args.warmup) % args.block == 0:
                if i > args.warmup:
                    backend_ms[mode] += backend_cpu_ms() - backend_start
                mode = modes[(i - args.warmup) // args.block % len(modes)]
                if args.compare_prepared:
                    settings.DATABASE_PREPARED_STATEMENTS = mode == "prepared"
                backend_start = backend_cpu_ms()
            if i == args.warmup:
                counting["on"] = True
                if profile:
                    profile.enable()
            body = json.dumps({"answers": answers, "time_spent_ms": 1000 + i}).encode()
            started = time.thread_time()
            status, content = _call(
                application,
                method="POST",
                path=f"/api/v1/leases/{lease_id}/submit/",
                query="next=1",
                token=token,
                body=body,
            )
            if i >= args.warmup:
                cpu_ms[mode].append((time.thread_time() - started) * 1000)
            if status != 201:
                raise SystemExit(f"submit answered {status}: {content[:300]!r}")
            lease_id = json.loads(content)["next"]["id"]
    backend_ms[mode] += backend_cpu_ms() - backend_start
    if profile:
        profile.disable()
        profile.dump_stats(args.profile)
    connection.close()

    n = args.requests
    print(f"\nsubmit-and-next, {n} requests after {args.warmup} unmeasured, one process, no concurrency")
    for mode in modes:
        web = cpu_ms[mode]
        if args.compare_prepared:
            print(f"{mode} ({len(web)} requests, in blocks of {args.block}):")
        print(
            f"  web process CPU per request (ms): mean {statistics.fmean(web):.3f}, median {statistics.median(web):.3f}"
        )
        print(f"  PostgreSQL backend CPU per request (ms): {backend_ms[mode] / len(web):.3f}")
    if args.compare_prepared:
        web = {mode: statistics.fmean(cpu_ms[mode]) for mode in modes}
        database = {mode: backend_ms[mode] / len(cpu_ms[mode]) for mode in modes}
        print(
            "prepared / not prepared: web {:.2f}, PostgreSQL {:.2f}, both {:.2f}".format(
                web["prepared"] / web["not prepared"],
                database["prepared"] / database["not prepared"],
                (web["prepared"] + database["prepared"]) / (web["not prepared"] + database["not prepared"]),
            )
        )
    print(f"SQL statements per request: {sum(statements.values()) / n:g}")
    for sql, k in statements.most_common():
        print(f"  {k / n:5g}  {sql}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
