"""PostgreSQL restarted under load: gunicorn keeps its workers, answers clean 503s while the database
is away, and loses or duplicates no acknowledged judgment.

A private PostgreSQL cluster (bench.private_postgres, on a free port; the shared server is never
touched) is migrated and seeded; gunicorn serves it (bench.queue.start_gunicorn) while raters loop
next-task -> submit (bench.queue.run_load). Mid-run the cluster is stopped in fast mode (every
session ends at once), kept down for two seconds and started again.
"""

import asyncio
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest
from django.conf import settings
from django.db import connection, connections

from bench.private_postgres import PrivatePostgres, Unavailable
from bench.queue import (
    check_correctness,
    free_port,
    gunicorn_pids,
    run_load,
    seed,
    start_gunicorn,
    stop_gunicorn,
    wait_until_ready,
)
from config.env import database_from_url

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ALIAS = "restarted"
DATABASE = "refinery_faults_restart"
RATERS = 6
LOAD_SECONDS = 12.0  # the restart (about 3 s down) comes at 3 s: raters work on well after it
RESTART_AFTER = 3.0  # seconds into the load
DOWN_FOR = 2.0


@pytest.fixture
def cluster():
    if connection.vendor != "postgresql":
        pytest.skip("restarts a PostgreSQL cluster of its own: the PostgreSQL lane runs it")
    try:
        cluster = PrivatePostgres.create()
    except Unavailable as error:
        pytest.skip(f"no private PostgreSQL cluster here: {error}")
    try:
        cluster.create_database(DATABASE)
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def restarted_db(cluster, django_db_blocker):
    """The cluster's database, migrated, as the connection alias ALIAS of this process."""
    url = cluster.url(DATABASE)
    env = {**os.environ, "DATABASE_URL": url, "DEBUG": "1"}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=settings.BASE_DIR,
        env=env,
        check=True,
    )
    configured = connections.configure_settings(
        {"default": {}, ALIAS: database_from_url(url, base_dir=settings.BASE_DIR)}
    )
    connections.settings[ALIAS] = configured[ALIAS]
    with django_db_blocker.unblock():
        try:
            yield url
        finally:
            connections[ALIAS].close()
            del connections[ALIAS]
            del connections.settings[ALIAS]


def test_postgresql_restart_under_load_gives_clean_503s_and_loses_nothing(cluster, restarted_db, monkeypatch):
    from annotation.models import Judgment

    monkeypatch.setenv("SECRET_KEY", "restart-test-" + "k" * 50)
    # Raters ask again every 50 ms while the database is away: no 429s among the answers counted.
    monkeypatch.setenv("API_THROTTLE_NEXT_TASK", "1000/s")
    project_id, tokens = seed(mode="saturation", raters=RATERS, tasks=400, overlap=2, using=ALIAS)
    connections[ALIAS].close()  # the test's own session is not one the restart should find

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = start_gunicorn(
        database_url=restarted_db, port=port, workers=2, threads=4, worker_class="gthread", profile_dir=None
    )
    try:
        wait_until_ready(base_url, tokens[0], server)
        workers_before = sorted(gunicorn_pids(server)())

        times: dict[str, float] = {}
        started = threading.Event()

        def restart() -> None:
            started.wait()
            time.sleep(RESTART_AFTER)
            times["stopping"] = time.monotonic()
            times["stopped"], times["back"] = cluster.restart(down_for=DOWN_FOR)
            times["back_wall"] = time.time()

        restarter = threading.Thread(target=restart)
        restarter.start()
        load = ThreadPoolExecutor(max_workers=1).submit(
            asyncio.run,
            run_load(
                base_url=base_url,
                project_id=project_id,
                tokens=tokens,
                mode="saturation",
                duration=LOAD_SECONDS,
                warmup=0.0,
                progress_every=None,
                on_start=started.set,
            ),
        )
        result = load.result(timeout=300)
        restarter.join(timeout=60)
        assert "back" in times, "the load ended before the restart did"

        # Every thread of every worker serves again: a burst of requests, all answered.
        with httpx.Client(base_url=base_url, trust_env=False, timeout=30) as client:
            after = [
                client.get("/api/v1/projects/", headers={"Authorization": f"Token {token}"}).status_code
                for token in tokens * 5
            ]
        workers_after = sorted(gunicorn_pids(server)())
    finally:
        stop_gunicorn(server)

    gap = [t for t in result.server_error_times if t >= times["stopping"]]
    print(
        f"\nrestart: down {times['back'] - times['stopping']:.2f}s (stop {times['stopped'] - times['stopping']:.2f}s"
        f" + {DOWN_FOR:.0f}s + start {times['back'] - times['stopped'] - DOWN_FOR:.2f}s); "
        f"{len(result.acknowledged)} judgments acknowledged; 5xx answers: {dict(result.server_errors)}; "
        f"first/last 5xx at {min(gap, default=0) - times['stopping']:+.2f}s / "
        f"{max(gap, default=0) - times['stopping']:+.2f}s from the stop; "
        f"transport errors {result.transport_errors}"
    )
    # The database's absence was seen, and only as clean 503s with the JSON error body.
    assert result.server_errors, "no request met the restart: the test proved nothing"
    assert set(result.server_errors) <= {
        ("next-task", 503, "database_unavailable"),
        ("submit", 503, "database_unavailable"),
    }, result.server_errors
    assert len(result.server_error_times) == len(gap), "a 5xx before the database was stopped"
    assert result.transport_errors == 0, "a connection was reset: a worker died or hung up"
    # The same workers served before and after: none was restarted or replaced.
    assert workers_after == workers_before
    assert after == [200] * len(after)
    # Raters went on judging once the database was back, and nothing acknowledged was lost or doubled.
    back = datetime.fromtimestamp(times["back_wall"], tz=UTC)
    assert Judgment.objects.using(ALIAS).filter(project_id=project_id, created_at__gt=back).exists()
    correctness = check_correctness(project_id=project_id, acknowledged=result.acknowledged, using=ALIAS)
    assert correctness.ok, correctness
