"""The OpenAPI schema: drf-spectacular's, with the API's error answers on every operation."""

from __future__ import annotations

from drf_spectacular import openapi

from annotation.api.serializers import ErrorSerializer

# Answers any operation may give, in the error shape of annotation.api.errors.
ALWAYS = {
    "400": "Invalid input (a field or a query parameter); nothing was written.",
    "401": "Not authenticated.",
    "403": "Authenticated, but not allowed to do this.",
}
WITH_PATH_PARAMETERS = {"404": "No such object visible to you."}
WITH_BODY = {
    "413": "The request body is larger than the server accepts.",
    "415": "The request body's media type is not one this operation reads.",
    "503": "The database is busy (SQLite's write lock); nothing was written, try again.",
}


class AutoSchema(openapi.AutoSchema):
    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        codes = dict(ALWAYS)
        if "{" in self.path:
            codes.update(WITH_PATH_PARAMETERS)
        if self.method in ("POST", "PUT", "PATCH", "DELETE"):
            codes.update(WITH_BODY)
        error = self._get_response_for_code(ErrorSerializer, "400", direction=direction)
        for code, description in codes.items():
            documented = responses.get(code)
            if documented is None:
                responses[code] = {**error, "description": description}
            elif not documented.get("content"):
                # Declared with a description only: the body is still the error shape.
                responses[code] = {**error, "description": documented.get("description") or description}
        return dict(sorted(responses.items()))
