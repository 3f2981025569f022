"""The caller's own API token: rotate it (the new key is shown once) or revoke it."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from annotation import api_tokens


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(read_only=True, help_text="The new key; it is not shown again.")
    created = serializers.DateTimeField(read_only=True)


class TokenView(APIView):
    @extend_schema(
        operation_id="auth_token_revoke",
        request=None,
        responses={204: OpenApiResponse(description="The token is revoked (or there was none).")},
        summary="Revoke your API token",
    )
    def delete(self, request):
        api_tokens.token_revoke(user=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class TokenRotateView(APIView):
    @extend_schema(
        operation_id="auth_token_rotate",
        request=None,
        responses={201: TokenSerializer},
        summary="Replace your API token with a new one",
        description="The old token stops working at once. The new key is in this response only.",
    )
    def post(self, request):
        token = api_tokens.token_rotate(user=request.user)
        response = Response(
            TokenSerializer({"token": token.key, "created": token.created}).data,
            status=status.HTTP_201_CREATED,
        )
        response["Cache-Control"] = "no-store"
        return response
