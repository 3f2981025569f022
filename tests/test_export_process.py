"""Export downloads made in a child process (annotation.export_process, started by annotation.downloads):
the same bytes as an export made in the web process, for every kind and format; a failed child
breaks the download off and is logged; a download closed early kills and reaps its child.

The child reads only committed rows, so these tests use transactional databases.
"""

import io
import os
import signal
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from rest_framework.test import APIClient

from annotation import downloads, exporting
from annotation.models import Project
from config.priority import autogroup_nice, background_cgroup
from tests import test_export_equivalence as equivalence
from tests.cgroups import members
from tests.factories import make_tasks
from tests.factories import write_judgment as judge

transactional = pytest.mark.django_db(transaction=True)
rich = equivalence.rich
qa2 = equivalence.qa2


@pytest.fixture
def children(monkeypatch):
    """The child processes that downloads starts, as they are started."""
    started = []
    real = subprocess.Popen

    def popen(*args, **kwargs):
        child = real(*args, **kwargs)
        started.append(child)
        return child

    monkeypatch.setattr(downloads.subprocess, "Popen", popen)
    return started


def in_process(project, kind, fmt, statuses=None, round_number=None) -> bytes:
    rows = exporting.export_rows(project, kind=kind, statuses=statuses, round_number=round_number)
    return b"".join(exporting.file_chunks(rows, kind=kind, fmt=fmt))


def downloaded(response) -> bytes:
    try:
        return b"".join(response.streaming_content)
    finally:
        response.close()


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@transactional
@pytest.mark.parametrize("fmt", exporting.FORMATS)
def test_a_download_made_by_the_child_is_the_in_process_export_byte_for_byte(rich, qa2, children, fmt):
    cases = [(rich, kind, None, None) for kind in ("judgments", "sft", "preference", "refiner")]
    cases += [(qa2, "qa2", None, None), (rich, "judgments", ["rejected", "excluded"], 1)]
    cases += [(rich, "sft", ["accepted"], None), (rich, "preference", None, 2)]
    for project, kind, statuses, round_number in cases:
        response = downloads.export_response(
            project, kind=kind, fmt=fmt, statuses=statuses, round_number=round_number
        )
        got = downloaded(response)
        assert got == in_process(project, kind, fmt, statuses, round_number), (kind, statuses, round_number)
        if fmt == "parquet":
            assert pq.read_table(io.BytesIO(got)).num_rows > 0 or round_number is not None
        else:
            assert got.count(b"\n") > 1, kind
    assert len(children) == len(cases)
    assert all(child.returncode == 0 for child in children)


@transactional
def test_the_api_passes_its_filters_to_the_child(rich, alice, children):
    query = {"kind": "judgments", "format": "csv", "status": ["pending", "accepted"], "round": 2}
    response = client_for(alice).get(f"/api/v1/projects/{rich.pk}/export/", query)
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="summaries-judgments-round2.csv"'
    assert downloaded(response) == in_process(rich, "judgments", "csv", ["pending", "accepted"], 2)
    [child] = children
    assert child.args[3:9] == [str(rich.pk), "judgments", "csv", "--status", "pending", "--status"]


@transactional
def test_a_bad_parameter_is_refused_before_any_child_starts(project, alice, children):
    response = client_for(alice).get(f"/api/v1/projects/{project.pk}/export/", {"kind": "qa2"})
    assert response.status_code == 400
    assert "qa2 exports are for projects" in str(response.json())
    assert children == []


@transactional
def test_a_download_never_read_starts_no_child(project, alice, children, client):
    client.force_login(alice)
    response = client.get(f"/projects/{project.pk}/exports/judgments.jsonl")
    assert response.status_code == 200
    response.close()
    assert children == []


@pytest.mark.django_db
def test_inside_a_transaction_the_export_is_made_in_process(project, bob, alice, children):
    """A child would not see the rows this transaction has not committed."""
    judge(make_tasks(project, 1)[0], bob, {"fix": ("fix", "Uncommitted fix.")})
    response = client_for(alice).get(f"/api/v1/projects/{project.pk}/export/", {"kind": "sft"})
    assert b"Uncommitted fix." in downloaded(response)
    assert children == []


@transactional
def test_with_export_in_process_set_no_child_starts(project, bob, alice, children, settings):
    settings.EXPORT_IN_PROCESS = True
    judge(make_tasks(project, 1)[0], bob, {"fix": ("fix", "A fix.")})
    response = client_for(alice).get(f"/api/v1/projects/{project.pk}/export/", {"kind": "sft"})
    assert b"A fix." in downloaded(response)
    assert children == []


@transactional
def test_a_child_that_fails_breaks_the_download_off_and_its_error_is_logged(project, bob, children, caplog):
    judge(make_tasks(project, 1)[0], bob, {"fix": ("fix", "A fix.")})
    response = downloads.export_response(project, kind="sft", fmt="jsonl")
    Project.objects.filter(pk=project.pk).delete()  # gone before the child reads it
    with pytest.raises(downloads.ExportFailed, match="exited with 1"):
        downloaded(response)
    assert "DoesNotExist" in caplog.text  # the child's traceback
    [child] = children
    assert child.returncode == 1


def _big_export(project, rater, n=100):
    """About 1 MB of JSONL: more than the pipe and both ends' buffers hold, so a child whose
    output is not read stays blocked on its next write."""
    for task in make_tasks(project, n, prefix="big"):
        judge(task, rater, {"feedback": ("feedback", "Too long by far. " * 600)})


@transactional
def test_closing_a_download_early_kills_and_reaps_its_child(project, bob, alice, children, settings):
    settings.EXPORT_NICE = 3
    _big_export(project, bob)
    response = client_for(alice).get(f"/api/v1/projects/{project.pk}/export/", {"format": "jsonl"})
    chunks = iter(response.streaming_content)
    assert next(chunks).startswith(b'{"judgment_id": ')
    [child] = children
    assert child.poll() is None  # still at work, blocked on its output
    nice = min(19, os.getpriority(os.PRIO_PROCESS, 0) + 3)
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == nice
    # It leads a session, so a scheduling group, of its own, with the same nice value where the
    # kernel has autogroups: it takes no share of the web server's group (config.priority).
    assert os.getsid(child.pid) == child.pid
    assert autogroup_nice(child.pid) in (None, nice)
    # Where the machine lets it, it runs in the idle cgroup: a waking rater's process never waits.
    group = background_cgroup(settings.BACKGROUND_CGROUP)
    if group is not None:
        assert child.pid in members(group)

    response.close()  # what the server does when the client goes away

    assert child.returncode == -signal.SIGKILL
    with pytest.raises(ChildProcessError):  # already reaped: no zombie left
        os.waitpid(child.pid, os.WNOHANG)
    assert child.stdout.closed and child.stderr.closed


@transactional
def test_export_nice_zero_leaves_the_childs_priority_alone(project, bob, children, settings):
    settings.EXPORT_NICE = 0
    _big_export(project, bob)
    response = downloads.export_response(project, kind="judgments", fmt="jsonl")
    next(iter(response.streaming_content))
    [child] = children
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == os.getpriority(os.PRIO_PROCESS, 0)
    assert "--nice" not in child.args
    assert os.getsid(child.pid) == os.getsid(0)  # in the web server's session, as it is not niced
    response.close()
    assert child.returncode == -signal.SIGKILL


@transactional
def test_a_child_that_cannot_start_leaves_the_export_to_this_process(project, bob, monkeypatch, caplog):
    judge(make_tasks(project, 1)[0], bob, {"fix": ("fix", "A fix.")})
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    response = downloads.export_response(project, kind="sft", fmt="csv")
    assert downloaded(response) == in_process(project, "sft", "csv")
    assert "could not start the export process" in caplog.text


# ------------------------------------------------------------------ the pipe, with any program


def test_a_child_that_writes_much_to_standard_error_does_not_block_and_its_end_is_logged(caplog):
    script = (
        "import sys\n"
        "sys.stderr.write('noise ' * 100000 + 'the real error')\n"
        "sys.stdout.write('partial output')\n"
        "sys.exit(3)\n"
    )
    chunks = downloads.child_chunks([sys.executable, "-c", script], fallback=list)
    with pytest.raises(downloads.ExportFailed, match="exited with 3"):
        assert b"".join(chunk for chunk in chunks) == b"partial output"
    assert caplog.text.rstrip().endswith("the real error")
    assert len(caplog.text) < 2 * downloads.STDERR_KEPT_BYTES


def test_what_came_before_a_failure_is_sent_then_the_stream_raises():
    script = "import sys; sys.stdout.write('x' * 200000); sys.stdout.flush(); sys.exit(2)"
    got = bytearray()
    with pytest.raises(downloads.ExportFailed):
        for chunk in downloads.child_chunks([sys.executable, "-c", script], fallback=list):
            got += chunk
    assert bytes(got) == b"x" * 200000
