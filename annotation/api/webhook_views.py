"""Webhooks over the API: a project's curators list, register and remove them.

The secret that signs deliveries is in the response to the POST that creates the webhook, and
nowhere else, ever.
"""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import selectors, webhooks
from annotation.models import Webhook


class WebhookSerializer(serializers.ModelSerializer):
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=Webhook.Event.choices), allow_empty=False, max_length=20
    )
    created_by = serializers.SlugRelatedField(slug_field="username", read_only=True)

    class Meta:
        model = Webhook
        fields = ["id", "project", "url", "events", "active", "created_by", "created_at"]
        read_only_fields = ["id", "project", "created_by", "created_at"]


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(
        read_only=True, help_text="Signs every delivery. Shown in this response only: keep it now."
    )

    class Meta(WebhookSerializer.Meta):
        fields = [*WebhookSerializer.Meta.fields, "secret"]


class ProjectWebhooksView(APIView):
    serializer_class = WebhookSerializer

    @extend_schema(
        responses={200: WebhookSerializer(many=True)},
        summary="The project's webhooks (curators)",
    )
    def get(self, request, project_id: int):
        project = selectors.project_get_curated(request.user, project_id)
        return Response(WebhookSerializer(selectors.webhook_list(project), many=True).data)

    @extend_schema(
        request=WebhookSerializer,
        responses={
            201: WebhookCreatedSerializer,
            400: OpenApiResponse(description="The URL or the events are not accepted"),
        },
        summary="Register a webhook (curators); the response holds its secret, shown this once",
    )
    def post(self, request, project_id: int):
        project = selectors.project_get_curated(request.user, project_id)
        payload = WebhookSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        webhook = webhooks.webhook_create(
            project=project,
            url=payload.validated_data["url"],
            events=payload.validated_data["events"],
            active=payload.validated_data.get("active", True),
            created_by=request.user,
        )
        return Response(WebhookCreatedSerializer(webhook).data, status=status.HTTP_201_CREATED)


class WebhookView(APIView):
    serializer_class = WebhookSerializer

    @extend_schema(responses={204: None}, summary="Remove a webhook and its delivery log (curators)")
    def delete(self, request, webhook_id: int):
        webhook = get_object_or_404(
            Webhook.objects.filter(project__in=selectors.project_list_visible(request.user)), pk=webhook_id
        )
        if not selectors.project_can_curate(request.user, webhook.project_id):
            raise PermissionDenied("only the project's curators can remove its webhooks")
        webhooks.webhook_delete(webhook=webhook)
        return Response(status=status.HTTP_204_NO_CONTENT)
