"""A full disk while importing or exporting: a clear error, nothing half-written, nothing written at all.

Each writer is tried with ENOSPC injected at its write (runs everywhere) and, where a child process
can do the writing, on a real full filesystem (a tiny tmpfs in a private mount namespace; skipped
without root). The adapter's save is tried the same way in tests/engine/test_train.py and
tests/loop/test_round_eager.py.
"""

import errno
import io
import json
import os
import sys

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile, TemporaryUploadedFile
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotation import downloads, exporting
from annotation.models import Output, Prompt, Task
from tests.factories import make_tasks
from tests.factories import write_judgment as judge
from tests.full_disk import full_disk
from tests.loop.processes import shared_database_url

ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def judged(project, rater, n=3):
    """n judgments of about 1 KB each in a JSONL export."""
    for task in make_tasks(project, n):
        answers = {
            "quality": ("likert", {"helpful": 5, "accurate": 6}),
            "feedback": ("feedback", "Mention the deadline. " * 40),
        }
        judge(task, rater, answers)


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


# ------------------------------------------------------------------ export: the management command


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_command_on_a_full_disk_says_so_and_leaves_no_file(project, bob, tmp_path, monkeypatch, fmt):
    judged(project, bob)
    writer = {"jsonl": "write_jsonl", "csv": "write_csv", "parquet": "write_parquet"}[fmt]
    real = getattr(exporting, writer)

    def full_after_some(rows, target, **kwargs):
        # The first rows reach the file, then the disk is full.
        if isinstance(target, str):
            with open(target, "wb") as f:
                f.write(b"PAR1" + b"\0" * 100)
        else:
            target.write('{"partial": true}\n')
        raise ENOSPC

    monkeypatch.setattr(exporting, writer, full_after_some)
    target = tmp_path / f"out.{fmt}"
    with pytest.raises(CommandError, match=r"no space left on device writing .*: nothing was written"):
        call_command(
            "export_judgments", str(project.pk), "--format", fmt, "-o", str(target), stderr=io.StringIO()
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    assert real is not full_after_some


@pytest.mark.django_db
def test_export_command_to_a_full_standard_output_says_so(project, bob, monkeypatch):
    judged(project, bob)

    class Full(io.StringIO):
        def write(self, text):
            raise ENOSPC

    with pytest.raises(CommandError, match="no space left on device writing standard output"):
        call_command("export_judgments", str(project.pk), stdout=Full(), stderr=io.StringIO())


@pytest.mark.django_db(transaction=True)
def test_export_command_on_a_real_full_disk(project, bob, tmp_path):
    """A 4 KiB tmpfs for an export of some 10 KB: the command stops with the error, the folder is empty."""
    folder, run = full_disk(tmp_path)
    judged(project, bob, n=8)
    env = {
        **os.environ,
        "DATABASE_URL": shared_database_url(_vendor()),
        "DEBUG": "1",
        "HF_HUB_OFFLINE": "1",
    }
    result = run(
        [sys.executable, "manage.py", "export_judgments", str(project.pk), "-o", str(folder / "out.jsonl")],
        size="4k",
        env=env,
        cwd=settings.BASE_DIR,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"CommandError: no space left on device writing {folder / 'out.jsonl'}" in result.stderr, (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert result.left == []
    # The same export fits on a larger one.
    result = run(
        [sys.executable, "manage.py", "export_judgments", str(project.pk), "-o", str(folder / "out.jsonl")],
        size="1m",
        env=env,
        cwd=settings.BASE_DIR,
    )
    assert result.returncode == 0, result.stderr
    assert result.left == ["./out.jsonl"]


def _vendor():
    from django.db import connection

    return connection.vendor


# ------------------------------------------------------------------ export: the API's parquet download


@pytest.mark.django_db
def test_parquet_download_on_a_full_disk_answers_507_and_closes_its_spool(project, alice, bob, monkeypatch):
    judged(project, bob)
    spools = []
    real_spool = downloads.tempfile.SpooledTemporaryFile

    def spool(*args, **kwargs):
        spools.append(real_spool(*args, **kwargs))
        return spools[-1]

    def full(rows, target, **kwargs):
        target.write(b"PAR1")
        raise OSError(errno.ENOSPC, "[Errno 28] Error writing bytes to file. Detail: No space left on device")

    monkeypatch.setattr(downloads.tempfile, "SpooledTemporaryFile", spool)
    monkeypatch.setattr(exporting, "write_parquet", full)
    response = client_for(alice).get(f"/api/v1/projects/{project.pk}/export/", {"format": "parquet"})
    assert response.status_code == 507
    assert response.json() == {
        "detail": "the server has no space left on its disk to store this; nothing was saved",
        "code": "no_space",
    }
    assert spools and spools[0].closed


# ------------------------------------------------------------------ import: the upload


def _written():
    return (Prompt.objects.count(), Output.objects.count(), Task.objects.count())


@pytest.mark.django_db
def test_an_upload_that_fills_the_disk_answers_507_leaves_no_temporary_file_and_imports_nothing(
    project, alice, settings, tmp_path, monkeypatch
):
    # Uploads over 1 KB are spooled to a file in FILE_UPLOAD_TEMP_DIR; the disk fills at the second chunk.
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings.FILE_UPLOAD_TEMP_DIR = str(uploads)
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024
    written = []

    def write(self):
        def fill(data):
            if written:
                raise ENOSPC
            written.append(len(data))
            return self.file.write(data)

        return fill

    monkeypatch.setattr(TemporaryUploadedFile, "write", property(write))
    lines = "".join(
        json.dumps({"external_id": f"p{i}", "text": "Summarise. " * 200}) + "\n" for i in range(200)
    )
    before = _written()
    response = client_for(alice).post(
        f"/api/v1/projects/{project.pk}/import/",
        {"file": SimpleUploadedFile("prompts.jsonl", lines.encode())},
        format="multipart",
    )
    assert written, "the upload was not spooled to disk: the test proved nothing"
    assert response.status_code == 507, response.content
    assert response.json()["code"] == "no_space"
    assert list(uploads.iterdir()) == []
    assert _written() == before


# ------------------------------------------------------------------ import: the database server's disk


def _disk_full():
    import psycopg
    from django.db import OperationalError

    try:
        raise OperationalError("could not extend file: No space left on device") from psycopg.errors.DiskFull(
            "could not extend file"
        )
    except OperationalError as error:
        return error


@pytest.mark.django_db
def test_an_import_that_fills_the_database_servers_disk_answers_507(project, alice, monkeypatch):
    from annotation.services import prompts

    monkeypatch.setattr(prompts, "prompts_import", lambda **kwargs: (_ for _ in ()).throw(_disk_full()))
    response = client_for(alice).post(
        f"/api/v1/projects/{project.pk}/import/",
        {"rows": [{"external_id": "p1", "text": "Summarise."}]},
        format="json",
    )
    assert response.status_code == 507
    assert response.json()["code"] == "no_space"


@pytest.mark.django_db
def test_the_import_command_says_the_database_server_is_full(project, tmp_path, monkeypatch):
    from annotation.services import prompts

    source = tmp_path / "prompts.jsonl"
    source.write_text(json.dumps({"external_id": "p1", "text": "Summarise."}) + "\n")
    monkeypatch.setattr(prompts, "prompts_import", lambda **kwargs: (_ for _ in ()).throw(_disk_full()))
    with pytest.raises(
        CommandError, match="the database server has no space left on its disk: nothing was imported"
    ):
        call_command(
            "import_prompts", str(project.pk), str(source), stdout=io.StringIO(), stderr=io.StringIO()
        )
