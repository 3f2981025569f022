from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from feedback_loop.models import Adapter, Round


class RoundStartSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class AdapterSerializer(serializers.ModelSerializer):
    training_judgments = serializers.SerializerMethodField(help_text="Ids of the judgments it trained on")

    class Meta:
        model = Adapter
        fields = [
            "id",
            "parent",
            "base_model",
            "path",
            "checksum",
            "is_active",
            "training_metrics",
            "evaluation",
            "training_judgments",
            "training_refinement_ids",
            "created_at",
        ]
        read_only_fields = fields

    def get_training_judgments(self, adapter) -> list[int]:
        return sorted(judgment.pk for judgment in adapter.training_judgments.all())  # prefetched in lists


class RoundSerializer(serializers.ModelSerializer):
    # Plain strings in the schema: an enum here would collide with the lease's `state` enum.
    state = serializers.CharField(read_only=True, help_text=", ".join(Round.State.values))
    failed_state = serializers.CharField(read_only=True, help_text="The step a retry resumes from")
    started_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    adapter = serializers.SerializerMethodField()

    class Meta:
        model = Round
        fields = [
            "id",
            "project",
            "number",
            "state",
            "config",
            "dataset_sha256",
            "feedback_count",
            "refinement_count",
            "selected_count",
            "train_example_count",
            "new_task_count",
            "progress",
            "error",
            "failed_state",
            "attempts",
            "started_by",
            "reason",
            "promoted",
            "promotion_reason",
            "probe_flags",
            "adapter",
            "created_at",
            "started_at",
            "finished_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(AdapterSerializer(allow_null=True))
    def get_adapter(self, round):
        try:
            adapter = round.adapter
        except Adapter.DoesNotExist:
            return None
        return AdapterSerializer(adapter).data
