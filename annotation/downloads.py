"""Exports as HTTP downloads, for the curator pages and the API alike (annotation.exporting makes the rows)."""

from __future__ import annotations

import tempfile

from django.http import FileResponse, StreamingHttpResponse
from django.utils.text import slugify

from annotation import exporting

PARQUET_SPOOL_BYTES = 32 * 1024 * 1024  # parquet exports larger than this spill to a temporary file


def export_response(project, rows, *, kind: str, fmt: str, round_number: int | None = None):
    """An HTTP download of export rows: JSONL and CSV stream as they are read; parquet is finished first."""
    suffix = "" if round_number is None else f"-round{round_number}"
    filename = f"{slugify(project.name) or f'project-{project.pk}'}-{kind}{suffix}.{fmt}"
    if fmt in ("jsonl", "csv"):
        lines = exporting.jsonl_lines(rows) if fmt == "jsonl" else exporting.csv_lines(rows, kind=kind)
        response = StreamingHttpResponse(
            (line.encode("utf-8") for line in lines),
            content_type=f"{exporting.MEDIA_TYPES[fmt]}; charset=utf-8",
        )
        response["Content-Disposition"] = f'attachment; filename="{filename}"'
        return response
    # Parquet writes its footer last, so the file is finished before it is sent.
    # Past PARQUET_SPOOL_BYTES it spills to an unnamed temporary file, gone once closed: a full disk
    # closes it here and answers 507 (annotation.api.errors), with nothing left behind.
    spool = tempfile.SpooledTemporaryFile(max_size=PARQUET_SPOOL_BYTES)  # noqa: SIM115 -- FileResponse closes it
    try:
        exporting.write_parquet(rows, spool, kind=kind)
        spool.seek(0)
    except BaseException:
        spool.close()
        raise
    return FileResponse(
        spool, as_attachment=True, filename=filename, content_type=exporting.MEDIA_TYPES["parquet"]
    )
