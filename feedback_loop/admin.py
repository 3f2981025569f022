"""The loop in the admin: rounds (started, retried and cancelled through the loop's services),
adapters with the judgments they were trained on, refinements, and each project's loop settings.

As in annotation's admin, staff curators see only the projects they curate; superusers see all.
Rounds, refinements and adapters are written by the loop alone: here they are read-only, and
"Add round" starts a round through `round_start` (one round at a time per project).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.text import Truncator

from annotation import selectors as annotation_selectors
from annotation.admin import DeleteSummaryMixin, ReadOnlyMixin
from annotation.models import Project
from feedback_loop import services
from feedback_loop.models import Adapter, LoopConfig, Refinement, Round

ONLY_PROJECTS = ("project", admin.RelatedOnlyFieldListFilter)


def _curated(queryset, user, path: str = "project"):
    if user.is_superuser:
        return queryset
    return queryset.filter(**{f"{path}__in": annotation_selectors.project_list_curated(user)})


def _excerpt(text: str, length: int = 80) -> str:
    return Truncator(" ".join((text or "").split())).chars(length)


def _round_page(round: Round):
    return format_html(
        '<a href="{}">round page</a>', reverse("loop-round", args=[round.project_id, round.number])
    )


class RoundStartForm(forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.none())
    reason = forms.CharField(required=False, max_length=2000, widget=forms.Textarea(attrs={"rows": 3}))

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = annotation_selectors.project_list_curated(user).filter(
            archived=False
        )


@admin.register(Round)
class RoundAdmin(DeleteSummaryMixin, admin.ModelAdmin):
    list_display = [
        "number",
        "project",
        "state",
        "started_by",
        "started_at",
        "feedback_count",
        "selected_count",
        "promoted",
        "new_task_count",
        "page",
    ]
    ordering = ["project", "-number"]  # the newest round of each project first
    list_display_links = ["number"]
    list_filter = [ONLY_PROJECTS, "state", "promoted"]
    search_fields = ["reason", "error"]
    list_select_related = ["project", "started_by"]
    actions = ["retry", "cancel"]
    change_list_template = "admin/feedback_loop/round/change_list.html"
    exclude = ["claim_token"]

    def get_queryset(self, request):
        return _curated(super().get_queryset(request), request.user)

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Round._meta.fields if f.name != "claim_token"] + ["page"]

    def has_change_permission(self, request, obj=None):
        return False  # the loop's services move rounds; the admin's actions call them

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    @admin.display(description="")
    def page(self, round):
        return _round_page(round)

    # "Add round" starts one: the project's next round through the loop's service.
    def add_view(self, request, form_url="", extra_context=None):
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = RoundStartForm(request.POST or None, user=request.user)
        if request.method == "POST" and form.is_valid():
            project = form.cleaned_data["project"]
            try:
                round = services.round_start(
                    project=project, user=request.user, reason=form.cleaned_data["reason"].strip()
                )
            except services.LoopError as error:
                self.message_user(request, f"No round was started for {project}: {error}.", messages.ERROR)
            else:
                self.message_user(request, f"Round {round.number} of {project} started.", messages.SUCCESS)
                return HttpResponseRedirect(reverse("admin:feedback_loop_round_change", args=[round.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Start a round",
            "form": form,
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/feedback_loop/round/start.html", context)

    @admin.action(description="Retry the selected failed rounds")
    def retry(self, request, queryset):
        self._each(request, queryset, services.round_retry, "resumes from the step that failed")

    @admin.action(description="Cancel the selected rounds")
    def cancel(self, request, queryset):
        self._each(request, queryset, services.round_cancel, "is cancelled")

    def _each(self, request, queryset, service, done: str) -> None:
        for round in queryset.select_related("project"):
            try:
                service(round=round)
            except services.LoopError as error:
                self.message_user(
                    request, f"Round {round.number} of {round.project}: {error}.", messages.ERROR
                )
            else:
                self.message_user(
                    request, f"Round {round.number} of {round.project} {done}.", messages.SUCCESS
                )


@admin.register(Adapter)
class AdapterAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "round_link",
        "checksum_short",
        "is_active",
        "parent",
        "judgments",
        "created_at",
    ]
    list_filter = [ONLY_PROJECTS, "is_active"]
    search_fields = ["checksum", "path"]
    list_select_related = ["project", "round", "parent__round"]
    exclude = ["training_judgments"]
    readonly_fields = [
        "project",
        "round_link",
        "parent",
        "is_active",
        "base_model",
        "path",
        "checksum",
        "judgments",
        "training_metrics",
        "evaluation",
        "probe_details",
        "training_refinement_ids",
        "created_at",
    ]

    def get_queryset(self, request):
        return _curated(super().get_queryset(request), request.user).annotate(
            n_judgments=Count("training_judgments", distinct=True)
        )

    @admin.display(description="round", ordering="round__number")
    def round_link(self, adapter):
        return format_html(
            '<a href="{}">round {}</a>',
            reverse("loop-round", args=[adapter.project_id, adapter.round.number]),
            adapter.round.number,
        )

    @admin.display(description="checksum")
    def checksum_short(self, adapter):
        return adapter.checksum[:12]

    @admin.display(description="trained on", ordering="n_judgments")
    def judgments(self, adapter):
        url = reverse("admin:annotation_judgment_changelist") + f"?trained_adapters__id__exact={adapter.pk}"
        return format_html('<a href="{}">{} judgments</a>', url, adapter.n_judgments)


@admin.register(Refinement)
class RefinementAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["id", "round", "judgment", "source", "sample_index", "selected", "text_excerpt", "scores"]
    list_filter = [("round__project", admin.RelatedOnlyFieldListFilter), "selected", "source"]
    search_fields = ["text", "=judgment__id"]
    list_select_related = ["round__project", "judgment__rater"]
    readonly_fields = [
        "round",
        "judgment",
        "source",
        "sample_index",
        "selected",
        "scores",
        "text",
        "created_at",
    ]

    def get_queryset(self, request):
        return _curated(super().get_queryset(request), request.user, "round__project")

    @admin.display(description="text")
    def text_excerpt(self, refinement):
        return _excerpt(refinement.text)


@admin.register(LoopConfig)
class LoopConfigAdmin(DeleteSummaryMixin, admin.ModelAdmin):
    list_display = [
        "project",
        "base_model",
        "selector",
        "n_refinements",
        "data_mode",
        "require_acceptance",
        "updated_at",
    ]
    list_select_related = ["project"]

    def get_queryset(self, request):
        return _curated(super().get_queryset(request), request.user)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "project":
            kwargs["queryset"] = _curated(Project.objects.all(), request.user, "pk")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)
