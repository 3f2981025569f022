"""The loop's periodic tasks (celery beat): the sweeper re-sends the step of a round whose message
was lost, and the auto-start starts a round once a project has gathered enough new accepted
feedback. Called here as plain functions; tests/loop/test_worker_crashes.py runs them under beat."""

from datetime import timedelta

import pytest
from django.utils import timezone

from config.celery import app
from feedback_loop import selectors, services, tasks
from feedback_loop.models import Refinement, Round
from tests.loop.conftest import make_feedback


@pytest.fixture
def sent(monkeypatch):
    """The steps the services send to the workers (here at once, not once their transaction commits)."""
    sent = []
    monkeypatch.setattr(
        services, "_enqueue_step", lambda round_id, state, **kw: sent.append((round_id, state))
    )
    return sent


def _age(round, seconds, **fields):
    Round.objects.filter(pk=round.pk).update(updated_at=timezone.now() - timedelta(seconds=seconds), **fields)


def test_beat_runs_the_sweeper_and_the_auto_start(settings):
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled == {
        "feedback_loop.sweep_rounds",
        "feedback_loop.auto_start_rounds",
        "feedback_loop.update_win_rates",
    }
    assert scheduled <= set(app.tasks)  # names the workers know


def test_the_sweeper_resends_the_step_of_a_round_left_unclaimed_once_per_stall_period(
    project, alice, settings, sent
):
    settings.LOOP_STALL_SECONDS = 60
    round = services.round_start(project=project, user=alice)
    Round.objects.filter(pk=round.pk).update(state=Round.State.TRAINING)
    sent.clear()
    assert services.rounds_resend_stalled() == []  # just handed on: its message is on its way
    _age(round, 61)
    assert services.rounds_resend_stalled() == [round.pk]
    assert services.rounds_resend_stalled() == []  # not again before another stall period
    assert sent == [(round.pk, "training")]


def test_the_sweeper_resends_a_step_whose_workers_claim_went_stale_not_a_live_one(
    project, alice, settings, sent
):
    settings.LOOP_STALL_SECONDS = 60
    settings.LOOP_CLAIM_STALE_SECONDS = 30
    round = services.round_start(project=project, user=alice)
    assert services.round_claim(round_id=round.pk, state="pending")
    sent.clear()
    # A long step: the round was not touched for a while, but its worker's heartbeat is live.
    _age(round, 61, heartbeat_at=timezone.now() - timedelta(seconds=10))
    assert services.rounds_resend_stalled() == []
    _age(round, 61, heartbeat_at=timezone.now() - timedelta(seconds=31))  # the worker died
    assert services.rounds_resend_stalled() == [round.pk]
    assert sent == [(round.pk, "pending")]


def test_the_sweeper_leaves_finished_rounds_alone(project, alice, settings, sent):
    settings.LOOP_STALL_SECONDS = 60
    round = services.round_start(project=project, user=alice)
    for state in Round.TERMINAL:
        _age(round, 3600, state=state)
        assert services.rounds_resend_stalled() == []


def test_a_resent_step_is_done_by_the_task_as_any_delivery(project, alice, bob, settings, sent):
    """The sweeper's message runs the step: the round moves on (and a duplicate does nothing)."""
    settings.LOOP_STALL_SECONDS = 60
    make_feedback(project, bob, 2)
    round = services.round_start(project=project, user=alice)
    _age(round, 61)
    tasks.rounds_sweep_task()
    tasks.round_take_feedback_task(round.pk)
    tasks.round_take_feedback_task(round.pk)  # the lost message after all
    round.refresh_from_db()
    assert (round.state, round.feedback_count) == ("refining", 2)
    assert sent == [(round.pk, "pending"), (round.pk, "pending"), (round.pk, "refining")]


def test_auto_start_waits_for_the_threshold_of_new_accepted_feedback(project, alice, bob, sent):
    loop = selectors.loop_config_of(project)
    loop.auto_start_threshold = 3
    loop.save()
    make_feedback(project, bob, 2, status="accepted")
    make_feedback(project, bob, 2, prefix="pending")  # not accepted yet: does not count
    assert tasks.rounds_auto_start_task() == []
    [_third] = make_feedback(project, bob, 1, prefix="third", status="accepted")
    [round_id] = tasks.rounds_auto_start_task()
    round = Round.objects.get(pk=round_id)
    assert (round.number, round.state, round.started_by) == (1, "pending", None)
    assert round.reason == "automatic: 3 new accepted feedback judgments (threshold 3)"
    assert sent == [(round.pk, "pending")]
    assert tasks.rounds_auto_start_task() == []  # one round at a time


def test_auto_start_counts_only_feedback_no_round_took_up(project, alice, bob, sent):
    loop = selectors.loop_config_of(project)
    loop.auto_start_threshold = 2
    loop.save()
    used = make_feedback(project, bob, 2, status="accepted")
    round = services.round_start(project=project, user=alice)
    for judgment in used:
        Refinement.objects.create(round=round, judgment=judgment, text="Better.")
    Round.objects.filter(pk=round.pk).update(state=Round.State.DONE)
    make_feedback(project, bob, 1, prefix="new", status="accepted")
    assert tasks.rounds_auto_start_task() == []
    make_feedback(project, bob, 1, prefix="newer", status="accepted")
    [round_id] = tasks.rounds_auto_start_task()
    assert Round.objects.get(pk=round_id).number == 2


def test_a_project_without_a_threshold_never_starts_on_its_own(project, bob, sent):
    assert selectors.loop_config_of(project).auto_start_threshold == 0
    make_feedback(project, bob, 3, status="accepted")
    assert tasks.rounds_auto_start_task() == []
    assert not Round.objects.exists()
