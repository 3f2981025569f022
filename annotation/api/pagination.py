"""Pages of list endpoints: `?limit=` and `?offset=`, checked rather than passed to the database."""

from __future__ import annotations

from rest_framework import pagination
from rest_framework.exceptions import ValidationError

MAX_LIMIT = 1000
MAX_OFFSET = 2**63 - 1  # what a database's OFFSET takes


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """DRF's limit/offset pages; a limit or offset that is not a number in range is a 400."""

    max_limit = MAX_LIMIT

    def _bounded(self, request, name: str, low: int, high: int, default: int) -> int:
        value = request.query_params.get(name)
        if value in (None, ""):
            return default
        if not value.isascii() or not value.isdigit() or not low <= int(value) <= high:
            raise ValidationError({name: f"must be an integer from {low} to {high}"})
        return int(value)

    def get_limit(self, request):
        return self._bounded(request, self.limit_query_param, 1, MAX_LIMIT, self.default_limit)

    def get_offset(self, request):
        return self._bounded(request, self.offset_query_param, 0, MAX_OFFSET, 0)

    def get_schema_operation_parameters(self, view):
        parameters = super().get_schema_operation_parameters(view)
        bounds = {self.limit_query_param: (1, MAX_LIMIT), self.offset_query_param: (0, MAX_OFFSET)}
        for parameter in parameters:
            low, high = bounds[parameter["name"]]
            parameter["schema"].update(minimum=low, maximum=high)
        return parameters
