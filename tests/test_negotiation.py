"""The API's content negotiation answers as DRF's does, whatever the client accepts."""

import pytest
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from annotation.api.negotiation import ContentNegotiation


def _choice(negotiation, request, renderers):
    try:
        renderer, media_type = negotiation.select_renderer(request, renderers)
    except Exception as error:  # the refusal itself (404, 406) is compared
        return type(error).__name__
    return type(renderer).__name__, media_type


@pytest.mark.parametrize(
    "accept", [None, "*/*", "application/json", "text/html", "application/json; indent=4", "*/*;q=0.8"]
)
@pytest.mark.parametrize("query", ["", "?format=api", "?format=json"])
@pytest.mark.parametrize("debug", [False, True], ids=["json-only", "browsable-too"])
def test_renderer_chosen_is_drfs_choice(accept, query, debug):
    renderers = [JSONRenderer(), BrowsableAPIRenderer()] if debug else [JSONRenderer()]
    headers = {} if accept is None else {"HTTP_ACCEPT": accept}
    request = Request(APIRequestFactory().post("/api/v1/leases/1/submit/" + query, **headers))
    assert _choice(ContentNegotiation(), request, renderers) == _choice(
        DefaultContentNegotiation(), request, renderers
    )
