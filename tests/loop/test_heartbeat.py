"""A step's claim stays alive while a model call runs longer than the stale time, and goes stale once
its worker is gone: then the sweeper re-sends the step and the next delivery takes it over.

The model call is a stand-in that sleeps past the stale time; the heartbeat thread writes through
its own database connection, so the test commits (`transactional_db`).
"""

import time

import pytest

from feedback_loop import services, tasks
from feedback_loop.engine.types import Refinement as EngineRefinement
from feedback_loop.models import Refinement, Round
from tests.loop.conftest import make_feedback

pytestmark = pytest.mark.slow

STALE = 2.0  # seconds without a heartbeat before a claim is a dead worker's


class WorkerDied(BaseException):
    """The worker's process ends in the middle of the model call: no clean-up, no hand-over."""


@pytest.fixture
def sent(monkeypatch):
    sent = []
    monkeypatch.setattr(
        services, "_enqueue_step", lambda round_id, state, **kw: sent.append((round_id, state))
    )
    return sent


def test_a_model_call_longer_than_the_stale_time_keeps_its_claim_until_the_worker_dies(
    transactional_db, project, alice, bob, settings, monkeypatch, sent
):
    settings.LOOP_CLAIM_STALE_SECONDS = STALE
    settings.LOOP_STALL_SECONDS = STALE
    settings.LOOP_HEARTBEAT_SECONDS = STALE / 10
    make_feedback(project, bob, 2)
    round = services.round_start(project=project, user=alice)
    tasks.round_take_feedback_task(round.pk)
    assert Round.objects.get(pk=round.pk).state == "refining"

    seen_while_alive = {}

    def refine_until_the_worker_dies(backend, items, **kwargs):
        time.sleep(3 * STALE)  # one model call, three stale periods long
        seen_while_alive["claimed by another worker"] = services.round_claim(
            round_id=round.pk, state="refining"
        )
        seen_while_alive["re-sent by the sweeper"] = services.rounds_resend_stalled()
        raise WorkerDied()

    monkeypatch.setattr(tasks, "_backend", lambda *args, **kwargs: None)
    monkeypatch.setattr(tasks, "refine", refine_until_the_worker_dies)
    sent.clear()
    with pytest.raises(WorkerDied):
        tasks.round_refine_task(round.pk)
    assert seen_while_alive == {"claimed by another worker": None, "re-sent by the sweeper": []}
    assert sent == []

    # Nothing beats for the dead worker: its claim goes stale, the sweeper sends the step again,
    # and that delivery claims the step and finishes it.
    time.sleep(1.5 * STALE)
    assert services.rounds_resend_stalled() == [round.pk]
    assert sent == [(round.pk, "refining")]
    monkeypatch.setattr(
        tasks, "refine", lambda backend, items, **kwargs: [[EngineRefinement(text="Better.")] for _ in items]
    )
    tasks.round_refine_task(round.pk)
    round.refresh_from_db()
    assert (round.state, round.refinement_count) == ("selecting", 2)
    assert Refinement.objects.filter(round=round).count() == 2
