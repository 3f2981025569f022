"""Exports as HTTP downloads, for the curator pages and the API alike (annotation.exporting makes the rows)."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.utils.text import slugify

from annotation import exporting


def export_response(project, rows, *, kind: str, fmt: str, round_number: int | None = None):
    """An HTTP download of export rows, streamed as they are read: JSONL and CSV a line at a time,
    parquet a row group at a time (its footer last)."""
    suffix = "" if round_number is None else f"-round{round_number}"
    filename = f"{slugify(project.name) or f'project-{project.pk}'}-{kind}{suffix}.{fmt}"
    if fmt == "parquet":
        response = StreamingHttpResponse(
            exporting.parquet_chunks(rows, kind=kind), content_type=exporting.MEDIA_TYPES["parquet"]
        )
    else:
        lines = exporting.jsonl_lines(rows) if fmt == "jsonl" else exporting.csv_lines(rows, kind=kind)
        response = StreamingHttpResponse(
            (line.encode("utf-8") for line in lines),
            content_type=f"{exporting.MEDIA_TYPES[fmt]}; charset=utf-8",
        )
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response
