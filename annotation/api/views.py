"""REST API: thin views that check access, validate input and call one service or selector."""

from __future__ import annotations

from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, permissions, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from annotation import selectors
from annotation.api import serializers as s
from annotation.api.parsers import JSONParser
from annotation.api.throttles import NEXT_TASK_THROTTLES
from annotation.errors import NotAMember
from annotation.models import Judgment, Lease, Output, Project, Prompt, Task
from annotation.services import judgments, leases


@csrf_exempt  # a 404 whatever the method; nothing is read or written
def endpoint_not_found(request, *args, **kwargs):
    return JsonResponse({"detail": "no such endpoint or object", "code": "not_found"}, status=404)


def _query(request, serializer_class) -> dict:
    """The list's query parameters, validated (400 naming the parameter otherwise)."""
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


def _lease_id(pk: str) -> int:
    if not (pk.isascii() and pk.isdigit()) or int(pk) > 2**63 - 1:
        raise ValidationError({"id": "a lease id is a positive integer"})
    return int(pk)


class ProjectAccess(permissions.IsAuthenticated):
    """Administrators create and delete projects; curators change theirs.

    Checked before the body is validated, so that a validation error (a name already taken)
    cannot tell someone without rights what the project or its neighbours hold.
    """

    def has_permission(self, request, view):
        if not super().has_permission(request, view):
            return False
        if view.action == "create" and not request.user.is_superuser:
            raise PermissionDenied("only administrators can create projects")
        return True

    def has_object_permission(self, request, view, obj):
        if view.action == "destroy" and not request.user.is_superuser:
            raise PermissionDenied("only administrators can delete projects")
        if view.action in ("update", "partial_update") and not selectors.project_can_curate(
            request.user, obj
        ):
            raise PermissionDenied("only the project's curators can change it")
        return True


class BulkCreateMixin:
    """POST an object or a list of objects; a list is created all-or-nothing."""

    def create(self, request, *args, **kwargs):
        many = isinstance(request.data, list)
        # One object goes through the list path too, so the checks across items (unique external
        # ids, against the database as well) apply to it.
        # Access is checked by the serializers' CuratedRelatedField, item by item, before the rest
        # of the body: a project's contents are never checked against the body of a non-curator.
        serializer = self.get_serializer(data=request.data if many else [request.data], many=True)
        serializer.is_valid(raise_exception=True)
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
    permission_classes = [ProjectAccess]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_queryset(self):
        return selectors.project_list_visible(self.request.user).order_by("id")

    @extend_schema(
        request=None,
        responses={
            200: s.LeaseSerializer,
            204: OpenApiResponse(description="Nothing left for you to judge"),
            429: OpenApiResponse(
                description="Asked too often; Retry-After says in how many seconds to ask again"
            ),
        },
        summary="Lease the next task for you in this project",
        description="A rater holding the project's `max_pending_per_rater` live leases gets the oldest back.",
    )
    @action(detail=True, methods=["post"], url_path="next-task", throttle_classes=NEXT_TASK_THROTTLES)
    def next_task(self, request, pk=None):
        try:
            # lease_acquire reads (and locks) the membership with its project in one query.
            lease = leases.lease_acquire(project=int(pk), rater=request.user)
        except (ValueError, NotAMember):
            self.get_object()  # 404, not 403, for a project the user cannot see
            raise
        if lease is None:
            return Response(status=status.HTTP_204_NO_CONTENT)
        return Response(s.lease_data(lease))

    @extend_schema(responses={200: OpenApiTypes.OBJECT}, summary="Task and judgment counts")
    @action(detail=True, methods=["get"])
    def progress(self, request, pk=None):
        return Response(selectors.project_progress(self.get_object(), rater=request.user))


class CuratedListMixin:
    """Lists limited to the projects the user curates, filterable by ?project=."""

    project_path = "project"

    filter_serializer = s.ProjectFilterSerializer

    def filter_by_project(self, queryset):
        queryset = queryset.filter(
            **{f"{self.project_path}__in": selectors.project_list_curated(self.request.user)}
        )
        self.query = _query(self.request, self.filter_serializer) if self.action == "list" else {}
        project_id = self.query.get("project")
        if project_id is not None:
            queryset = queryset.filter(**{f"{self.project_path}_id": project_id})
        return queryset


# Prompts, outputs and tasks: listed and read in the projects the user curates, created one at a
# time or in bulk. No docstring: the schema describes each view by CuratedListMixin's.
class CuratedRowsViewSet(
    CuratedListMixin,
    BulkCreateMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    viewsets.GenericViewSet,
):
    pass


@extend_schema_view(list=extend_schema(parameters=[s.ProjectFilterSerializer]))
class PromptViewSet(CuratedRowsViewSet):
    queryset = Prompt.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.PromptSerializer

    def get_queryset(self):
        return self.filter_by_project(Prompt.objects.order_by("id"))


@extend_schema_view(list=extend_schema(parameters=[s.OutputFilterSerializer]))
class OutputViewSet(CuratedRowsViewSet):
    queryset = Output.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.OutputSerializer
    project_path = "prompt__project"
    filter_serializer = s.OutputFilterSerializer

    def get_queryset(self):
        queryset = self.filter_by_project(Output.objects.order_by("id"))
        round_number = self.query.get("round")
        return queryset if round_number is None else queryset.filter(round_number=round_number)


@extend_schema_view(list=extend_schema(parameters=[s.TaskFilterSerializer]))
class TaskViewSet(CuratedRowsViewSet):
    queryset = Task.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.TaskSerializer
    filter_serializer = s.TaskFilterSerializer

    def get_queryset(self):
        queryset = self.filter_by_project(Task.objects.prefetch_related("task_outputs").order_by("id"))
        task_status = self.query.get("status")
        return queryset.filter(status=task_status) if task_status else queryset


_SUBMIT_RESULT = PolymorphicProxySerializer(
    component_name="SubmitResult",
    serializers=[s.JudgmentSerializer, s.SubmitAndNextSerializer],
    resource_type_field_name=None,
)


def _judgment_body(submission: judgments.Submission) -> dict:
    return s.judgment_data(submission.judgment, submission.answers)


def _submit_status(submission: judgments.Submission) -> int:
    return status.HTTP_201_CREATED if submission.created else status.HTTP_200_OK


class LeaseViewSet(viewsets.GenericViewSet):
    """A rater's leases: submit answers for one, or skip it."""

    queryset = Lease.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.LeaseSerializer

    def get_queryset(self):
        return Lease.objects.filter(rater=self.request.user)

    @extend_schema(
        request=s.SubmitSerializer,
        parameters=[s.SubmitQuerySerializer],
        responses={
            201: _SUBMIT_RESULT,
            200: OpenApiResponse(_SUBMIT_RESULT, description="Already submitted (a retried request)"),
            400: OpenApiResponse(description="An answer is invalid; nothing was saved"),
            409: OpenApiResponse(description="Lease expired and the task is full, skipped, or closed"),
        },
        summary="Submit your answers for a leased task",
        description=(
            'Answers the judgment; with `?next=1` (or `"next": true` in the body) '
            "`{judgment, next, next_error}`: the judgment is committed first, then your next task of "
            "the project is leased as next-task would (`next` is null when nothing is left). If that "
            "lease cannot be taken, the judgment stays saved and `next_error` says why."
        ),
    )
    # JSON only: `answers` is an object keyed by question, which a form cannot carry.
    @action(detail=True, methods=["post"], parser_classes=[JSONParser])
    def submit(self, request, pk=None):
        # A plainly valid request is read directly (its `next` says the query's too); any other
        # goes through the serializers, which say what is wrong, if anything.
        payload = s.submit_payload(request.data, request.query_params)
        checked = payload is not None
        if not checked:
            body = s.SubmitSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            payload = body.validated_data
        fields = {
            "lease_id": _lease_id(pk),
            "rater": request.user,
            "answers": payload["answers"],
            "time_spent_ms": payload.get("time_spent_ms"),
        }
        if not (payload["next"] or (not checked and _query(request, s.SubmitQuerySerializer)["next"])):
            submission = judgments.judgment_submit(**fields)
            return Response(_judgment_body(submission), status=_submit_status(submission))
        result = judgments.judgment_submit_and_next(**fields)
        error = result.next_error
        body = {
            "judgment": _judgment_body(result.submission),
            "next": None if result.next_lease is None else s.lease_data(result.next_lease),
            "next_error": None if error is None else {"detail": str(error), "code": error.code},
        }
        return Response(body, status=_submit_status(result.submission))

    @extend_schema(
        request=None,
        responses={
            200: OpenApiTypes.OBJECT,
            409: OpenApiResponse(description="The task was already submitted on this lease"),
        },
        summary="Give a leased task back",
    )
    @action(detail=True, methods=["post"])
    def skip(self, request, pk=None):
        lease = leases.lease_skip(lease_id=_lease_id(pk), rater=request.user)
        return Response({"id": lease.pk, "state": lease.state})


@extend_schema_view(list=extend_schema(parameters=[s.JudgmentFilterSerializer]))
class JudgmentViewSet(viewsets.ReadOnlyModelViewSet):
    """Raters see their own judgments; curators see all of their projects'."""

    queryset = Judgment.objects.none()  # for the schema; get_queryset applies the access rules
    serializer_class = s.JudgmentSerializer
    permission_classes = [permissions.IsAuthenticated]

    def get_queryset(self):
        query = _query(self.request, s.JudgmentFilterSerializer) if self.action == "list" else {}
        return selectors.judgment_list(
            self.request.user,
            project=query.get("project"),
            round_number=query.get("round"),
            status=query.get("status", ""),
            rater=query.get("rater", ""),
            kind=query.get("kind", ""),
        )
