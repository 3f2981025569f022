"""Everything the loop writes: rounds and their steps, refinements, adapters.

How a step runs (see feedback_loop.tasks): a worker claims the round with a conditional update
(`round_claim`: the round is in the step's state and nobody holds a live claim), does the work,
and hands the round on with another conditional update that names its claim token
(`round_advance`, `adapter_promote`, `round_outputs_enqueue`). If the round was cancelled or
claimed by someone else meanwhile, that update matches no row and the step's result is dropped.

A worker that dies mid-step leaves its claim behind; the claim's heartbeat goes stale after
LOOP_CLAIM_STALE_SECONDS and a re-delivered task may claim the step again. A step's message can
also be lost for good (a broker restarted empty, a send that failed while it was down): the
sweeper (`rounds_resend_stalled`, run by celery beat) sends the step again of every round that
has sat without a live claim for LOOP_STALL_SECONDS. Every step's writes are idempotent (unique
refinements, the adapter one-to-one with its round, outputs keyed), so doing a step twice writes
nothing twice, and only the claim holder moves the round on, so it moves on once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import F, Max, Q
from django.utils import timezone

from annotation.errors import QueueError
from annotation.models import Project, Webhook
from annotation.services.tasks import NewTask, outputs_enqueue
from annotation.webhooks import webhook_event_emit
from feedback_loop.models import Adapter, Refinement, Round
from feedback_loop.selectors import (
    active_round,
    auto_start_candidates,
    loop_config_of,
    new_accepted_feedback_count,
    stalled_rounds,
)


def claim_stale_seconds() -> float:
    """A claim whose heartbeat is older than this belongs to a worker that is gone."""
    return float(settings.LOOP_CLAIM_STALE_SECONDS)


class LoopError(QueueError, code="conflict"):
    """A loop operation that cannot go ahead: a domain error whose `code` annotation/api/errors.py
    maps to its HTTP status."""


class RoundInProgress(LoopError, code="round_in_progress"):
    """A second start while the project's round runs."""


class RoundStateError(LoopError, code="round_state"):
    """A resume or cancel the round's state does not allow."""


def _enqueue_step(round_id: int, state: str, *, countdown: float | None = None) -> None:
    """Send the task of the round's step once the transaction that set the state commits."""
    from feedback_loop.tasks import enqueue_step  # tasks import services: import here, not at the top

    transaction.on_commit(lambda: enqueue_step(round_id, state, countdown=countdown))


# ---------------------------------------------------------------- starting, retrying, cancelling


def round_start(*, project: Project, user: AbstractBaseUser | None, reason: str = "") -> Round:
    """Start the project's next round with its current loop settings. One round at a time."""
    config = loop_config_of(project)
    with transaction.atomic():
        # Starts of one project queue up here; the partial unique index backs this up.
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if active_round(project) is not None:
            raise RoundInProgress("a round of this project is already running")
        number = (Round.objects.filter(project=project).aggregate(n=Max("number"))["n"] or 0) + 1
        try:
            with transaction.atomic():
                round = Round.objects.create(
                    project=project,
                    number=number,
                    state=Round.State.PENDING,
                    config=config.snapshot(),
                    started_by=user if user is not None and user.is_authenticated else None,
                    reason=reason,
                    started_at=timezone.now(),
                    progress={"stage": Round.State.PENDING},
                )
        except IntegrityError as error:
            raise RoundInProgress("a round of this project is already running") from error
        _state_changed(round, "", round.state)
        _enqueue_step(round.pk, round.state)
    return round


def round_retry(*, round: Round) -> Round:
    """Resume a failed round from the step that failed."""
    with transaction.atomic():
        round = Round.objects.select_for_update().get(pk=round.pk)
        if round.state != Round.State.FAILED or not round.failed_state:
            raise RoundStateError(f"only a failed round can be retried (this one is {round.state})")
        round.state, round.failed_state = round.failed_state, ""
        round.attempts, round.error, round.finished_at = 0, "", None
        round.claim_token, round.heartbeat_at = "", None
        try:
            with transaction.atomic():
                round.save()
        except IntegrityError as error:
            raise RoundInProgress("another round of this project is running") from error
        _state_changed(round, Round.State.FAILED, round.state)
        _enqueue_step(round.pk, round.state)
    return round


def round_cancel(*, round: Round) -> Round:
    """Stop a round. A worker in the middle of a step finds out at its next heartbeat or hand-over."""
    with transaction.atomic():
        round = Round.objects.select_for_update().get(pk=round.pk)
        if round.state in (Round.State.DONE, Round.State.CANCELLED):
            raise RoundStateError(f"a {round.state} round cannot be cancelled")
        old = round.state
        round.state = Round.State.CANCELLED
        round.claim_token, round.finished_at = "", timezone.now()
        round.save()
        _state_changed(round, old, round.state)
    return round


def rounds_auto_start() -> list[Round]:
    """Start a round for each project whose new accepted feedback reached its auto-start threshold
    (the beat task's work). Judgments a round took up are not new; a project with a round running
    (or one just started by a curator) is skipped."""
    started = []
    for config in auto_start_candidates():
        count = new_accepted_feedback_count(config.project)
        if count < config.auto_start_threshold:
            continue
        try:
            started.append(
                round_start(
                    project=config.project,
                    user=None,
                    reason=f"automatic: {count} new accepted feedback judgments "
                    f"(threshold {config.auto_start_threshold})",
                )
            )
        except RoundInProgress:
            continue
    return started


def rounds_resend_stalled() -> list[int]:
    """Send again the step of every round that sat LOOP_STALL_SECONDS with no live claim: its
    message was lost, or its worker died and the broker has not handed the message on yet. The
    round's `updated_at` is stamped so a step that only waits in a long queue is re-sent once per
    LOOP_STALL_SECONDS at most; a duplicate message finds the step claimed or done and does nothing."""
    now = timezone.now()
    resent = []
    for round_id, state, updated_at in stalled_rounds(
        now=now,
        stall_seconds=float(settings.LOOP_STALL_SECONDS),
        claim_stale_seconds=claim_stale_seconds(),
    ).values_list("pk", "state", "updated_at"):
        with transaction.atomic():
            # Only if nobody touched the round since it was read (a worker claiming it meanwhile).
            if Round.objects.filter(pk=round_id, state=state, updated_at=updated_at).update(updated_at=now):
                _enqueue_step(round_id, state)
                resent.append(round_id)
    return resent


# ---------------------------------------------------------------- claiming and handing on


def round_claim(*, round_id: int, state: str) -> str | None:
    """Claim the round's step `state` for this worker: its claim token, or None when the round is in
    another state or a live worker holds the step."""
    token = uuid.uuid4().hex
    now = timezone.now()
    claimed = (
        Round.objects.filter(pk=round_id, state=state)
        .filter(Q(claim_token="") | Q(heartbeat_at__lt=now - timedelta(seconds=claim_stale_seconds())))
        .update(claim_token=token, heartbeat_at=now, attempts=F("attempts") + 1, updated_at=now)
    )
    return token if claimed else None


def round_heartbeat(*, round_id: int, token: str, progress: dict | None = None) -> bool:
    """Keep the claim alive (and say how far the step got). False: the claim is lost (cancelled)."""
    now = timezone.now()
    fields = {"heartbeat_at": now, "updated_at": now}
    if progress is not None:
        fields["progress"] = progress
    return bool(Round.objects.filter(pk=round_id, claim_token=token).update(**fields))


def _state_changed(round: Round, old: str, new: str, error: str = "") -> None:
    """Tell the project's webhooks, from inside the transaction that changed the state."""
    webhook_event_emit(
        project=round.project_id,
        event=Webhook.Event.ROUND_STATE_CHANGED,
        payload={"round": round.pk, "number": round.number, "from": old, "to": new, "error": error},
    )


def _hand_on(round_id: int, token: str, state: str, **fields) -> bool:
    """Move a claimed round to `state`, releasing the claim; False when the claim was lost."""
    now = timezone.now()
    before = Round.objects.only("pk", "project_id", "number", "state").get(pk=round_id)
    fields.update(state=state, claim_token="", attempts=0, error="", updated_at=now)
    if state in Round.TERMINAL:
        fields["finished_at"] = now
    moved = (
        Round.objects.filter(pk=round_id, claim_token=token)
        .exclude(state__in=Round.TERMINAL)
        .update(**fields)
    )
    if moved:
        _state_changed(before, before.state, state)
    if moved and state not in Round.TERMINAL:
        _enqueue_step(round_id, state)
    return bool(moved)


def round_advance(*, round_id: int, token: str, **fields) -> bool:
    """Finish the claimed step: the round moves to the next step, with `fields` (counts) written."""
    with transaction.atomic():
        round = Round.objects.get(pk=round_id)
        if round.claim_token != token or round.is_terminal:
            return False
        return _hand_on(round_id, token, round.next_state(), progress={"stage": round.next_state()}, **fields)


def round_fail(*, round_id: int, token: str, error: str, retry: bool = True) -> Round:
    """A step raised: run it again while it has retries left (and `retry`, for errors a second try
    may not repeat), else the round fails and a retry resumes from this step."""
    with transaction.atomic():
        round = Round.objects.select_for_update().get(pk=round_id)
        if round.claim_token != token:
            return round  # cancelled or taken over meanwhile: nothing of ours to fail
        retries = int(round.config.get("stage_retries", 0))
        round.error, round.claim_token = error, ""
        if retry and round.attempts <= retries:
            round.save(update_fields=["error", "claim_token", "updated_at"])
            _enqueue_step(round.pk, round.state, countdown=min(60, 2**round.attempts))
            return round
        round.failed_state, round.state, round.finished_at = round.state, Round.State.FAILED, timezone.now()
        round.save()
        _state_changed(round, round.failed_state, round.state, error)
    return round


# ---------------------------------------------------------------- step results


def round_take_feedback(*, round_id: int, token: str, judgment_ids: Sequence[int]) -> bool:
    """The pending step: fix the feedback judgments the round works on, then refine them."""
    return round_advance(
        round_id=round_id, token=token, judgment_ids=list(judgment_ids), feedback_count=len(judgment_ids)
    )


@dataclass(frozen=True)
class RefinementIn:
    judgment_id: int
    text: str
    source: str = Refinement.Source.MODEL
    sample_index: int = 0


def refinements_record(*, round: Round, refinements: Sequence[RefinementIn]) -> int:
    """Write a round's refinements; those already there (a re-run step) are left as they are."""
    Refinement.objects.bulk_create(
        [
            Refinement(
                round=round,
                judgment_id=r.judgment_id,
                text=r.text,
                source=r.source,
                sample_index=r.sample_index,
            )
            for r in refinements
        ],
        ignore_conflicts=True,
    )
    return Refinement.objects.filter(round=round).count()


def refinements_select(*, round: Round, scores: dict[int, dict], selected_ids: Sequence[int]) -> int:
    """Record every refinement's scores and which ones were selected (one per feedback at most)."""
    with transaction.atomic():
        scored = list(Refinement.objects.filter(round=round, pk__in=list(scores)).only("pk", "scores"))
        for refinement in scored:
            refinement.scores = {**refinement.scores, **scores[refinement.pk]}
        Refinement.objects.bulk_update(scored, ["scores"], batch_size=500)
        Refinement.objects.filter(round=round).exclude(pk__in=list(selected_ids)).update(selected=False)
        return Refinement.objects.filter(round=round, pk__in=list(selected_ids)).update(selected=True)


def adapter_register(
    *,
    round: Round,
    path: str,
    checksum: str,
    training_metrics: dict,
    dataset_sha256: str,
    refinement_ids: Sequence[int],
    judgment_ids: Sequence[int],
    parent: Adapter | None,
) -> Adapter:
    """Record the adapter a round trained, and exactly what it was trained on. Again: the same row."""
    with transaction.atomic():
        adapter, _ = Adapter.objects.update_or_create(
            round=round,
            defaults={
                "project_id": round.project_id,
                "parent": parent,
                "base_model": round.config["base_model"],
                "path": path,
                "checksum": checksum,
                "training_metrics": training_metrics,
                "training_refinement_ids": list(refinement_ids),
            },
        )
        adapter.training_judgments.set(sorted(set(judgment_ids)))
        Round.objects.filter(pk=round.pk).update(
            dataset_sha256=dataset_sha256, train_example_count=len(refinement_ids)
        )
    return adapter


def promotion_decision(evaluation: dict, *, tolerance: float) -> tuple[bool, str]:
    """The promotion rule: the held-out loss may be worse than the active model's by `tolerance` at most."""
    new, old = evaluation.get("held_out_loss"), evaluation.get("baseline_held_out_loss")
    if new is None or old is None:
        return True, "no eval-split prompts with a gold answer or accepted fix: promoted without a check"
    if new <= old + tolerance:
        return True, f"held-out loss {new:.4f} against {old:.4f} for the active model (tolerance {tolerance})"
    return False, (
        f"held-out loss {new:.4f} is worse than the active model's {old:.4f} by more than the tolerance "
        f"{tolerance}: the active model stays"
    )


def adapter_promote(
    *,
    round_id: int,
    token: str,
    evaluation: dict,
    probe_flags: Sequence[dict] = (),
    probe_details: dict | None = None,
) -> bool:
    """The evaluating step: store the adapter's evaluation and promote it when it does not regress.

    A promoted adapter becomes the project's active model and the round goes on to generate new
    outputs with it; one that regresses ends the round `done` with promoted=false and the reason.
    Probe results that fell beyond the project's tolerance (`probe_flags`) are flagged on the
    round, and keep the adapter from promotion when the project says so.
    """
    with transaction.atomic():
        round = Round.objects.select_for_update().get(pk=round_id)
        if round.claim_token != token or round.is_terminal:
            return False
        adapter = Adapter.objects.get(round=round)
        adapter.evaluation = evaluation
        adapter.probe_details = probe_details or {}
        adapter.save(update_fields=["evaluation", "probe_details"])
        Round.objects.filter(pk=round.pk).update(probe_flags=list(probe_flags))
        promote, why = promotion_decision(
            evaluation, tolerance=float(round.config.get("promotion_tolerance", 0))
        )
        if probe_flags:
            names = ", ".join(flag["probe"] for flag in probe_flags)
            if promote and round.config.get("probes_block_promotion"):
                promote = False
                why = f"probes fell beyond the tolerance ({names}): the active model stays; {why}"
            else:
                why = f"{why}; probes flagged: {names}"
        if promote:
            Adapter.objects.filter(project_id=round.project_id, is_active=True).exclude(pk=adapter.pk).update(
                is_active=False
            )
            Adapter.objects.filter(pk=adapter.pk).update(is_active=True)
            webhook_event_emit(
                project=round.project_id,
                event=Webhook.Event.ADAPTER_PROMOTED,
                payload={
                    "adapter": adapter.pk,
                    "round": round.pk,
                    "base_model": adapter.base_model,
                    "checksum": adapter.checksum,
                    "evaluation": evaluation,
                },
            )
            return _hand_on(
                round.pk,
                token,
                Round.State.GENERATING,
                promoted=True,
                promotion_reason=why,
                progress={"stage": Round.State.GENERATING},
            )
        return _hand_on(round.pk, token, Round.State.DONE, promoted=False, promotion_reason=why, progress={})


def round_generation_prompts(*, round: Round, prompt_ids: Sequence[int]) -> None:
    """Fix the prompts the generating step writes for, the first time it runs."""
    Round.objects.filter(pk=round.pk, generation_prompt_ids=[]).update(generation_prompt_ids=list(prompt_ids))


def round_outputs_enqueue(
    *, round_id: int, token: str, single: Sequence[NewTask], pairwise: Sequence[NewTask]
) -> bool:
    """The generating step: the new model's outputs become rating tasks, and the round is done."""
    with transaction.atomic():
        round = Round.objects.select_for_update().get(pk=round_id)
        if round.claim_token != token or round.is_terminal:
            return False
        project = round.project
        created = 0
        if single:
            created += outputs_enqueue(
                project=project, items=single, task_kind="single", seed=round.number
            ).tasks_created
        if pairwise:
            created += outputs_enqueue(
                project=project, items=pairwise, task_kind="pairwise", seed=round.number
            ).tasks_created
        return _hand_on(
            round.pk, token, Round.State.DONE, new_task_count=F("new_task_count") + created, progress={}
        )


WIN_RATE_KEYS = (
    "win_rate",
    "win_rate_se",
    "win_rate_low",
    "win_rate_high",
    "win_rate_n",
    "win_rate_n_tasks",
    "win_rate_judgments",
)


def adapter_win_rate_record(*, adapter_id: int, win_rate: dict) -> None:
    """Store the raters' win rate of an adapter over the model it replaced in its evaluation.

    Only the win-rate keys change: the evaluating step's numbers stay as they are (the row is
    locked so that two writers do not lose each other's keys)."""
    unknown = set(win_rate) - set(WIN_RATE_KEYS)
    if unknown:
        raise ValueError(f"not win-rate keys: {sorted(unknown)}")
    with transaction.atomic():
        adapter = Adapter.objects.select_for_update().get(pk=adapter_id)
        evaluation = dict(adapter.evaluation or {})
        for key in WIN_RATE_KEYS:
            evaluation.pop(key, None)
        evaluation.update(win_rate)
        adapter.evaluation = evaluation
        adapter.save(update_fields=["evaluation"])
