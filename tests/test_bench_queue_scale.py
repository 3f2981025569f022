"""bench/seed.py and bench/queue_scale.py at toy size, against a live server (no timing asserted)."""

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client

from bench.queue import check_correctness, run_load
from bench.queue_scale import PageStats, curator_background, print_rounds, queue_plans
from bench.seed import seed_project

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="bench.seed writes with PostgreSQL's generate_series"
)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("history_kind", ["queue", "open"])
def test_seeded_history_agrees_with_itself(history_kind):
    from annotation.models import Answer, Judgment, Lease, Task

    seeded = seed_project(
        name=f"toy {history_kind}",
        tasks=50,
        raters=8,
        active=4,
        history=9,
        history_kind=history_kind,
        overlap=3,
        curators=1,
        answers=True,
    )
    assert len(seeded.rater_tokens) == 8 and len(seeded.curator_tokens) == 1
    judgments = Judgment.objects.filter(project_id=seeded.project_id)
    assert judgments.count() == 36 == Lease.objects.filter(state=Lease.State.SUBMITTED).count()
    for rater in seeded.rater_ids[:4]:
        assert judgments.filter(rater_id=rater).count() == 9
    assert Answer.objects.filter(judgment__project_id=seeded.project_id).count() == 72
    assert check_correctness(project_id=seeded.project_id, acknowledged=set()).ok
    complete = Task.objects.filter(project_id=seeded.project_id, status=Task.Status.COMPLETE).count()
    # queue: 36 judgments fill the first 12 tasks; open: 4 raters on the same 9 tasks, still open.
    assert complete == (12 if history_kind == "queue" else 0)
    if history_kind == "open":
        assert seeded.overlap == 7
        assert set(judgments.values_list("task__judgment_count", flat=True)) == {4}


@pytest.mark.django_db(transaction=True)
def test_scale_bench_runs_paced_raters_with_history_curators_and_an_export(live_server):
    seeded = seed_project(
        name="toy scale",
        tasks=60,
        raters=8,
        active=4,
        history=10,
        history_kind="open",
        curators=2,
        answers=True,
    )
    plans = queue_plans(project_id=seeded.project_id, rater_id=seeded.rater_ids[0])
    assert plans.count("Execution Time") == 4 and "none recorded" in plans
    # The dashboard's first request in a process imports what it needs, for seconds: not in the run.
    client = Client()
    client.force_login(get_user_model().objects.get(pk=seeded.curator_ids[0]))
    assert client.get(f"/projects/{seeded.project_id}/dashboard/").status_code == 200
    stats = PageStats()
    background = curator_background(
        base_url=live_server.url,
        project_id=seeded.project_id,
        curator_ids=seeded.curator_ids,
        export_token=seeded.curator_tokens[-1],
        stats=stats,
    )
    load = ThreadPoolExecutor(max_workers=1).submit(
        asyncio.run,
        run_load(
            base_url=live_server.url,
            project_id=seeded.project_id,
            tokens=seeded.active_tokens,
            mode="paced",
            duration=2.0,
            think_mean=0.05,
            warmup=0.2,
            progress_every=None,
            background=background,
        ),
    )
    result = load.result(timeout=120)
    assert result.acknowledged and result.next_task_ms
    assert not [status for status in result.statuses if status[1] >= 500]
    assert check_correctness(project_id=seeded.project_id, acknowledged=result.acknowledged).ok
    assert stats.statuses["dashboard"] == {200: sum(stats.statuses["dashboard"].values())}
    assert set(stats.statuses.get("raters page", {200: 1})) == {200}
    assert stats.exports_done >= 1 and stats.statuses["export (whole)"] == {200: stats.exports_done}
    assert "recorded at" in queue_plans(project_id=seeded.project_id, rater_id=seeded.rater_ids[0])


def test_rounds_pool_each_run_and_pair_each_round(capsys):
    """--rounds: each run's latencies pooled over the rounds, and the p99 with the curators divided
    by the same round's without them (a machine's drift weighs on both)."""
    reports = {
        "open": [10.0] * 98 + [20.0] * 2,
        "open+curators": [10.0] * 98 + [30.0] * 2,
        "open (2)": [10.0] * 98 + [40.0] * 2,
        "open+curators (2)": [10.0] * 98 + [40.0] * 2,
        "empty": [1.0],
    }
    print_rounds(reports, kind="open", rounds=2, next_task_ms=lambda latencies: latencies)
    out = capsys.readouterr().out
    assert "open: 10.0 / 10.0 / 20.0   rounds: 20.0 40.0" in out
    assert "open+curators: 10.0 / 10.0 / 30.0   rounds: 30.0 40.0" in out  # nearest rank: 198th of 200
    assert "per round: 1.00 1.50 (median 1.25)" in out
