"""Exports as HTTP downloads, for the curator pages and the API alike (annotation.exporting makes the rows).

The web process does what is quick and answers the user: the access check (in the views), the
parameters (a bad one is an ExportError at once, before anything is sent), the headers. The file's
bytes are made in a child process, `python -m annotation.export_process`, at EXPORT_NICE below the
web process's priority, and streamed through as it writes them: an export is some 20-30 CPU seconds
per million judgments, and made in the web process it would hold the GIL that the raters' request
threads wait for, for as long. The web process only copies bytes from a pipe to the socket, with
the GIL released while it waits for them.

- The bytes are the same as when the export is made in process (tests/test_export_process.py).
- The child exits non-zero: its standard error is logged and the stream raises, so the server
  breaks the response off (no final chunk) and the client sees a failed download, not a short file
  (gunicorn answers 500 instead where nothing was sent yet: it sends the headers with the first bytes).
- The client goes away: the server notices at its next write, as with any streamed response, and
  closes the response, which kills and reaps the child. If the web process itself dies, the child's
  next write fails (the pipe has no reader) and it exits. There is no time limit beyond those: an
  export takes as long as its rows take to read, and a niced one longer while the CPUs are busy.
- The child reads only committed rows: a request that runs inside a transaction (a test's, or
  ATOMIC_REQUESTS) has its export made in process, as does an in-memory SQLite database, a
  deployment with EXPORT_IN_PROCESS, and any where the child cannot be started.
"""

from __future__ import annotations

import logging
import os
import selectors
import subprocess
import sys
from collections.abc import Iterable, Iterator

from django.conf import settings
from django.db import connection
from django.http import StreamingHttpResponse
from django.utils.text import slugify

from annotation import exporting

logger = logging.getLogger(__name__)

# Bytes read from the child's output at a time, at most; and how much of its standard error is kept
# for the log (the end of it, where a traceback says what went wrong).
CHUNK_BYTES = 64 * 1024
STDERR_KEPT_BYTES = 64 * 1024


class ExportFailed(RuntimeError):
    """The export's child process failed after the response had begun: the download is broken off."""


def export_response(
    project,
    *,
    kind: str,
    fmt: str,
    statuses: Iterable[str] | None = None,
    round_number: int | None = None,
) -> StreamingHttpResponse:
    """An HTTP download of an export, streamed as it is made: JSONL and CSV a line at a time, parquet
    a row group at a time (its footer last). Raises ExportError at once for a bad parameter."""
    statuses = list(statuses) if statuses else None
    rows = exporting.export_rows(project, kind=kind, statuses=statuses, round_number=round_number)
    if _in_process():
        content = exporting.file_chunks(rows, kind=kind, fmt=fmt)
    else:
        command = export_command(project.pk, kind=kind, fmt=fmt, statuses=statuses, round_number=round_number)
        content = child_chunks(command, fallback=lambda: exporting.file_chunks(rows, kind=kind, fmt=fmt))
    media_type = exporting.MEDIA_TYPES[fmt] + ("" if fmt == "parquet" else "; charset=utf-8")
    response = StreamingHttpResponse(content, content_type=media_type)
    suffix = "" if round_number is None else f"-round{round_number}"
    filename = f"{slugify(project.name) or f'project-{project.pk}'}-{kind}{suffix}.{fmt}"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _in_process() -> bool:
    """Whether this export is made in the web process: by the settings' choice, or because a child
    could not read what this request reads (uncommitted rows, an in-memory database)."""
    if settings.EXPORT_IN_PROCESS or connection.in_atomic_block:
        return True
    return connection.vendor == "sqlite" and connection.is_in_memory_db()


def export_command(
    project_id: int, *, kind: str, fmt: str, statuses: list[str] | None, round_number: int | None
) -> list[str]:
    """The child's command line (no shell: each value one argument, all of them validated)."""
    command = [sys.executable, "-m", "annotation.export_process", str(project_id), kind, fmt]
    for status in statuses or ():
        command += ["--status", status]
    if round_number is not None:
        command += ["--round", str(round_number)]
    if settings.EXPORT_NICE:
        command += ["--nice", str(settings.EXPORT_NICE)]
        if settings.BACKGROUND_CGROUP:
            command += ["--cgroup", settings.BACKGROUND_CGROUP]
    # The database this process reads: under a test runner not the one DATABASE_URL names.
    return [*command, "--database-name", str(connection.settings_dict["NAME"])]


def child_chunks(command: list[str], *, fallback) -> Iterator[bytes]:
    """The standard output of `command`, in pieces as it comes. The child starts when the first piece
    is asked for (so a response never read starts none), is killed and reaped if the iteration stops
    early (closed), and its failure raises ExportFailed after its standard error is logged. Where it
    cannot be started at all, the pieces are `fallback()`'s, made in this process."""
    try:
        child = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=settings.BASE_DIR,  # the environment is this process's: DJANGO_SETTINGS_MODULE too
            # A niced child leads a scheduling group of its own (annotation.export_process).
            start_new_session="--nice" in command,
        )
    except OSError as error:
        logger.warning("could not start the export process (%s): making the export in process", error)
        yield from fallback()
        return
    errors = bytearray()
    try:
        # Both pipes are read as they fill, so that a child that writes much to standard error
        # never blocks on it while this waits for its output.
        with selectors.DefaultSelector() as selector:
            selector.register(child.stdout, selectors.EVENT_READ)
            selector.register(child.stderr, selectors.EVENT_READ)
            while selector.get_map():
                for key, _ in selector.select():
                    data = os.read(key.fd, CHUNK_BYTES)
                    if not data:
                        selector.unregister(key.fileobj)
                    elif key.fileobj is child.stdout:
                        yield data
                    else:
                        errors += data
                        del errors[:-STDERR_KEPT_BYTES]
        child.wait()
    finally:
        if child.returncode is None:  # closed early: the client went away, or the server stopped
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    if child.returncode != 0:
        message = errors.decode("utf-8", errors="replace").strip()
        logger.error("export process %s exited with %s:\n%s", command[3:], child.returncode, message)
        raise ExportFailed(f"the export process exited with {child.returncode}")
