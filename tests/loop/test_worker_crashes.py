"""The loop survives its workers and its broker dying: real Celery worker and beat processes, Redis
and the PostgreSQL test database (committed with `transactional_db`).

The round is started by beat's auto-start (the project gathered its threshold of accepted
feedback), every step is slowed by LOOP_TEST_STEP_DELAY seconds at each heartbeat so that the test
can catch it in the middle, and claims go stale after a few seconds so that the sweeper, also run
by beat, re-sends a step whose worker or message is gone.
"""

import itertools
import re
import time

import pytest
from django.db.models import Count

from annotation.models import Output, Prompt, Task, Webhook, WebhookDelivery
from annotation.services.leases import lease_acquire
from feedback_loop.models import Adapter, Refinement, Round
from tests.loop.conftest import POSTS, make_feedback
from tests.loop.processes import (
    WarmStarter,
    celery_beat,
    celery_worker,
    free_port,
    redis_server,
    tail,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

STALE = 3  # seconds without a heartbeat before a claim is the claim of a dead worker
LOOP_ENV = {
    "LOOP_CLAIM_STALE_SECONDS": str(STALE),
    "LOOP_STALL_SECONDS": str(STALE),
    "LOOP_SWEEP_SECONDS": "1",
    "LOOP_TEST_STEP_DELAY": "1.5",
    "CELERY_VISIBILITY_TIMEOUT": "10",
    "REFINERY_WEBHOOKS_MAX_ATTEMPTS": "1",
}
# Celery's line for a task that returned, in the worker's log.
TRAIN_ENDED = re.compile(r"Task feedback_loop\.train\[[^\]]+\] (succeeded|raised|retry)")
STEPS = ["pending", "refining", "selecting", "training", "evaluating", "generating", "done"]


@pytest.fixture
def redis_db_14():
    import redis

    url = "redis://127.0.0.1:6379/14"
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def round_to_come(transactional_db, project, bob, loop_config):
    """Three accepted feedbacks (one with a rater's fix) and an auto-start threshold of three; a
    webhook that records every state change of the round (the proof that each happened once)."""
    loop_config.auto_start_threshold = 3
    loop_config.promotion_tolerance = 100.0  # promote whatever the loss: generation must run
    loop_config.save()
    make_feedback(project, bob, 2, status="accepted")
    make_feedback(project, bob, 1, prefix="fixed", status="accepted", fix="Fix the heating now.")
    Prompt.objects.create(
        project=project,
        external_id="eval-0",
        text="Summarise this post.",
        context=POSTS[0],
        split="eval",
        gold="The landlord must fix the heating.",
    )
    Task.objects.update(status=Task.Status.COMPLETE)  # the queue holds only what the round adds
    Webhook.objects.create(
        project=project, url="http://127.0.0.1:9/hook", events=[Webhook.Event.ROUND_STATE_CHANGED]
    )
    return project


def _trainings_ended(log):
    return len(TRAIN_ENDED.findall(log.read_text(errors="replace")))


def _round(project):
    return Round.objects.filter(project=project).first()


def _assert_finished_once(project, rater):
    round = Round.objects.get(project=project)
    assert round.state == "done" and round.promoted is True, (round.state, round.error)
    assert round.reason.startswith("automatic"), round.reason
    changes = [
        (d.payload["from"], d.payload["to"])
        for d in WebhookDelivery.objects.filter(event=Webhook.Event.ROUND_STATE_CHANGED).order_by("id")
    ]
    assert changes == [("", "pending"), *itertools.pairwise(STEPS)]
    # Two samples for each of the two feedbacks, and the rater's fix.
    assert Refinement.objects.filter(round=round).count() == round.refinement_count == 5
    assert Refinement.objects.filter(round=round, selected=True).count() == round.selected_count == 3
    assert Adapter.objects.filter(project=project).count() == 1
    outputs = Output.objects.filter(round_number=round.number)
    assert outputs.count() == outputs.values("generation__key").distinct().count() > 0
    tasks = Task.objects.filter(project=project, round_number=round.number)
    assert tasks.count() == round.new_task_count > 0
    assert not tasks.values("prompt", "kind").annotate(n=Count("id")).filter(n__gt=1).exists()
    lease = lease_acquire(project=project, rater=rater)
    assert lease is not None and lease.task.round_number == round.number
    return round


def test_a_worker_killed_in_the_middle_of_each_step_leaves_a_round_that_finishes_once(
    round_to_come, redis_db_14, artifacts, tmp_path, bob
):
    project = round_to_come
    env = worker_env(broker=redis_db_14, artifacts=artifacts, **LOOP_ENV)
    logs = [tmp_path / "beat.log", tmp_path / "starter.log"] + [
        tmp_path / f"worker-{i}.log" for i in range(6)
    ]
    beat = celery_beat(env, logs[0], tmp_path / "beat-schedule")
    # The first worker is the demo's command as is; the ones after it are forked with the model
    # libraries already imported, so that each replacement does not spend seconds importing them.
    starter = WarmStarter(env, logs[1])
    workers = []
    try:
        for number, step in enumerate(["refining", "selecting", "training", "evaluating", "generating"]):
            log = logs[number + 2]
            workers.append(celery_worker(env, log) if number == 0 else starter.celery_worker(log))

            def in_the_middle(step=step):
                round = _round(project)
                if round is None or round.state != step or not round.claim_token:
                    return False
                if step == "training":  # a few steps in, with a checkpoint on disk
                    return (round.progress.get("step") or 0) >= 2
                return round.progress.get("stage") == step

            wait_for(in_the_middle, timeout=90, what=f"the round to be {step}")
            workers[-1].kill()
            assert _round(project).state == step  # killed in the middle: the step is not done
        workers.append(starter.celery_worker(logs[-1]))
        wait_for(lambda: _round(project).state in Round.TERMINAL, timeout=90, what="the round to finish")
        time.sleep(2 * STALE)  # a late duplicate of any step would act by now
        _assert_finished_once(project, bob)
        assert Round.objects.filter(project=project).count() == 1
    except BaseException:
        print(tail(*logs))
        raise
    finally:
        for process in [beat, *workers]:
            if process.alive():
                process.stop()
        starter.close()


def test_redis_stopped_and_restarted_empty_during_a_round_loses_nothing(
    round_to_come, artifacts, tmp_path, bob
):
    project = round_to_come
    port = free_port()
    logs = [tmp_path / "redis.log", tmp_path / "beat.log", tmp_path / "worker.log"]
    # The environment first: on another database than PostgreSQL it skips the test, which must not
    # leave a Redis behind.
    env = worker_env(broker=f"redis://127.0.0.1:{port}/0", artifacts=artifacts, **LOOP_ENV)
    redis = redis_server(port, tmp_path / "redis", logs[0])
    beat = celery_beat(env, logs[1], tmp_path / "beat-schedule")
    worker = celery_worker(env, logs[2])
    try:
        wait_for(
            lambda: (r := _round(project)) is not None and r.state == "training" and r.progress.get("step"),
            timeout=90,
            what="the round to train",
        )
        trainings_ended = _trainings_ended(logs[2])
        redis.stop()
        # The worker finishes its step with the broker down: the next step's message cannot be sent.
        wait_for(lambda: _round(project).state != "training", timeout=60, what="training to end")
        wait_for(
            lambda: _trainings_ended(logs[2]) > trainings_ended,
            timeout=60,
            what="the worker to end its training task (and its hand-over) without the broker",
        )
        redis = redis_server(port, tmp_path / "redis", logs[0])  # a fresh one: every queued message is gone
        wait_for(lambda: _round(project).state in Round.TERMINAL, timeout=120, what="the round to finish")
        time.sleep(2 * STALE)
        _assert_finished_once(project, bob)
        assert worker.alive()
    except BaseException:
        print(tail(*logs))
        raise
    finally:
        for process in (beat, worker, redis):
            if process.alive():
                process.stop()
