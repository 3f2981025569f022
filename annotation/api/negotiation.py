"""Content negotiation: DRF's, answered at once for the usual API client."""

from rest_framework.negotiation import DefaultContentNegotiation


class ContentNegotiation(DefaultContentNegotiation):
    """DRF's. A client that accepts anything (`Accept: */*`, or no header) or exactly the first
    renderer's media type gets that renderer and its media type, as DRF's matching would give
    it, without parsing and ordering the header on every request (the task queue's clients)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        accept = request.META.get("HTTP_ACCEPT", "*/*")
        if (
            renderers
            and not format_suffix
            and accept in ("*/*", renderers[0].media_type)
            and self.settings.URL_FORMAT_OVERRIDE not in request.query_params
        ):
            return renderers[0], renderers[0].media_type
        return super().select_renderer(request, renderers, format_suffix)
