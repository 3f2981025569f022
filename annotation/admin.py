"""The admin, where curators browse everything and review judgments.

Curators are staff users with the annotation app's permissions, not superusers: every list,
form choice and filter here is cut down to the projects they curate (selectors.project_list_curated),
so a curator of one project never sees another's rows. Membership and review changes go through
annotation.curation, which writes the audit trail; the admin never edits them behind its back.
"""

from __future__ import annotations

import json

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import NestedObjects
from django.core.exceptions import PermissionDenied
from django.db import router
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Subquery, Value
from django.db.models.functions import Coalesce
from django.http import HttpResponseNotAllowed, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe
from django.utils.text import Truncator, capfirst

from annotation import curation, selectors
from annotation.curation import CurationError
from annotation.curator_forms import ProjectAddForm, ReviewForm
from annotation.models import (
    Answer,
    AuditEvent,
    Judgment,
    Lease,
    Membership,
    Output,
    Project,
    Prompt,
    Task,
    TaskOutput,
)
from annotation.templatetags.text import has_invisible, mark_invisible

# How each model reaches its project, for cutting choices down to the curated projects.
PROJECT_PATHS = {
    Project: "pk",
    Membership: "project",
    Prompt: "project",
    Task: "project",
    Output: "prompt__project",
    Lease: "task__project",
    Judgment: "project",
    AuditEvent: "project",
}
EXCERPT = 80
REVIEW_VERBS = {
    Judgment.Status.ACCEPTED: "Accept",
    Judgment.Status.REJECTED: "Reject",
    Judgment.Status.EXCLUDED: "Exclude from training",
    Judgment.Status.PENDING: "Put back to pending review",
}
ONLY_PROJECTS = ("project", admin.RelatedOnlyFieldListFilter)


def _curated(queryset, user):
    if user.is_superuser:
        return queryset
    return queryset.filter(**{f"{PROJECT_PATHS[queryset.model]}__in": selectors.project_list_curated(user)})


# Longer texts get a read-only preview on their change page, not a textarea: a browser takes many
# seconds to lay out a textarea holding megabytes (a 5 MB prompt took 14 s).
LARGE_TEXT = 100_000
PREVIEW_CHARS = 20_000


def excerpt(text: str, length: int = EXCERPT) -> SafeString:
    return mark_invisible(Truncator(" ".join((text or "").split())).chars(length))


def text_preview(text: str | None) -> SafeString:
    """Untrusted text escaped, invisible characters marked; a large one cut short, with its size."""
    text = text or ""
    if len(text) <= LARGE_TEXT:
        return format_html('<pre class="text-preview">{}</pre>', mark_invisible(text))
    return format_html(
        '<p class="size-note">{} characters; the first {} are shown.</p><pre class="text-preview">{}</pre>',
        f"{len(text):,}",
        f"{PREVIEW_CHARS:,}",
        mark_invisible(text[:PREVIEW_CHARS]),
    )


class LargeTextMixin:
    """Text fields shown as a marked, escaped preview when large or holding invisible characters.

    A large field is not editable here (its textarea is what made the page slow); it is changed
    through the API or an import. A small field with bidirectional controls keeps its textarea
    and gains a preview that shows them.
    """

    text_fields: tuple[str, ...] = ("text",)

    def _large(self, obj, name: str) -> bool:
        return obj is not None and len(getattr(obj, name) or "") > LARGE_TEXT

    def get_fields(self, request, obj=None):
        previews = {f"{name}_preview" for name in self.text_fields}
        fields = []
        for name in super().get_fields(request, obj):
            if name in previews:  # Django lists every read-only field; each preview goes by its field
                continue
            if name in self.text_fields and self._large(obj, name):
                fields.append(f"{name}_preview")
                continue
            fields.append(name)
            if name in self.text_fields and obj is not None and has_invisible(getattr(obj, name)):
                fields.append(f"{name}_preview")
        return fields

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), *(f"{name}_preview" for name in self.text_fields)]

    def _preview(self, obj, name: str) -> SafeString:
        text = getattr(obj, name) or ""
        if len(text) <= LARGE_TEXT:
            return text_preview(text)
        return format_html(
            '{}<p class="size-note">Too large to edit here: change it through the API or an import.</p>',
            text_preview(text),
        )

    @admin.display(description="text, as shown (invisible characters marked)")
    def text_preview(self, obj):
        return self._preview(obj, "text")

    @admin.display(description="context, as shown (invisible characters marked)")
    def context_preview(self, obj):
        return self._preview(obj, "context")

    class Media:
        css = {"all": ["admin-text.css"]}


class DeleteSummaryMixin:
    """A delete confirmation names the rows chosen and counts, per kind, the rows deleted with them.

    Django's own page lists every row of the cascade by name: for a project, each judgment with its
    rater's name, a page line and a query per row. The counts and the permission check are Django's.
    """

    def get_deleted_objects(self, objs, request):
        objs = list(objs)
        if not objs:
            return [], {}, set(), []
        collector = NestedObjects(using=router.db_for_write(self.model), origin=objs)
        collector.collect(objs)
        perms_needed = {
            model._meta.verbose_name
            for model in collector.model_objs
            if self.admin_site.is_registered(model)
            and not self.admin_site.get_model_admin(model).has_delete_permission(request)
        }
        model_count = {
            model._meta.verbose_name_plural: len(rows) for model, rows in collector.model_objs.items()
        }
        opts = self.model._meta
        chosen = [
            format_html(
                '{}: <a href="{}">{}</a>',
                capfirst(opts.verbose_name),
                reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]),
                str(obj),
            )
            for obj in objs
        ]
        protected = [f"{capfirst(obj._meta.verbose_name)}: {obj}" for obj in collector.protected]
        return chosen, model_count, perms_needed, protected


class CuratedMixin(DeleteSummaryMixin):
    """Rows and foreign-key choices limited to the projects the user curates (all for superusers);
    delete confirmations that count the cascade instead of listing it."""

    def get_queryset(self, request):
        return _curated(super().get_queryset(request), request.user)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.related_model in PROJECT_PATHS:
            kwargs["queryset"] = _curated(db_field.related_model._default_manager.all(), request.user)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class SuperuserWritesMixin:
    """Viewable by curators; changed only by superusers (curators change these through audited pages)."""

    def has_add_permission(self, request, *obj):  # inlines pass the parent object, model admins do not
        return request.user.is_superuser and super().has_add_permission(request, *obj)

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_change_permission(request, obj)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)


class ReadOnlyMixin:
    """Rows the platform writes (an audit trail, a delivery log, the loop's results): viewable,
    never added, changed or deleted by hand."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


def _count_of(model):
    rows = model.objects.filter(project=OuterRef("pk")).order_by().values("project").annotate(n=Count("id"))
    return Coalesce(Subquery(rows.values("n"), output_field=IntegerField()), Value(0))


class MembershipInline(SuperuserWritesMixin, admin.TabularInline):
    """The project's members, read-only (a row per member, with no query per row); superusers add
    members here, and change them on the membership's own page or the raters page."""

    model = Membership
    extra = 0
    autocomplete_fields = ["user"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("user", "project")

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Project)
class ProjectAdmin(CuratedMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "kind",
        "overlap",
        "task_count",
        "judgment_count",
        "gold_rate",
        "archived",
        "created_at",
        "curator_pages",
    ]
    list_filter = ["kind", "archived"]
    search_fields = ["name", "description"]
    date_hierarchy = "created_at"
    inlines = [MembershipInline]

    def get_queryset(self, request):
        # Subqueries: joining tasks and judgments together would count their product.
        return (
            super().get_queryset(request).annotate(n_tasks=_count_of(Task), n_judgments=_count_of(Judgment))
        )

    @admin.display(description="tasks", ordering="n_tasks")
    def task_count(self, project):
        return project.n_tasks

    @admin.display(description="judgments", ordering="n_judgments")
    def judgment_count(self, project):
        return project.n_judgments

    @admin.display(description="curate")
    def curator_pages(self, project):
        return format_html(
            '<a href="{}">dashboard</a> · <a href="{}">raters</a> · <a href="{}">import</a>',
            reverse("curation-dashboard", args=[project.pk]),
            reverse("curation-raters", args=[project.pk]),
            reverse("curation-import", args=[project.pk]),
        )

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = ProjectAddForm  # a new project may start from a template
        return super().get_form(request, obj, **kwargs)

    def get_fields(self, request, obj=None):
        fields = [name for name in super().get_fields(request, obj) if name != "template"]
        return ["name", "template", *(name for name in fields if name != "name")] if obj is None else fields

    # Projects are created and deleted by superusers: a curator's new project would have no curator.
    def has_add_permission(self, request):
        return request.user.is_superuser and super().has_add_permission(request)

    def has_delete_permission(self, request, obj=None):
        return request.user.is_superuser and super().has_delete_permission(request, obj)


@admin.register(Membership)
class MembershipAdmin(SuperuserWritesMixin, CuratedMixin, admin.ModelAdmin):
    list_display = ["user", "project", "role", "is_active", "created_at"]
    list_filter = [ONLY_PROJECTS, "role", "is_active"]
    search_fields = ["user__username", "project__name"]
    list_select_related = ["user", "project"]
    autocomplete_fields = ["user"]


@admin.register(Prompt)
class PromptAdmin(LargeTextMixin, CuratedMixin, admin.ModelAdmin):
    list_display = ["external_id", "project", "split", "text_excerpt", "has_gold", "created_at"]
    list_filter = [ONLY_PROJECTS, "split", "created_at"]
    search_fields = ["external_id", "text"]
    list_select_related = ["project"]
    date_hierarchy = "created_at"
    text_fields = ("text", "context")

    @admin.display(description="text")
    def text_excerpt(self, prompt):
        return excerpt(prompt.text)

    @admin.display(description="gold", boolean=True)
    def has_gold(self, prompt):
        return prompt.gold is not None


@admin.register(Output)
class OutputAdmin(LargeTextMixin, CuratedMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "prompt",
        "project",
        "source",
        "model_name",
        "round_number",
        "text_excerpt",
        "created_at",
    ]
    list_filter = [
        ("prompt__project", admin.RelatedOnlyFieldListFilter),
        "source",
        "round_number",
        "created_at",
    ]
    search_fields = ["text", "model_name", "prompt__external_id"]
    list_select_related = ["prompt__project"]
    autocomplete_fields = ["prompt"]
    date_hierarchy = "created_at"

    @admin.display(description="project", ordering="prompt__project")
    def project(self, output):
        return output.prompt.project

    @admin.display(description="text")
    def text_excerpt(self, output):
        return excerpt(output.text)


class TaskOutputInline(CuratedMixin, admin.TabularInline):
    model = TaskOutput
    extra = 0
    autocomplete_fields = ["output"]

    def get_queryset(self, request):
        # The task itself is already limited to the curator's projects.
        return admin.TabularInline.get_queryset(self, request).select_related("output")


@admin.register(Task)
class TaskAdmin(CuratedMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "prompt",
        "kind",
        "status",
        "judgments",
        "is_gold",
        "priority",
        "round_number",
        "created_at",
    ]
    list_filter = [ONLY_PROJECTS, "kind", "status", "is_gold", "round_number", "created_at"]
    search_fields = ["=id", "prompt__external_id", "prompt__text"]
    list_select_related = ["project", "prompt"]
    autocomplete_fields = ["prompt"]
    # Written only under the task's row lock by the queue (see annotation.services.leases).
    readonly_fields = ["judgment_count"]
    date_hierarchy = "created_at"
    inlines = [TaskOutputInline]

    @admin.display(description="judgments", ordering="judgment_count")
    def judgments(self, task):
        return f"{task.judgment_count} / {task.project.overlap}"


@admin.register(Lease)
class LeaseAdmin(SuperuserWritesMixin, CuratedMixin, admin.ModelAdmin):
    list_display = ["id", "task", "project", "rater", "state", "is_live", "created_at", "expires_at"]
    list_filter = [
        ("task__project", admin.RelatedOnlyFieldListFilter),
        "state",
        ("rater", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    search_fields = ["rater__username", "=task__id"]
    list_select_related = ["task__project", "rater"]
    raw_id_fields = ["task", "rater"]
    date_hierarchy = "created_at"

    @admin.display(description="project", ordering="task__project")
    def project(self, lease):
        return lease.task.project

    @admin.display(description="live", boolean=True)
    def is_live(self, lease):
        return lease.is_live()


class AnswerInline(admin.TabularInline):
    model = Answer
    extra = 0
    fields = readonly_fields = ["question", "kind", "value_shown"]
    can_delete = False

    # A fix can be a million characters, and feedback can hold bidi controls: previews, marked.
    @admin.display(description="value")
    def value_shown(self, answer):
        if isinstance(answer.value, str):
            return text_preview(answer.value)
        return json.dumps(answer.value, ensure_ascii=False)

    def has_add_permission(self, request, obj=None):
        return False


def _scores(judgment) -> str:
    parts = []
    for answer in judgment.answer_rows.all():
        value = answer.value
        if answer.kind == Answer.Kind.LIKERT and isinstance(value, dict):
            parts.append(" ".join(f"{criterion} {score}" for criterion, score in value.items()))
        elif answer.kind == Answer.Kind.PAIRWISE and isinstance(value, dict):
            preferred = value.get("preferred")
            parts.append("tie" if preferred is None else f"output {preferred} ({value.get('strength', '')})")
        elif answer.kind == Answer.Kind.RANKING and isinstance(value, dict):
            parts.append(" > ".join(str(group) for group in value.get("ranking", [])))
        elif answer.kind == Answer.Kind.RUBRIC and isinstance(value, dict) and value.get("flags"):
            parts.append("flags: " + ", ".join(value["flags"]))
    return " · ".join(parts)


@admin.register(Judgment)
class JudgmentAdmin(CuratedMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "rater",
        "task_link",
        "project",
        "feedback_excerpt",
        "scores",
        "status",
        "late_mark",
        "seconds",
        "created_at",
    ]
    list_filter = [
        ONLY_PROJECTS,
        "status",
        "round_number",
        "task__kind",
        ("rater", admin.RelatedOnlyFieldListFilter),
        "late",
        "task__is_gold",
        "created_at",
    ]
    search_fields = ["=id", "rater__username", "task__prompt__external_id", "answer_rows__value__icontains"]
    list_select_related = ["rater", "task", "project"]
    date_hierarchy = "created_at"
    actions = ["review_accept", "review_reject", "review_exclude"]
    inlines = [AnswerInline]
    readonly_fields = ["shown_outputs"]
    fields = [
        "project",
        "task",
        "rater",
        "status",
        "shown_outputs",
        "time_spent_ms",
        "late",
        "round_number",
        "lease",
        "display_order",
        "created_at",
    ]
    change_form_template = "curation/admin/judgment_change_form.html"

    class Media:
        css = {"all": ["admin-text.css"]}

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .prefetch_related(Prefetch("answer_rows", queryset=Answer.objects.order_by("id")))
        )

    def get_readonly_fields(self, request, obj=None):
        return [*self.fields, "created_at"]

    # A judgment is the rater's own words: curators review it (the actions), never edit it.
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return obj is None and super().has_change_permission(request)

    def has_delete_permission(self, request, obj=None):
        # Deleting would also break the task's judgment count; superusers only.
        return request.user.is_superuser and super().has_delete_permission(request, obj)

    @admin.display(description="task", ordering="task")
    def task_link(self, judgment):
        return format_html(
            '<a href="{}">{}</a>',
            reverse("admin:annotation_task_change", args=[judgment.task_id]),
            f"{judgment.task_id} ({judgment.task.kind})",
        )

    @admin.display(description="feedback")
    def feedback_excerpt(self, judgment):
        for answer in judgment.answer_rows.all():
            if answer.kind == Answer.Kind.FEEDBACK and isinstance(answer.value, str):
                return excerpt(answer.value)
        return ""

    @admin.display(description="scores")
    def scores(self, judgment):
        return _scores(judgment)

    # Only lateness is news: a column of red crosses for on-time judgments read as failures.
    @admin.display(description="late", ordering="late")
    def late_mark(self, judgment):
        return mark_safe('<span class="late-mark">late</span>') if judgment.late else ""

    @admin.display(description="seconds", ordering="time_spent_ms")
    def seconds(self, judgment):
        return None if judgment.time_spent_ms is None else round(judgment.time_spent_ms / 1000)

    @admin.display(description="outputs, in the order the rater saw them")
    def shown_outputs(self, judgment):
        by_id = {shown.output_id: shown for shown in judgment.task.task_outputs.select_related("output")}
        order = [pk for pk in judgment.display_order or [] if pk in by_id] or list(by_id)
        # Outputs are untrusted model text: escaped (format_html, mark_invisible), controls marked.
        return format_html_join(
            "",
            '<div class="shown-output"><strong>output {} (position {})</strong><pre>{}</pre></div>',
            ((pk, by_id[pk].position, mark_invisible(by_id[pk].output.text)) for pk in order),
        )

    # ---- review: bulk actions with a reason, and single review from the change page

    @admin.action(description="Accept selected judgments", permissions=["change"])
    def review_accept(self, request, queryset):
        return self._review(request, queryset, Judgment.Status.ACCEPTED)

    @admin.action(description="Reject selected judgments…", permissions=["change"])
    def review_reject(self, request, queryset):
        return self._review(request, queryset, Judgment.Status.REJECTED)

    @admin.action(description="Exclude selected judgments from training…", permissions=["change"])
    def review_exclude(self, request, queryset):
        return self._review(request, queryset, Judgment.Status.EXCLUDED)

    def _review(self, request, queryset, status):
        """The confirmation page with a reason field; on its submission, the review itself."""
        form = ReviewForm(request.POST if "apply" in request.POST else None, status=status)
        if form.is_valid():
            try:
                changed = curation.judgments_review(
                    actor=request.user, judgments=queryset, status=status, reason=form.cleaned_data["reason"]
                )
            except (CurationError, PermissionDenied) as error:
                self.message_user(request, str(error), messages.ERROR)
                return None
            self.message_user(
                request,
                f"{changed} judgment{'s' if changed != 1 else ''} marked {Judgment.Status(status).label.lower()}"
                + (f" ({queryset.count() - changed} already were)" if changed < queryset.count() else ""),
                messages.SUCCESS,
            )
            return None
        action = request.POST.get("action", "")
        shown = list(queryset.select_related("rater", "task")[:50])
        context = {
            **self.admin_site.each_context(request),
            "title": f"{REVIEW_VERBS[status]}: say why",
            "verb": REVIEW_VERBS[status],
            "opts": self.model._meta,
            "status_label": Judgment.Status(status).label,
            "judgments": [
                (judgment, self.feedback_excerpt(judgment), _scores(judgment)) for judgment in shown
            ],
            "total": queryset.count(),
            "selected": queryset.values_list("pk", flat=True),
            "action": action,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "select_across": request.POST.get("select_across", "0"),
            "form": form,
        }
        return TemplateResponse(request, "curation/admin/review_confirmation.html", context)

    def get_urls(self):
        return [
            path(
                "<path:object_id>/review/",
                self.admin_site.admin_view(self.review_view),
                name="annotation_judgment_review",
            ),
            *super().get_urls(),
        ]

    def review_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request):
            raise PermissionDenied
        judgment = get_object_or_404(self.get_queryset(request), pk=object_id)
        status = request.POST.get("status", "")
        change_url = reverse("admin:annotation_judgment_change", args=[judgment.pk])
        if status not in curation.REVIEW_ACTIONS:
            self.message_user(request, "Choose accept, reject or exclude.", messages.ERROR)
            return HttpResponseRedirect(change_url)
        form = ReviewForm(request.POST, status=status)
        if not form.is_valid():
            self.message_user(request, " ".join(form.errors.get("reason", [])), messages.ERROR)
            return HttpResponseRedirect(change_url)
        try:
            changed = curation.judgments_review(
                actor=request.user, judgments=[judgment.pk], status=status, reason=form.cleaned_data["reason"]
            )
        except (CurationError, PermissionDenied) as error:
            self.message_user(request, str(error), messages.ERROR)
            return HttpResponseRedirect(change_url)
        label = Judgment.Status(status).label.lower()
        self.message_user(
            request,
            f"Judgment {judgment.pk} marked {label}."
            if changed
            else f"Judgment {judgment.pk} already was {label}.",
            messages.SUCCESS if changed else messages.INFO,
        )
        return HttpResponseRedirect(change_url)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        judgment = self.get_object(request, object_id)
        extra_context = {
            **(extra_context or {}),
            "review_statuses": [
                (value, REVIEW_VERBS[value])
                for value in Judgment.Status.values
                if judgment is None or value != judgment.status
            ],
            "can_review": self.has_change_permission(request),
            "audit_events": AuditEvent.objects.filter(object_type="judgment", object_id=object_id)
            .select_related("actor")
            .order_by("-created_at", "-id")[:20]
            if str(object_id).isdigit()
            else [],
        }
        return super().change_view(request, object_id, form_url, extra_context)


# The audit trail is written by annotation.curation only, and never rewritten.
@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyMixin, CuratedMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "actor",
        "project",
        "action",
        "object_type",
        "object_id",
        "change",
        "reason_excerpt",
    ]
    list_filter = [
        ONLY_PROJECTS,
        "action",
        ("actor", admin.RelatedOnlyFieldListFilter),
        "object_type",
        "created_at",
    ]
    search_fields = ["reason", "actor__username", "=object_id"]
    list_select_related = ["actor", "project"]
    date_hierarchy = "created_at"

    @admin.display(description="before → after")
    def change(self, event):
        before = event.before.get("status") or event.before.get("role") or "—"
        after = event.after.get("status") or event.after.get("role") or "—"
        if event.object_type == "membership":
            before = f"{before}{'' if event.before.get('is_active', True) else ' (inactive)'}"
            after = f"{after}{'' if event.after.get('is_active', True) else ' (inactive)'}"
        return f"{before} → {after}"

    @admin.display(description="reason")
    def reason_excerpt(self, event):
        return excerpt(event.reason)


# API tokens: admins revoke them from the user list (a leaked token, a rater who left). The
# user admin stays Django's own, with this one action added.
@admin.action(description="Revoke the API tokens of the selected users", permissions=["change"])
def revoke_api_tokens(modeladmin, request, queryset):
    from annotation.api_tokens import tokens_revoke

    revoked = tokens_revoke(users=queryset)
    modeladmin.message_user(request, f"{revoked} API token(s) revoked.", messages.SUCCESS)


def _add_the_token_action_to_the_user_admin() -> None:
    from django.contrib.auth import get_user_model

    user_admin = admin.site.get_model_admin(get_user_model())
    user_admin.actions = [*(user_admin.actions or []), revoke_api_tokens]


_add_the_token_action_to_the_user_admin()


# Webhooks register their admin in their own module, with the same cut to curated projects.
from annotation import admin_webhooks  # noqa: E402, F401
