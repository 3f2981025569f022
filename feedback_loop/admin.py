"""The loop in the admin: a project's loop settings, its rounds and adapters.

As on the human side, a curator (staff, not superuser) sees only the projects they curate. Rounds
and adapters are written by the loop alone: here they are read, and rounds retried or cancelled
through the same services as the API.
"""

from __future__ import annotations

from django.contrib import admin, messages

from annotation import selectors as annotation_selectors
from annotation.models import Project
from feedback_loop import services
from feedback_loop.models import Adapter, LoopConfig, Round


class CuratedProjectsMixin:
    """Rows and project choices limited to the projects the user curates (all for superusers)."""

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(project__in=annotation_selectors.curated_projects(request.user))

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model is Project:
            kwargs["queryset"] = annotation_selectors.curated_projects(request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ReadOnlyMixin:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(LoopConfig)
class LoopConfigAdmin(CuratedProjectsMixin, admin.ModelAdmin):
    list_display = ["project", "base_model", "selector", "n_refinements", "data_mode", "updated_at"]
    list_select_related = ["project"]


@admin.register(Round)
class RoundAdmin(CuratedProjectsMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = [
        "project",
        "number",
        "state",
        "promoted",
        "feedback_count",
        "selected_count",
        "created_at",
    ]
    list_filter = ["state", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project"]
    actions = ["retry", "cancel"]

    def _each(self, request, queryset, service, verb: str) -> None:
        done = 0
        for round in queryset:
            try:
                service(round=round)
                done += 1
            except services.LoopError as error:
                self.message_user(
                    request, f"round {round.number} of {round.project}: {error.message}", messages.ERROR
                )
        if done:
            self.message_user(request, f"{verb} {done} round(s).", messages.SUCCESS)

    @admin.action(description="Retry the selected failed rounds from their failed step")
    def retry(self, request, queryset):
        self._each(request, queryset, services.round_retry, "Retried")

    @admin.action(description="Cancel the selected rounds")
    def cancel(self, request, queryset):
        self._each(request, queryset, services.round_cancel, "Cancelled")


@admin.register(Adapter)
class AdapterAdmin(CuratedProjectsMixin, ReadOnlyMixin, admin.ModelAdmin):
    list_display = ["project", "round", "is_active", "checksum", "created_at"]
    list_filter = ["is_active", ("project", admin.RelatedOnlyFieldListFilter)]
    list_select_related = ["project", "round"]
    raw_id_fields = ["training_judgments"]
