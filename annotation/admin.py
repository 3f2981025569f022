from django.contrib import admin

from annotation.models import Answer, Judgment, Lease, Membership, Output, Project, Prompt, Task, TaskOutput


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "overlap", "lease_seconds", "gold_rate", "archived", "created_at"]
    list_filter = ["kind", "archived"]
    search_fields = ["name", "description"]
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "is_active", "created_at"]
    list_filter = ["project", "role", "is_active"]
    search_fields = ["user__username", "project__name"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["external_id", "project", "split", "created_at"]
    list_filter = ["project", "split"]
    search_fields = ["external_id", "text"]


@admin.register(Output)
class OutputAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "source", "model_name", "adapter", "round_number", "created_at"]
    list_filter = ["source", "round_number", "prompt__project"]
    search_fields = ["text", "model_name", "prompt__external_id"]
    raw_id_fields = ["prompt"]


class TaskOutputInline(admin.TabularInline):
    model = TaskOutput
    extra = 0
    raw_id_fields = ["output"]


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "kind",
        "status",
        "judgment_count",
        "is_gold",
        "round_number",
        "created_at",
    ]
    list_filter = ["project", "kind", "status", "is_gold", "round_number"]
    search_fields = ["prompt__external_id", "prompt__text"]
    raw_id_fields = ["prompt"]
    inlines = [TaskOutputInline]


@admin.register(Lease)
class LeaseAdmin(admin.ModelAdmin):
    list_display = ["id", "task", "rater", "state", "created_at", "expires_at"]
    list_filter = ["state", "task__project", "created_at"]
    search_fields = ["rater__username"]
    raw_id_fields = ["task", "rater"]


class AnswerInline(admin.TabularInline):
    model = Answer
    extra = 0
    readonly_fields = ["question", "kind", "value"]
    can_delete = False


@admin.register(Judgment)
class JudgmentAdmin(admin.ModelAdmin):
    list_display = [
        "id",
        "project",
        "task",
        "rater",
        "status",
        "late",
        "time_spent_ms",
        "round_number",
        "created_at",
    ]
    list_filter = ["project", "status", "round_number", "answer_rows__kind", "rater", "created_at"]
    search_fields = ["rater__username", "task__prompt__external_id", "task__prompt__text"]
    raw_id_fields = ["task", "rater", "lease"]
    inlines = [AnswerInline]
