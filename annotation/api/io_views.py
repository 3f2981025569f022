"""Import prompts into a project, and export its judgments: for the project's curators only."""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import downloads, exporting, importing, selectors
from annotation.api.parsers import JSONParser
from annotation.models import Project
from annotation.services import prompts

MEDIA_TYPES = exporting.MEDIA_TYPES

# What a curator is told when not one.
CURATORS_ONLY = "import into it or export from it"


def _curated_project(request, project_id: int) -> Project:
    return selectors.project_get_curated(request.user, project_id, to=CURATORS_ONLY)


@extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
class MappingField(serializers.JSONField):
    """`{our_field: their_field}`; in a multipart form, a JSON string. Checked by importing.clean_mapping."""


@extend_schema_field(
    {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": True}}
)
class RowsField(serializers.JSONField):
    """Prompt rows as objects; checked row by row by importing.parse_prompt_rows (errors name the row)."""


class ImportFileSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="JSONL or CSV, UTF-8.")
    format = serializers.ChoiceField(
        choices=importing.FORMATS,
        required=False,
        help_text="Guessed from the file name or content if not given.",
    )
    mapping = MappingField(required=False, help_text='{our_field: their_field}, e.g. {"text": "post"}.')
    tasks = serializers.ChoiceField(
        choices=importing.TASK_MODES,
        required=False,
        help_text="Default: single if there are outputs, else none.",
    )


class ImportRowsSerializer(serializers.Serializer):
    rows = RowsField()
    mapping = MappingField(required=False)
    tasks = serializers.ChoiceField(choices=importing.TASK_MODES, required=False)


class ImportResultSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    outputs = serializers.IntegerField()
    tasks = serializers.IntegerField()


class ImportLineErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()
    field = serializers.CharField(allow_null=True, required=False)  # absent: the body itself was bad
    line = serializers.IntegerField(allow_null=True, required=False)


class ExportQuerySerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=exporting.KINDS, default="judgments")
    format = serializers.ChoiceField(choices=exporting.FORMATS, default="jsonl")
    round = serializers.IntegerField(min_value=0, required=False)
    status = serializers.ListField(
        child=serializers.ChoiceField(choices=exporting.STATUSES),
        required=False,
        help_text="Repeat to take several; sft, preference and refiner take only pending and accepted.",
    )


class ProjectImportView(APIView):
    parser_classes = [MultiPartParser, FormParser, JSONParser]

    @extend_schema(
        operation_id="project_import",
        summary="Import prompts (with outputs and tasks) into a project, all or nothing",
        description=(
            "Upload a JSONL or CSV file (multipart), or send rows as JSON. One bad line rejects the "
            "whole import: the error names the line and nothing is written."
        ),
        request={"multipart/form-data": ImportFileSerializer, "application/json": ImportRowsSerializer},
        responses={
            201: ImportResultSerializer,
            400: OpenApiResponse(ImportLineErrorSerializer, description="A bad line; nothing was written."),
            403: OpenApiResponse(description="Not a curator of this project."),
            404: OpenApiResponse(description="No such project visible to you."),
        },
    )
    def post(self, request, project_id: int):
        project = _curated_project(request, project_id)
        from_file = not (request.content_type or "").startswith("application/json")
        serializer = (ImportFileSerializer if from_file else ImportRowsSerializer)(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        # An ImportFileError names the line and the field at fault (see annotation.api.errors).
        if from_file:
            rows = importing.parse_prompt_file(
                data["file"], fmt=data.get("format"), mapping=data.get("mapping")
            )
        else:
            rows = importing.parse_prompt_rows(data["rows"], mapping=data.get("mapping"))
        result = prompts.prompts_import(
            project=project, rows=rows, make_tasks=data.get("tasks"), unit="line" if from_file else "row"
        )
        return Response(ImportResultSerializer(result).data, status=status.HTTP_201_CREATED)


class _FormatIsTheExportFormat(DefaultContentNegotiation):
    """`?format=` names the export's file format here, not one of DRF's renderers (errors are JSON)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ProjectExportView(APIView):
    renderer_classes = [JSONRenderer]
    content_negotiation_class = _FormatIsTheExportFormat

    @extend_schema(
        operation_id="project_export",
        summary="Export a project's judgments, or training data made from them, as a download",
        description=(
            "kind=judgments: one row per judgment (all statuses unless `status` is given). "
            "kind=sft: {prompt, completion} from raters' fixes. kind=preference: {prompt, chosen, "
            "rejected} from comparisons and rankings. kind=refiner: {kind, prompt, text, test, "
            "entry_point, output, feedback, refinement} from fixes with written feedback, to train a "
            "refiner. sft, preference and refiner take only pending and accepted "
            "judgments. JSONL is streamed as it is read from the database."
        ),
        parameters=[ExportQuerySerializer],
        responses={
            (200, MEDIA_TYPES["jsonl"]): OpenApiResponse(OpenApiTypes.BINARY, description="The export file"),
            (200, MEDIA_TYPES["csv"]): OpenApiResponse(
                OpenApiTypes.BINARY, description="The export file (spreadsheet formulas escaped)"
            ),
            (200, MEDIA_TYPES["parquet"]): OpenApiResponse(
                OpenApiTypes.BINARY, description="The export file"
            ),
            400: OpenApiResponse(description="A bad parameter."),
            403: OpenApiResponse(description="Not a curator of this project."),
            404: OpenApiResponse(description="No such project visible to you."),
        },
    )
    def get(self, request, project_id: int):
        project = _curated_project(request, project_id)
        query = ExportQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        kind, fmt = query.validated_data["kind"], query.validated_data["format"]
        round_number = query.validated_data.get("round")
        return downloads.export_response(
            project,
            kind=kind,
            fmt=fmt,
            statuses=query.validated_data.get("status") or None,
            round_number=round_number,
        )
