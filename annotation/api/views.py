"""REST API: thin views that check access, validate input and call one service or selector."""

from __future__ import annotations

from django.db.models import Exists, OuterRef
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from annotation import selectors, services
from annotation.api import serializers as s
from annotation.models import Answer, Judgment, Lease, Output, Project, Prompt, Task


def _int_param(request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as error:
        from rest_framework.exceptions import ValidationError

        raise ValidationError({name: "must be an integer"}) from error


class BulkCreateMixin:
    """POST an object or a list of objects; a list is created all-or-nothing."""

    def create(self, request, *args, **kwargs):
        many = isinstance(request.data, list)
        # One object goes through the list path too, so the checks across items (unique external
        # ids, against the database as well) apply to it.
        serializer = self.get_serializer(data=request.data if many else [request.data], many=True)
        serializer.is_valid(raise_exception=True)
        for project in {self.project_of(item) for item in serializer.validated_data}:
            if not selectors.can_curate(request.user, project):
                raise PermissionDenied("only the project's curators can add to it")
        serializer.save()
        data = serializer.data if many else serializer.data[0]
        return Response(data, status=status.HTTP_201_CREATED)


@extend_schema_view(
    list=extend_schema(summary="Projects you are a member of"),
    create=extend_schema(summary="Create a project (administrators)"),
)
class ProjectViewSet(viewsets.ModelViewSet):
    queryset = Project.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.ProjectSerializer
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return selectors.projects_for(self.request.user).order_by("id")

    def perform_create(self, serializer):
        if not self.request.user.is_superuser:
            raise PermissionDenied("only administrators can create projects")
        serializer.save()

    def perform_update(self, serializer):
        if not selectors.can_curate(self.request.user, serializer.instance):
            raise PermissionDenied("only the project's curators can change it")
        serializer.save()

    def perform_destroy(self, instance):
        if not self.request.user.is_superuser:
            raise PermissionDenied("only administrators can delete projects")
        instance.delete()

    @extend_schema(
        request=None,
        responses={200: s.LeaseSerializer, 204: OpenApiResponse(description="Nothing left for you to judge")},
        summary="Lease the next task for you in this project",
    )
    @action(detail=True, methods=["post"], url_path="next-task")
    def next_task(self, request, pk=None):
        try:
            # lease_acquire reads (and locks) the membership with its project in one query.
            lease = services.lease_acquire(project=int(pk), rater=request.user)
        except (ValueError, services.NotAMember):
            self.get_object()  # 404, not 403, for a project the user cannot see
            raise
        if lease is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.LeaseSerializer(lease).data)

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Task and judgment counts")
    @action(detail=True, methods=["get"])
    def progress(self, request, pk=None):
        return Response(selectors.project_progress(self.get_object(), rater=request.user))


class CuratedListMixin:
    """Lists limited to the projects the user curates, filterable by ?project=."""

    project_path = "project"

    def filter_by_project(self, queryset):
        queryset = queryset.filter(
            **{f"{self.project_path}__in": selectors.curated_projects(self.request.user)}
        )
        project_id = _int_param(self.request, "project")
        if project_id is not None:
            queryset = queryset.filter(**{f"{self.project_path}_id": project_id})
        return queryset


@extend_schema_view(list=extend_schema(parameters=[OpenApiParameter("project", int)]))
class PromptViewSet(
    CuratedListMixin,
    BulkCreateMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Prompt.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.PromptSerializer

    def get_queryset(self):
        return self.filter_by_project(Prompt.objects.order_by("id"))

    @staticmethod
    def project_of(item):
        return item["project"]


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("project", int), OpenApiParameter("round", int)])
)
class OutputViewSet(
    CuratedListMixin,
    BulkCreateMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Output.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.OutputSerializer
    project_path = "prompt__project"

    def get_queryset(self):
        queryset = self.filter_by_project(Output.objects.order_by("id"))
        round_number = _int_param(self.request, "round")
        return queryset if round_number is None else queryset.filter(round_number=round_number)

    @staticmethod
    def project_of(item):
        return item["prompt"].project


@extend_schema_view(
    list=extend_schema(parameters=[OpenApiParameter("project", int), OpenApiParameter("status", str)])
)
class TaskViewSet(
    CuratedListMixin,
    BulkCreateMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    queryset = Task.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.TaskSerializer

    def get_queryset(self):
        queryset = self.filter_by_project(Task.objects.prefetch_related("task_outputs").order_by("id"))
        task_status = self.request.query_params.get("status")
        return queryset.filter(status=task_status) if task_status else queryset

    @staticmethod
    def project_of(item):
        return item["project"]


class LeaseViewSet(viewsets.GenericViewSet):
    """A rater's leases: submit answers for one, or skip it."""

    queryset = Lease.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.LeaseSerializer

    def get_queryset(self):
        return Lease.objects.filter(rater=self.request.user)

    @extend_schema(
        request=s.SubmitSerializer,
        responses={
            201: s.JudgmentSerializer,
            200: OpenApiResponse(s.JudgmentSerializer, description="Already submitted (a retried request)"),
            400: OpenApiResponse(description="An answer is invalid; nothing was saved"),
            409: OpenApiResponse(description="Lease expired and the task is full, skipped, or closed"),
        },
        summary="Submit your answers for a leased task",
    )
    @action(detail=True, methods=["post"])
    def submit(self, request, pk=None):
        payload = s.SubmitSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        submission = services.judgment_submit(
            lease_id=int(pk),
            rater=request.user,
            answers=payload.validated_data["answers"],
            time_spent_ms=payload.validated_data.get("time_spent_ms"),
        )
        context = {} if submission.answers is None else {"answers": submission.answers}
        body = s.JudgmentSerializer(submission.judgment, context=context).data
        return Response(body, status=status.HTTP_201_CREATED if submission.created else status.HTTP_200_OK)

    @extend_schema(request=None, responses={200: OpenApiTypes.OBJECT}, summary="Give a leased task back")
    @action(detail=True, methods=["post"])
    def skip(self, request, pk=None):
        lease = services.lease_skip(lease_id=int(pk), rater=request.user)
        return Response({"id": lease.pk, "state": lease.state})


@extend_schema_view(
    list=extend_schema(
        parameters=[
            OpenApiParameter("project", int),
            OpenApiParameter("round", int),
            OpenApiParameter("kind", str, enum=[k for k, _ in Answer.Kind.choices]),
            OpenApiParameter("status", str, enum=[k for k, _ in Judgment.Status.choices]),
            OpenApiParameter("rater", str, description="username"),
        ]
    )
)
class JudgmentViewSet(viewsets.ReadOnlyModelViewSet):
    """Raters see their own judgments; curators see all of their projects'."""

    queryset = Judgment.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.JudgmentSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        queryset = selectors.judgments_visible_to(self.request.user).select_related("rater")
        params = self.request.query_params
        project_id = _int_param(self.request, "project")
        if project_id is not None:
            queryset = queryset.filter(project_id=project_id)
        round_number = _int_param(self.request, "round")
        if round_number is not None:
            queryset = queryset.filter(round_number=round_number)
        if params.get("status"):
            queryset = queryset.filter(status=params["status"])
        if params.get("rater"):
            queryset = queryset.filter(rater__username=params["rater"])
        if params.get("kind"):
            queryset = queryset.filter(
                Exists(Answer.objects.filter(judgment=OuterRef("pk"), kind=params["kind"]))
            )
        return queryset.prefetch_related("answer_rows").order_by("id")


def project_for_curator(request, project_id: int) -> Project:
    """404 for projects the user cannot see, 403 for projects they see but cannot curate."""
    project = get_object_or_404(selectors.projects_for(request.user), pk=project_id)
    if not selectors.can_curate(request.user, project):
        raise PermissionDenied("only the project's curators can do this")
    return project
