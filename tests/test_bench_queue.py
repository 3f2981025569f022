"""bench/queue.py's load and checks, for two seconds against a live server (no timing asserted)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from bench.queue import check_correctness, run_load, seed


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("mode", ["saturation", "paced", "saturation-next"])
def test_bench_load_runs_and_finds_nothing_over_collected_duplicated_or_lost(live_server, mode):
    project_id, tokens = seed(mode=mode, raters=3, tasks=20, overlap=2)
    # A thread of its own: the browser tests' Playwright may hold this thread's event loop.
    load = ThreadPoolExecutor(max_workers=1).submit(
        asyncio.run,
        run_load(
            base_url=live_server.url,
            project_id=project_id,
            tokens=tokens,
            mode=mode,
            duration=2.0,
            think_mean=0.05,
            warmup=0.2,
            progress_every=None,
        ),
    )
    result = load.result(timeout=120)
    assert result.acknowledged, "no judgment was acknowledged"
    # With -next, next-task is asked only for a rater's first task, during the warm-up.
    assert result.submit_ms and (result.next_task_ms or mode.endswith("-next"))
    assert not [status for status in result.statuses if status[1] >= 500]
    correctness = check_correctness(project_id=project_id, acknowledged=result.acknowledged)
    assert correctness.ok, correctness
