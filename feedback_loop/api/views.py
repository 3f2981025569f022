"""The loop's API: start a round, watch it, retry or cancel it. Curators act; project members read."""

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors as annotation_selectors
from annotation.models import Project
from feedback_loop import services
from feedback_loop.api.serializers import RoundSerializer, RoundStartSerializer
from feedback_loop.models import Round

CONFLICT = OpenApiResponse(description='{"detail", "code"}: "round_in_progress" or "round_state"')


def _visible_project(request, project_id: int) -> Project:
    """404 for a project the user cannot see."""
    return get_object_or_404(annotation_selectors.project_list_visible(request.user), pk=project_id)


def _curate(request, project: Project) -> None:
    if not annotation_selectors.project_can_curate(request.user, project):
        raise PermissionDenied("only the project's curators can run its loop")


def _visible_round(request, round_id: int) -> Round:
    return get_object_or_404(
        Round.objects.filter(project__in=annotation_selectors.project_list_visible(request.user)), pk=round_id
    )


class ProjectRoundsView(generics.ListAPIView):
    serializer_class = RoundSerializer
    queryset = Round.objects.none()  # for the schema; get_queryset applies the access rules

    def get_queryset(self):
        project = _visible_project(self.request, self.kwargs["project_id"])
        return (
            Round.objects.filter(project=project)
            .select_related("started_by", "adapter")
            .prefetch_related("adapter__training_judgments")
            .order_by("-number")
        )

    @extend_schema(summary="The project's rounds, newest first")
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        request=RoundStartSerializer,
        responses={201: RoundSerializer, 409: CONFLICT},
        summary="Start the project's next round (curators)",
    )
    def post(self, request, project_id: int):
        project = _visible_project(request, project_id)
        _curate(request, project)
        data = RoundStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        round = services.round_start(project=project, user=request.user, reason=data.validated_data["reason"])
        return Response(RoundSerializer(round).data, status=status.HTTP_201_CREATED)


class RoundDetailView(APIView):
    @extend_schema(responses=RoundSerializer, summary="A round: its state, progress, counts and adapter")
    def get(self, request, round_id: int):
        return Response(RoundSerializer(_visible_round(request, round_id)).data)


class RoundRetryView(APIView):
    @extend_schema(
        request=None,
        responses={200: RoundSerializer, 409: CONFLICT},
        summary="Resume a failed round from the step that failed (curators)",
    )
    def post(self, request, round_id: int):
        round = _visible_round(request, round_id)
        _curate(request, round.project)
        return Response(RoundSerializer(services.round_retry(round=round)).data)


class RoundCancelView(APIView):
    @extend_schema(
        request=None, responses={200: RoundSerializer, 409: CONFLICT}, summary="Cancel a round (curators)"
    )
    def post(self, request, round_id: int):
        round = _visible_round(request, round_id)
        _curate(request, round.project)
        return Response(RoundSerializer(services.round_cancel(round=round)).data)
