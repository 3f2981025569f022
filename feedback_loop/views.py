"""Curator pages of the loop: a project's rounds (history, metrics, adapter lineage), one round
(live progress, what it selected and trained), and the buttons that start, retry and cancel rounds.

Access as on the other curator pages: anonymous users go to the login page, a project the user
cannot see is a 404, a member who does not curate it gets a 403. The buttons call the loop's
services; their domain errors (one round at a time) come back as messages.
"""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from annotation import selectors as annotation_selectors
from annotation.models import Project
from feedback_loop import reports, selectors, services
from feedback_loop.models import Adapter, Round

REASON_MAX = 2000


def _curated_project(request, project_id: int) -> Project:
    project = get_object_or_404(annotation_selectors.project_list_visible(request.user), pk=project_id)
    if not annotation_selectors.project_can_curate(request.user, project):
        raise PermissionDenied("only the project's curators can see this page")
    return project


def _round_of(request, project_id: int, number: int) -> Round:
    project = _curated_project(request, project_id)
    return get_object_or_404(
        Round.objects.select_related("project", "started_by"), project=project, number=number
    )


def _round_url(round: Round) -> str:
    return reverse("loop-round", args=[round.project_id, round.number])


@require_GET
@login_required
def rounds(request, project_id: int):
    project = _curated_project(request, project_id)
    rounds = list(
        Round.objects.filter(project=project).select_related("started_by", "adapter").order_by("-number")
    )
    adapters = list(Adapter.objects.filter(project=project).select_related("round").order_by("round__number"))
    context = {
        "project": project,
        "section": "rounds",
        "rounds": rounds,
        "active_round": next((r for r in rounds if not r.is_terminal), None),
        "active_adapter": selectors.active_adapter(project),
        "new_feedback": selectors.new_feedback_count(project),
        "charts": reports.metric_charts(adapters),
        "lineage": reports.adapter_lineage(project),
        "reason_max": REASON_MAX,
    }
    return render(request, "loop/rounds.html", context)


@require_POST
@login_required
def round_start(request, project_id: int):
    project = _curated_project(request, project_id)
    reason = request.POST.get("reason", "").strip()[:REASON_MAX]
    try:
        round = services.round_start(project=project, user=request.user, reason=reason)
    except services.LoopError as error:
        messages.error(request, f"No round was started: {error}.")
        return redirect("loop-rounds", project_id=project.pk)
    messages.success(request, f"Round {round.number} started.")
    return redirect(_round_url(round))


@require_GET
@login_required
def round_detail(request, project_id: int, number: int):
    round = _round_of(request, project_id, number)
    adapter = reports.round_adapter(round)
    refinements, selected_total = reports.selected_refinements(round)
    tasks, task_total = reports.new_tasks(round)
    context = {
        "project": round.project,
        "section": "rounds",
        "round": round,
        "stages": reports.round_stages(round),
        # The page polls the loop's API and redraws the steps with the same rules (static/round.js).
        "api_url": reverse("round-detail", args=[round.pk]),
        "state_labels": dict(Round.State.choices),
        "refinements": refinements,
        "selected_total": selected_total,
        "adapter": adapter,
        "trained_on": reports.trained_on_count(adapter) if adapter else 0,
        "training_items": reports.metric_items(
            {k: v for k, v in adapter.training_metrics.items() if k != "train_loss"}
        )
        if adapter
        else [],
        "final_train_loss": reports.final_train_loss(adapter) if adapter else None,
        "evaluation_items": reports.metric_items(adapter.evaluation) if adapter else [],
        "win_rate": reports.win_rate_summary(adapter.evaluation) if adapter else None,
        "probe_flags": round.probe_flags,
        "probe_examples": reports.probe_examples(adapter.probe_details) if adapter else [],
        "tasks": tasks,
        "task_total": task_total,
    }
    return render(request, "loop/round.html", context)


def _change_round(request, project_id: int, number: int, change, *, refused: str, done: str):
    """Apply a service's change to the round and go back to its page, saying how it went:
    `refused` and `done` are messages after "Round N"."""
    round = _round_of(request, project_id, number)
    try:
        change(round=round)
    except services.LoopError as error:
        messages.error(request, f"Round {round.number} {refused}: {error}.")
    else:
        messages.success(request, f"Round {round.number} {done}.")
    return redirect(_round_url(round))


@require_POST
@login_required
def round_retry(request, project_id: int, number: int):
    return _change_round(
        request,
        project_id,
        number,
        services.round_retry,
        refused="was not retried",
        done="resumes from the step that failed",
    )


@require_POST
@login_required
def round_cancel(request, project_id: int, number: int):
    return _change_round(
        request, project_id, number, services.round_cancel, refused="was not cancelled", done="is cancelled"
    )
