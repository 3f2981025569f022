"""Curator pages: a project's dashboard (progress, agreement, score distributions), its raters,
prompt import and export downloads. Everything else curators do happens in the admin.

Access: anonymous users go to the login page; a project the user cannot see is a 404; a member
who does not curate it gets a 403.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotation import (
    agreement,
    curation,
    downloads,
    exporting,
    importing,
    quality,
    selectors,
    templates_qa2,
)
from annotation.curator_forms import DeactivateForm, ImportForm, MemberAddForm
from annotation.errors import NotAllowed, NotFound
from annotation.models import AuditEvent, Membership, Project
from annotation.services import prompts

# While a worker computes a big project's first figures, the page reloads itself this often.
RELOAD_SECONDS = 5
# Members per page of the raters page: a project of thousands of raters renders one page of them.
RATERS_PER_PAGE = 100


def _curated_project(request, project_id: int) -> Project:
    try:
        return selectors.project_get_curated(request.user, project_id, to="see this page")
    except NotFound as error:
        raise Http404(str(error)) from error
    except NotAllowed as error:
        raise PermissionDenied(str(error)) from error


def _export_links(project: Project) -> list[dict]:
    return [
        {"kind": kind, "formats": [(fmt, f"{kind}.{fmt}") for fmt in exporting.FORMATS]}
        for kind in exporting.KINDS
        if kind != "qa2" or templates_qa2.is_qa2_project(project.questions)
    ]


@require_GET
@login_required
def dashboard(request, project_id: int):
    project = _curated_project(request, project_id)
    # Cached until a review or question changes them, or raters' judgments and time; None while a
    # worker computes a big project's first ones (annotation.quality).
    figures, freshness = quality.dashboard_figures(project)
    context = {
        "project": project,
        "section": "dashboard",
        "figures": figures,
        "progress": figures and figures.progress,
        "review_counts": figures and figures.review_counts,
        "agreement": figures and figures.agreement,
        "plots": figures and figures.plots,
        # Only projects asking the (QA)² template's questions have this panel.
        "qa2": figures and figures.qa2,
        "freshness": freshness,
        "max_age": settings.STATS_MAX_AGE_SECONDS,
        "reload_seconds": RELOAD_SECONDS,
        "active_raters": Membership.objects.filter(
            project=project, is_active=True, role=Membership.Role.RATER
        ).count(),
        "exports": _export_links(project),
        "audit_events": AuditEvent.objects.filter(project=project).select_related("actor")[:10],
    }
    return render(request, "curation/dashboard.html", context)


def _raters_page(request, project, *, add_form=None, new_account=None, status=200):
    page, freshness = quality.rater_page(project, number=request.GET.get("page"), per_page=RATERS_PER_PAGE)
    context = {
        "project": project,
        "section": "raters",
        "rows": page.object_list,
        "page": page,
        "freshness": freshness,
        "max_age": settings.STATS_MAX_AGE_SECONDS,
        "reload_seconds": RELOAD_SECONDS,
        "add_form": add_form or MemberAddForm(),
        "new_account": new_account,
        "tolerance": agreement.GOLD_LIKERT_TOLERANCE,
    }
    response = render(request, "curation/raters.html", context, status=status)
    if new_account:
        response["Cache-Control"] = "no-store"  # the one-time password must not linger in a cache
    return response


@require_GET
@login_required
def raters(request, project_id: int):
    return _raters_page(request, _curated_project(request, project_id))


@require_POST
@login_required
def member_add(request, project_id: int):
    project = _curated_project(request, project_id)
    form = MemberAddForm(request.POST)
    if not form.is_valid():
        return _raters_page(request, project, add_form=form, status=400)
    username, role = form.cleaned_data["username"].strip(), form.cleaned_data["role"]
    try:
        user, password = curation.membership_add_by_username(
            actor=request.user,
            project=project,
            username=username,
            role=role,
            create_account=form.cleaned_data["create_account"],
        )
    except curation.CurationError as error:
        form.add_error("username", str(error))
        return _raters_page(request, project, add_form=form, status=400)
    except PermissionDenied as error:
        form.add_error("role", str(error))
        return _raters_page(request, project, add_form=form, status=403)
    if password is not None:
        # Shown on this response only: nothing stores it, and a reload will not show it again.
        return _raters_page(
            request, project, new_account={"username": user.get_username(), "password": password}
        )
    messages.success(request, f"{user.get_username()} is now an active {role} of {project.name}.")
    return redirect("curation-raters", project_id=project.pk)


@require_POST
@login_required
def member_deactivate(request, project_id: int, user_id: int):
    project = _curated_project(request, project_id)
    membership = get_object_or_404(
        Membership.objects.select_related("user"), project=project, user_id=user_id
    )
    form = DeactivateForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Say why this member is deactivated: the reason goes in the audit log.")
        return redirect("curation-raters", project_id=project.pk)
    try:
        excluded = curation.rater_deactivate(
            actor=request.user,
            project=project,
            user=membership.user,
            exclude_judgments=form.cleaned_data["exclude_judgments"],
            reason=form.cleaned_data["reason"],
        )
    except curation.CurationError as error:
        messages.error(request, str(error))
        return redirect("curation-raters", project_id=project.pk)
    note = f"; {excluded} of their judgments excluded from training" if excluded else ""
    messages.success(request, f"{membership.user.get_username()} is deactivated{note}.")
    return redirect("curation-raters", project_id=project.pk)


@require_http_methods(["GET", "POST"])
@login_required
def import_prompts(request, project_id: int):
    project = _curated_project(request, project_id)
    form = ImportForm(request.POST, request.FILES) if request.method == "POST" else ImportForm()
    status = 200
    if request.method == "POST":
        status = 400
        if form.is_valid():
            data = form.cleaned_data
            try:
                rows = importing.parse_prompt_file(
                    data["file"], fmt=data["format"] or None, mapping=data["mapping"]
                )
                result = prompts.prompts_import(project=project, rows=rows, make_tasks=data["tasks"] or None)
            except importing.ImportFileError as error:
                field = error.field if error.field in form.fields else "file"
                form.add_error(field, f"{error} — nothing was imported.")
            else:
                messages.success(
                    request,
                    f"Imported {result.prompts} prompts, {result.outputs} outputs and {result.tasks} tasks "
                    f"from {data['file'].name}.",
                )
                return redirect("curation-import", project_id=project.pk)
    return render(
        request,
        "curation/import.html",
        {"project": project, "section": "import", "form": form, "fields": importing.FIELDS},
        status=status,
    )


@require_GET
@login_required
def export(request, project_id: int, kind: str, fmt: str):
    """Download an export (annotation.exporting): judgments, or sft / preference training data."""
    project = _curated_project(request, project_id)
    if kind not in exporting.KINDS or fmt not in exporting.FORMATS:
        raise Http404("no such export")
    try:
        return downloads.export_response(project, kind=kind, fmt=fmt)
    except exporting.ExportError as error:  # a qa2 export of another kind of project
        raise Http404(str(error)) from error
