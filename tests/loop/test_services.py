"""The round's state machine and the data it takes: services and selectors, no model involved.

Steps are not run here: with the `db` fixture a transaction's on-commit hooks (which send the
next step's task) never fire unless a test captures them.
"""

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from annotation.models import Judgment
from feedback_loop import selectors, services
from feedback_loop.models import Adapter, LoopConfig, Refinement, Round
from tests.loop.conftest import make_feedback


def _start(project, user=None, **config):
    loop = selectors.loop_config_of(project)
    for name, value in config.items():
        setattr(loop, name, value)
    loop.save()
    return services.round_start(project=project, user=user, reason="test")


def _finish_round(round, judgments, *, selected=True):
    """Pretend the round ran: one selected refinement per judgment, then done."""
    for judgment in judgments:
        Refinement.objects.create(
            round=round, judgment=judgment, text=f"Better {judgment.pk}.", selected=selected
        )
    Round.objects.filter(pk=round.pk).update(state=Round.State.DONE)
    round.refresh_from_db()
    return round


def test_a_round_starts_pending_with_a_frozen_snapshot_of_the_settings(project, alice, settings, tmp_path):
    settings.REFINERY_ARTIFACTS_DIR = tmp_path
    round = _start(project, alice, n_refinements=3)
    assert (round.number, round.state, round.started_by, round.reason) == (1, "pending", alice, "test")
    assert round.config["n_refinements"] == 3
    assert round.config["base_model"] == str(tmp_path / "tiny-model")  # blank: the tiny local model
    LoopConfig.objects.filter(project=project).update(n_refinements=5)
    round.refresh_from_db()
    assert round.config["n_refinements"] == 3


def test_starting_a_round_sends_its_first_step_once_committed(
    project, alice, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        _start(project, alice)
    assert len(callbacks) == 1


def test_a_second_start_is_refused_while_a_round_runs(project, alice):
    _start(project, alice)
    with pytest.raises(services.RoundInProgress) as raised:
        services.round_start(project=project, user=alice, reason="again")
    assert raised.value.code == "round_in_progress"
    assert Round.objects.filter(project=project).count() == 1


def test_the_database_holds_one_active_round_per_project(project):
    Round.objects.create(project=project, number=1, state=Round.State.TRAINING)
    with pytest.raises(IntegrityError), transaction.atomic():
        Round.objects.create(project=project, number=2, state=Round.State.PENDING)
    Round.objects.create(project=project, number=3, state=Round.State.DONE)  # finished rounds do not count


def test_a_new_round_may_start_once_the_last_one_is_done_and_numbers_go_on(project, alice):
    first = _start(project, alice)
    Round.objects.filter(pk=first.pk).update(state=Round.State.DONE)
    assert _start(project, alice).number == 2


def test_rejected_and_excluded_judgments_never_enter_a_round(project, bob):
    pending, accepted, _rejected, _excluded = (
        make_feedback(project, bob, 1, prefix=status, status=status)[0]
        for status in ("pending", "accepted", "rejected", "excluded")
    )
    found = set(selectors.feedback_judgments(project, require_acceptance=False))
    assert found == {pending, accepted}
    assert set(selectors.feedback_judgments(project, require_acceptance=True)) == {accepted}


def test_judgments_without_feedback_or_fix_are_not_refined(project, bob):
    from tests.factories import make_tasks, write_judgment

    [task] = make_tasks(project, 1, prefix="scores-only")
    write_judgment(task, bob, {"quality": ("likert", {"helpful": 3, "accurate": 4})})
    assert list(selectors.feedback_judgments(project, require_acceptance=False)) == []


def test_feedback_rows_carry_the_prompt_with_its_context_the_output_and_the_fix(project, bob):
    [judgment] = make_feedback(project, bob, 1, fix="The heating is broken; winter is near.")
    [row] = selectors.feedback_rows([judgment.pk])
    assert row.prompt.startswith("My landlord has not fixed the heating") and row.prompt.endswith(
        "Summarise this post."
    )
    assert row.output == "The post 0 is about a thing."
    assert row.feedback == "The summary should mention the main problem."
    assert row.fix == "The heating is broken; winter is near."
    assert row.kind == "text" and row.tests == ""


def test_code_prompts_bring_their_unit_tests(project, bob):
    project.kind = "code"
    project.save()
    [judgment] = make_feedback(project, bob, 1)
    judgment.task.prompt.data = {"tests": "assert add(1, 2) == 3", "entry_point": "add"}
    judgment.task.prompt.save()
    [row] = selectors.feedback_rows([judgment.pk])
    assert (row.kind, row.tests, row.entry_point) == ("code", "assert add(1, 2) == 3", "add")


def test_a_judgment_refined_by_one_round_is_not_taken_up_by_the_next(project, alice, bob):
    old = make_feedback(project, bob, 2, prefix="old")
    first = _finish_round(_start(project, alice), old)
    new = make_feedback(project, bob, 1, prefix="new")
    assert list(selectors.feedback_judgments(project, require_acceptance=False)) == new
    # ... but a cancelled round gives its judgments back.
    Round.objects.filter(pk=first.pk).update(state=Round.State.CANCELLED)
    assert list(selectors.feedback_judgments(project, require_acceptance=False)) == [*old, *new]


@pytest.mark.parametrize(
    ("mode", "trains_on_the_first_rounds_data"),
    [("cumulative-from-base", True), ("continue-from-parent", False)],
)
def test_earlier_rounds_data_is_trained_on_again_only_in_cumulative_mode(
    project, alice, bob, mode, trains_on_the_first_rounds_data
):
    old = make_feedback(project, bob, 2, prefix="old")
    _finish_round(_start(project, alice, data_mode=mode), old)
    new = make_feedback(project, bob, 1, prefix="new")
    second = _finish_round(_start(project, alice, data_mode=mode), new)
    trained = {row.judgment_id for row in selectors.training_rows(second)}
    expected = {j.pk for j in new} | ({j.pk for j in old} if trains_on_the_first_rounds_data else set())
    assert trained == expected


def test_a_judgment_rejected_after_its_round_drops_out_of_later_training_sets(project, alice, bob):
    old = make_feedback(project, bob, 2, prefix="old")
    _finish_round(_start(project, alice), old)
    Judgment.objects.filter(pk=old[0].pk).update(status=Judgment.Status.REJECTED)
    second = _finish_round(_start(project, alice), make_feedback(project, bob, 1, prefix="new"))
    assert old[0].pk not in {row.judgment_id for row in selectors.training_rows(second)}
    assert old[1].pk in {row.judgment_id for row in selectors.training_rows(second)}


def test_unselected_refinements_are_not_trained_on(project, alice, bob):
    round = _finish_round(_start(project, alice), make_feedback(project, bob, 2), selected=False)
    assert selectors.training_rows(round) == []


def test_recording_refinements_twice_writes_them_once(project, alice, bob):
    [judgment] = make_feedback(project, bob, 1)
    round = _start(project, alice)
    refinements = [
        services.RefinementIn(judgment_id=judgment.pk, text=f"r{i}", sample_index=i) for i in range(3)
    ]
    services.refinements_record(round=round, refinements=refinements)
    assert services.refinements_record(round=round, refinements=refinements) == 3


def test_a_claimed_step_cannot_be_claimed_again_until_its_heartbeat_is_stale(project, alice):
    round = _start(project, alice)
    token = services.round_claim(round_id=round.pk, state="pending")
    assert token is not None
    assert services.round_claim(round_id=round.pk, state="pending") is None
    assert services.round_claim(round_id=round.pk, state="refining") is None  # not its state
    stale = timezone.now() - timedelta(seconds=services.claim_stale_seconds() + 1)
    Round.objects.filter(pk=round.pk).update(heartbeat_at=stale)
    second = services.round_claim(round_id=round.pk, state="pending")
    assert second not in (None, token)
    # The worker that lost its claim can no longer move the round on.
    assert services.round_advance(round_id=round.pk, token=token) is False
    assert services.round_advance(round_id=round.pk, token=second) is True
    round.refresh_from_db()
    assert (round.state, round.claim_token, round.attempts) == ("refining", "", 0)


def test_a_failing_step_is_retried_then_fails_the_round_which_retry_resumes_there(
    project, alice, django_capture_on_commit_callbacks
):
    round = _start(project, alice, stage_retries=1)
    Round.objects.filter(pk=round.pk).update(state=Round.State.SELECTING)
    token = services.round_claim(round_id=round.pk, state="selecting")
    with django_capture_on_commit_callbacks() as sent:
        services.round_fail(round_id=round.pk, token=token, error="boom")
    round.refresh_from_db()
    assert (round.state, round.error, len(sent)) == ("selecting", "boom", 1)  # sent again: one retry left

    token = services.round_claim(round_id=round.pk, state="selecting")
    with django_capture_on_commit_callbacks() as sent:
        services.round_fail(round_id=round.pk, token=token, error="boom again")
    round.refresh_from_db()
    assert (round.state, round.failed_state, round.error, len(sent)) == (
        "failed",
        "selecting",
        "boom again",
        0,
    )
    assert round.finished_at is not None

    with django_capture_on_commit_callbacks() as sent:
        services.round_retry(round=round)
    round.refresh_from_db()
    assert (round.state, round.failed_state, round.error, round.attempts, len(sent)) == (
        "selecting",
        "",
        "",
        0,
        1,
    )


def test_only_a_failed_round_can_be_retried(project, alice):
    round = _start(project, alice)
    with pytest.raises(services.RoundStateError):
        services.round_retry(round=round)


def test_retrying_a_failed_round_is_refused_while_a_newer_round_runs(project, alice):
    round = _start(project, alice)
    Round.objects.filter(pk=round.pk).update(state=Round.State.FAILED, failed_state=Round.State.TRAINING)
    _start(project, alice)
    with pytest.raises(services.RoundInProgress):
        services.round_retry(round=round)


def test_a_cancelled_round_stops_its_worker_at_the_next_hand_over(project, alice):
    round = _start(project, alice)
    token = services.round_claim(round_id=round.pk, state="pending")
    services.round_cancel(round=round)
    assert services.round_heartbeat(round_id=round.pk, token=token) is False
    assert services.round_advance(round_id=round.pk, token=token) is False
    round.refresh_from_db()
    assert round.state == "cancelled" and round.finished_at is not None
    with pytest.raises(services.RoundStateError):
        services.round_cancel(round=round)
    _start(project, alice)  # the project is free again


@pytest.mark.parametrize(
    ("new", "old", "tolerance", "promoted"),
    [(1.0, 1.2, 0.0, True), (1.2, 1.2, 0.0, True), (1.3, 1.2, 0.0, False), (1.3, 1.2, 0.15, True)],
)
def test_promotion_allows_a_held_out_loss_worse_by_the_tolerance_at_most(new, old, tolerance, promoted):
    decided, _ = services.promotion_decision(
        {"held_out_loss": new, "baseline_held_out_loss": old}, tolerance=tolerance
    )
    assert decided is promoted


def _trained_round(project, alice, bob, tmp_path):
    round = _start(project, alice)
    Round.objects.filter(pk=round.pk).update(state=Round.State.EVALUATING)
    [judgment] = make_feedback(project, bob, 1)
    services.adapter_register(
        round=round,
        path=str(tmp_path),
        checksum="0" * 64,
        training_metrics={},
        dataset_sha256="1" * 64,
        refinement_ids=[7],
        judgment_ids=[judgment.pk],
        parent=None,
    )
    return round


def test_a_regressing_adapter_is_not_promoted_and_the_round_ends_done_with_the_reason(
    project, alice, bob, tmp_path
):
    round = _trained_round(project, alice, bob, tmp_path)
    token = services.round_claim(round_id=round.pk, state="evaluating")
    evaluation = {"held_out_loss": 3.0, "baseline_held_out_loss": 2.0}
    assert services.adapter_promote(round_id=round.pk, token=token, evaluation=evaluation)
    round.refresh_from_db()
    assert (round.state, round.promoted) == ("done", False)
    assert "worse" in round.promotion_reason
    assert Adapter.objects.get(round=round).is_active is False


def test_a_promoted_adapter_becomes_the_only_active_one_and_generation_follows(project, alice, bob, tmp_path):
    earlier = Round.objects.create(project=project, number=99, state=Round.State.DONE)
    old = Adapter.objects.create(
        project=project, round=earlier, base_model="m", path="p", checksum="c", is_active=True
    )
    round = _trained_round(project, alice, bob, tmp_path)
    token = services.round_claim(round_id=round.pk, state="evaluating")
    evaluation = {"held_out_loss": 1.0, "baseline_held_out_loss": 2.0}
    assert services.adapter_promote(round_id=round.pk, token=token, evaluation=evaluation)
    round.refresh_from_db()
    old.refresh_from_db()
    assert (round.state, round.promoted, old.is_active) == ("generating", True, False)
    assert selectors.active_adapter(project).round == round
    assert Adapter.objects.get(round=round).evaluation == evaluation


def test_new_feedback_counts_what_no_round_took_up(project, alice, bob):
    old = make_feedback(project, bob, 2, prefix="old")
    assert selectors.new_feedback_count(project) == 2
    _finish_round(_start(project, alice), old)
    make_feedback(project, bob, 1, prefix="new")
    assert selectors.new_feedback_count(project) == 1
