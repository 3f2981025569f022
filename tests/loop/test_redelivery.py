"""A step whose worker died is delivered again: it re-claims the round once the dead worker's
claim is stale and finishes the step without writing anything twice."""

from datetime import timedelta

import pytest
from django.utils import timezone

from feedback_loop import services, tasks
from feedback_loop.models import Refinement, Round
from tests.loop.conftest import make_feedback

pytestmark = pytest.mark.slow


def test_a_redelivered_refine_step_after_a_crash_writes_no_refinement_twice(
    project, alice, bob, loop_config, monkeypatch
):
    make_feedback(project, bob, 2)
    round = services.round_start(project=project, user=alice)  # `db`: the on-commit sends never fire
    tasks.round_take_feedback_task(round.pk)
    round.refresh_from_db()
    assert round.state == "refining" and len(round.judgment_ids) == 2

    # The first worker records its refinements, then dies before handing the round on.
    token = services.round_claim(round_id=round.pk, state="refining")
    with monkeypatch.context() as patched:
        patched.setattr(services, "round_advance", lambda **kwargs: None)
        tasks._refine(round, token)
    written = list(Refinement.objects.filter(round=round).values_list("pk", "judgment_id", "sample_index"))
    assert written

    # Delivered again at once: the claim is live, so the step waits for it to go stale.
    sent = []
    monkeypatch.setattr(tasks, "enqueue_step", lambda *args, **kwargs: sent.append((args, kwargs)))
    tasks.round_refine_task(round.pk)
    assert sent == [((round.pk, "refining"), {"countdown": services.claim_stale_seconds()})]
    assert Round.objects.get(pk=round.pk).state == "refining"

    stale = timezone.now() - timedelta(seconds=services.claim_stale_seconds() + 1)
    Round.objects.filter(pk=round.pk).update(heartbeat_at=stale)
    tasks.round_refine_task(round.pk)
    round.refresh_from_db()
    assert round.state == "selecting"
    assert (
        list(Refinement.objects.filter(round=round).values_list("pk", "judgment_id", "sample_index"))
        == written
    )
    assert round.refinement_count == len(written)


def test_a_step_delivered_after_the_round_moved_on_does_nothing(project, alice, monkeypatch):
    round = services.round_start(project=project, user=alice)
    Round.objects.filter(pk=round.pk).update(state=Round.State.SELECTING)
    sent = []
    monkeypatch.setattr(tasks, "enqueue_step", lambda *args, **kwargs: sent.append(args))
    tasks.round_refine_task(round.pk)  # an old message for a step already done
    round.refresh_from_db()
    assert (round.state, round.attempts, sent) == ("selecting", 0, [])


def test_a_refinement_holding_a_nul_character_is_stored_not_failed_on(project, alice, bob, monkeypatch):
    from feedback_loop.engine.types import Refinement as EngineRefinement

    make_feedback(project, bob, 1)
    round = services.round_start(project=project, user=alice)
    tasks.round_take_feedback_task(round.pk)
    monkeypatch.setattr(tasks, "_backend", lambda *args, **kwargs: None)
    monkeypatch.setattr(
        tasks,
        "refine",
        lambda backend, items, **kwargs: [[EngineRefinement(text="Better\x00 summary.")] for _ in items],
    )
    tasks.round_refine_task(round.pk)
    round.refresh_from_db()
    assert round.state == "selecting", round.error
    assert Refinement.objects.get(round=round).text == "Better\ufffd summary."
