"""Request bodies: JSON that the database can store, nested no deeper than people write it."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import parsers
from rest_framework.exceptions import ParseError

# Real payloads (answers, generation settings, code tasks' data) nest a few levels; a body nested
# thousands deep only exhausts the interpreter's stack when parsed, stored or serialised again.
MAX_DEPTH = 64


def json_problem(value: Any) -> str | None:
    """Why a parsed JSON value cannot be stored, or None: too deep, or a NUL character anywhere.

    PostgreSQL's jsonb (and its text columns) hold no U+0000. Walked with a stack, not recursion.
    """
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"is nested more than {MAX_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(item, str) and "\x00" in item:
            return "contains a NUL character (\\u0000), which cannot be stored"
    return None


def loads(text: str | bytes) -> Any:
    """json.loads, with a nesting too deep for the parser's stack reported as a ValueError."""
    try:
        return json.loads(text)
    except RecursionError as error:
        raise ValueError(f"is nested more than {MAX_DEPTH} levels deep") from error


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; a body nested too deeply is a parse error (400), not a crash."""

    def parse(self, stream, media_type=None, parser_context=None):
        # Django holds form bodies to DATA_UPLOAD_MAX_MEMORY_SIZE; DRF reads JSON bodies whole.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        if limit is not None and length > limit:
            raise RequestDataTooBig("the request body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE")
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError as error:
            raise ParseError(
                f"JSON parse error - the body is nested more than {MAX_DEPTH} levels deep"
            ) from error
        problem = json_problem(data)
        if problem is not None and problem.startswith("is nested"):
            raise ParseError(f"JSON parse error - the body {problem}")
        return data
