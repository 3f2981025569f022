from __future__ import annotations

from django.db import models, transaction
from rest_framework import serializers
from rest_framework.exceptions import PermissionDenied

from annotation import selectors
from annotation.api.parsers import json_problem, loads
from annotation.errors import EnqueueError
from annotation.models import Answer, Judgment, Lease, Output, Project, Prompt, Task
from annotation.questions import QuestionsConfigError, validate_questions_config
from annotation.services.projects import project_create, project_update
from annotation.services.prompts import prompt_create
from annotation.services.tasks import TASK_SIZES, TaskDraft, output_create, task_create, task_kind_check


class StorableJSONField(serializers.JSONField):
    """A JSON field whose value the database can store.

    In a multipart form a JSON field is a string parsed here: `null` parses to None, which a
    NOT NULL column refuses at write time, so it is checked again after parsing. NUL characters
    and absurd nesting are refused too (PostgreSQL's jsonb stores no U+0000).
    """

    def to_internal_value(self, data):
        if self.binary or getattr(data, "is_json_string", False):
            if isinstance(data, bytes):
                data = data.decode()
            try:
                data = loads(data)
            except ValueError as error:
                message = str(error) if str(error).startswith("is nested") else "is not valid JSON"
                raise serializers.ValidationError(message) from error
        else:
            data = super().to_internal_value(data)
        if data is None and not self.allow_null:
            self.fail("null")
        problem = json_problem(data)
        if problem is not None:
            raise serializers.ValidationError(problem)
        return data


class CuratedRelatedField(serializers.PrimaryKeyRelatedField):
    """A project (or a row of one) to add to: one the requesting user sees, and curates.

    The choices come from the visibility selector, so rows of projects the user cannot see
    answer exactly as ids that do not exist (400), in the error and in the browsable API's
    forms alike. A row the user sees but may not add to is refused here (403), before the rest
    of the body is validated: no later check (an external id already taken) can answer first.
    """

    def __init__(self, *, selector, model, **kwargs):
        self.selector = selector
        kwargs.setdefault(
            "error_messages", {"does_not_exist": f"no such {model._meta.verbose_name} of yours"}
        )
        super().__init__(queryset=model.objects.none(), **kwargs)

    def get_queryset(self):
        user = getattr(self.context.get("request"), "user", None)
        if user is None or not user.is_authenticated:
            return self.queryset
        return self.selector(user)

    def to_internal_value(self, data):
        row = super().to_internal_value(data)
        project = row if isinstance(row, Project) else row.project
        if not selectors.project_can_curate(self.context["request"].user, project):
            raise PermissionDenied("only the project's curators can add to it")
        return row


class StorableModelSerializer(serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: StorableJSONField,
    }


class ProjectSerializer(StorableModelSerializer):
    class Meta:
        model = Project
        fields = [
            "id",
            "name",
            "description",
            "kind",
            "guidelines",
            "questions",
            "overlap",
            "lease_seconds",
            "max_pending_per_rater",
            "gold_rate",
            "base_model",
            "generation",
            "loop_settings",
            "archived",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]

    def validate_questions(self, value):
        try:
            return validate_questions_config(value)
        except QuestionsConfigError as error:
            raise serializers.ValidationError(str(error)) from error

    def create(self, validated_data):
        return project_create(**validated_data)

    def update(self, instance, validated_data):
        return project_update(project=instance, **validated_data)


class BulkListSerializer(serializers.ListSerializer):
    """All-or-nothing bulk create: every item is validated before anything is written."""

    def create(self, validated_data):
        with transaction.atomic():
            return [self.child.create(attrs) for attrs in validated_data]


class PromptListSerializer(BulkListSerializer):
    def validate(self, attrs):
        seen = set()
        for index, item in enumerate(attrs):
            key = (item["project"].pk, item["external_id"])
            if key in seen:
                raise serializers.ValidationError({f"[{index}].external_id": f"{key[1]!r} appears twice"})
            seen.add(key)
        by_project: dict[int, list[str]] = {}
        for project_id, external_id in seen:
            by_project.setdefault(project_id, []).append(external_id)
        for project_id, external_ids in by_project.items():
            taken = selectors.prompt_external_ids_taken(project_id, external_ids)
            if taken:
                index, external_id = next(
                    (i, item["external_id"])
                    for i, item in enumerate(attrs)
                    if item["project"].pk == project_id and item["external_id"] in taken
                )
                raise serializers.ValidationError(
                    {f"[{index}].external_id": f"{external_id!r} already exists in this project"}
                )
        return attrs


class PromptSerializer(StorableModelSerializer):
    project = CuratedRelatedField(selector=selectors.project_list_visible, model=Project)

    class Meta:
        model = Prompt
        fields = ["id", "project", "external_id", "text", "context", "data", "split", "gold", "created_at"]
        read_only_fields = ["id", "created_at"]
        list_serializer_class = PromptListSerializer
        # Uniqueness of (project, external_id) is checked for the whole batch in PromptListSerializer.
        validators: list = []

    def validate_text(self, value):
        if not value.strip():
            raise serializers.ValidationError("must not be empty")
        return value

    def create(self, validated_data):
        return prompt_create(**validated_data)


class OutputSerializer(StorableModelSerializer):
    prompt = CuratedRelatedField(selector=selectors.prompt_list_visible, model=Prompt)

    class Meta:
        model = Output
        fields = [
            "id",
            "prompt",
            "text",
            "source",
            "model_name",
            "adapter",
            "round_number",
            "generation",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]
        list_serializer_class = BulkListSerializer

    def create(self, validated_data):
        return output_create(**validated_data)


class TaskOutputIdsField(serializers.ListField):
    """A task's output ids in position order."""

    def get_attribute(self, instance):
        return [link.output_id for link in instance.task_outputs.all()]


class TaskSerializer(StorableModelSerializer):
    project = CuratedRelatedField(selector=selectors.project_list_visible, model=Project)
    prompt = CuratedRelatedField(selector=selectors.prompt_list_visible, model=Prompt)
    outputs = TaskOutputIdsField(
        child=serializers.IntegerField(), min_length=1, max_length=10, help_text="Output ids, in order"
    )

    class Meta:
        model = Task
        fields = [
            "id",
            "project",
            "prompt",
            "kind",
            "outputs",
            "status",
            "judgment_count",
            "is_gold",
            "gold_answers",
            "priority",
            "round_number",
            "created_at",
        ]
        read_only_fields = ["id", "status", "judgment_count", "created_at"]
        list_serializer_class = BulkListSerializer

    def validate(self, attrs):
        prompt, kind, output_ids = attrs["prompt"], attrs.get("kind", Task.Kind.SINGLE), attrs["outputs"]
        if prompt.project_id != attrs["project"].pk:
            raise serializers.ValidationError({"prompt": "belongs to another project"})
        low, high = TASK_SIZES[kind]
        if not low <= len(output_ids) <= high or len(set(output_ids)) != len(output_ids):
            raise serializers.ValidationError(
                {"outputs": f"a {kind} task takes {low}–{high} distinct outputs"}
            )
        missing = selectors.output_ids_missing(prompt, output_ids)
        if missing:
            raise serializers.ValidationError(
                {"outputs": f"output {missing[0]} is not an output of this prompt"}
            )
        try:
            task_kind_check(attrs["project"], kind)
        except EnqueueError as error:
            raise serializers.ValidationError({"kind": str(error)}) from error
        return attrs

    def create(self, validated_data):
        draft = TaskDraft(
            prompt_id=validated_data["prompt"].pk,
            output_ids=validated_data["outputs"],
            kind=validated_data.get("kind", Task.Kind.SINGLE),
            is_gold=validated_data.get("is_gold", False),
            gold_answers=validated_data.get("gold_answers"),
            priority=validated_data.get("priority", 0),
            round_number=validated_data.get("round_number"),
        )
        (task,) = task_create(project=validated_data["project"], drafts=[draft])
        return task


class LeaseTaskOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField()
    label = serializers.CharField(help_text="A, B, C … in the order this rater sees them")


# LeaseSerializer and JudgmentSerializer answer every request for a task and every submission:
# they declare their fields, as ModelSerializer would build them from the model (so that the
# OpenAPI schema stays the same), rather than have it build them again for every instance,
# which cost more CPU than the rest of the serialising.


class LeaseSerializer(serializers.Serializer):
    """A lease with the content of its task, as the rater sees it (outputs in display order)."""

    id = serializers.BigIntegerField(label="ID", read_only=True)
    state = serializers.ChoiceField(choices=Lease.State.choices, required=False)
    created_at = serializers.DateTimeField(required=False)
    expires_at = serializers.DateTimeField()
    task = serializers.SerializerMethodField()

    def get_task(self, lease) -> dict:
        return selectors.lease_task_content(lease)


_NEXT_HELP = (
    "Also lease your next task of the project, once the judgment is saved: the answer is then "
    "{judgment, next, next_error}."
)


_DATETIME = serializers.DateTimeField()
_MAX_TIME_SPENT_MS = 24 * 3600 * 1000


def lease_data(lease: Lease) -> dict:
    """LeaseSerializer(lease).data, as a plain dict built without the serializer's machinery.

    The submissions' and next-task's answers are built by these functions (the serializers
    declare the schema); tests check that both give the same.
    """
    return {
        "id": lease.pk,
        "state": str(lease.state),
        "created_at": _DATETIME.to_representation(lease.created_at),
        "expires_at": _DATETIME.to_representation(lease.expires_at),
        "task": selectors.lease_task_content(lease),
    }


def judgment_data(judgment: Judgment, answers: dict | None = None) -> dict:
    """JudgmentSerializer(judgment, context={"answers": answers} if given).data, as a plain dict."""
    if answers is None:
        answers = {answer.question: answer.value for answer in judgment.answer_rows.all()}
    return {
        "id": judgment.pk,
        "project": judgment.project_id,
        "task": judgment.task_id,
        "rater": judgment.rater.get_username(),
        "lease": judgment.lease_id,
        "answers": answers,
        "display_order": judgment.display_order,
        "time_spent_ms": judgment.time_spent_ms,
        "late": judgment.late,
        "status": str(judgment.status),
        "round_number": judgment.round_number,
        "created_at": None
        if judgment.created_at is None
        else _DATETIME.to_representation(judgment.created_at),
    }


def submit_payload(data, query) -> dict | None:
    """SubmitSerializer's validated data (with `next` from the query too), read directly when the
    body is plainly valid; None otherwise, and the serializers then validate it (and say what is
    wrong) as they always did."""
    if type(data) is not dict or not data.keys() <= {"answers", "time_spent_ms", "next"}:
        return None
    answers = data.get("answers")
    if type(answers) is not dict or json_problem(answers) is not None:
        return None
    payload = {"answers": answers}
    if "time_spent_ms" in data:
        time_spent = data["time_spent_ms"]
        if type(time_spent) is not int or not 0 <= time_spent <= _MAX_TIME_SPENT_MS:
            return None
        payload["time_spent_ms"] = time_spent
    body_next = data.get("next", False)
    if type(body_next) is not bool:
        return None
    query_next = False
    if "next" in query:
        value = query.get("next")
        if value in serializers.BooleanField.TRUE_VALUES:
            query_next = True
        elif value not in serializers.BooleanField.FALSE_VALUES:
            return None
    payload["next"] = body_next or query_next
    return payload


class SubmitSerializer(serializers.Serializer):
    answers = serializers.DictField(help_text="Answers keyed by question name (see the task's questions).")
    time_spent_ms = serializers.IntegerField(required=False, min_value=0, max_value=_MAX_TIME_SPENT_MS)
    next = serializers.BooleanField(required=False, default=False, help_text=_NEXT_HELP)

    def validate_answers(self, value):
        problem = json_problem(value)
        if problem is not None:
            raise serializers.ValidationError(problem)
        return value


class AnswerSerializer(serializers.ModelSerializer):
    class Meta:
        model = Answer
        fields = ["question", "kind", "value"]


class JudgmentSerializer(serializers.Serializer):
    _NULLABLE_POSITIVE = {
        "allow_null": True,
        "min_value": 0,
        "max_value": 9223372036854775807,
        "required": False,
    }

    id = serializers.BigIntegerField(label="ID", read_only=True)
    project = serializers.IntegerField(source="project_id")
    task = serializers.IntegerField(source="task_id")
    rater = serializers.CharField(source="rater.get_username", read_only=True)
    lease = serializers.IntegerField(source="lease_id", allow_null=True, required=False)
    answers = serializers.SerializerMethodField()
    display_order = serializers.JSONField(
        required=False, help_text="Output ids in the order the rater saw them."
    )
    time_spent_ms = serializers.IntegerField(**_NULLABLE_POSITIVE)
    late = serializers.BooleanField(required=False, help_text="Submitted after the lease had expired.")
    status = serializers.ChoiceField(choices=Judgment.Status.choices, required=False)
    round_number = serializers.IntegerField(**_NULLABLE_POSITIVE)
    created_at = serializers.DateTimeField(read_only=True)

    def get_answers(self, judgment) -> dict:
        if "answers" in self.context:  # just written, and handed over by the caller
            return self.context["answers"]
        return {answer.question: answer.value for answer in judgment.answer_rows.all()}


# Query parameters of the list endpoints, validated (a 400 naming the parameter) before they
# reach a query: ids beyond a 64-bit integer, unknown statuses and NUL characters included.
_ID = {"required": False, "min_value": 0, "max_value": 2**63 - 1}


class _Choice(serializers.ChoiceField):
    """An optional choice among `choices`; an unknown one is refused with the allowed values."""

    def __init__(self, choices, **kwargs):
        allowed = ", ".join(str(value) for value, _ in choices)
        messages = {"invalid_choice": f'"{{input}}" is not one of {allowed}'}
        super().__init__(choices, required=False, allow_blank=True, error_messages=messages, **kwargs)


class ProjectFilterSerializer(serializers.Serializer):
    project = serializers.IntegerField(**_ID, help_text="Only this project's rows.")


class OutputFilterSerializer(ProjectFilterSerializer):
    round = serializers.IntegerField(**_ID, help_text="Only this round's outputs.")


class TaskFilterSerializer(ProjectFilterSerializer):
    status = _Choice(Task.Status.choices)


class JudgmentFilterSerializer(ProjectFilterSerializer):
    round = serializers.IntegerField(**_ID, help_text="Only this round's judgments.")
    kind = _Choice(Answer.Kind.choices, help_text="Only judgments with an answer of this kind.")
    status = _Choice(Judgment.Status.choices)
    rater = serializers.CharField(
        required=False, allow_blank=True, max_length=150, help_text="A rater's username."
    )


class ErrorSerializer(serializers.Serializer):
    """The shape of every error answer (annotation.api.errors)."""

    detail = serializers.CharField()
    code = serializers.CharField()
    field = serializers.CharField(allow_null=True, required=False)


class SubmitQuerySerializer(serializers.Serializer):
    next = serializers.BooleanField(required=False, default=False, help_text=_NEXT_HELP)


class SubmitAndNextSerializer(serializers.Serializer):
    """A submission's answer when the next task was asked for too."""

    judgment = JudgmentSerializer()
    next = LeaseSerializer(
        allow_null=True, help_text="Your next lease; null when nothing is left or on error."
    )
    next_error = ErrorSerializer(
        allow_null=True,
        help_text="Why no next lease could be taken (the judgment is saved); null otherwise.",
    )
    errors = serializers.JSONField(required=False, help_text="Every field's messages, for validation errors.")
