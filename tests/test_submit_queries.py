"""The hot path's SQL statements, pinned, and its hand-built answers checked against the serializers.

Submit-and-next runs once per judgment: a change that adds a statement to it shows here (and in
bench/request_cpu.py), whatever the machine's speed.
"""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.api import serializers as s
from annotation.models import Judgment, Lease, Membership, Project
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire, lease_skip
from tests.factories import QUESTIONS, make_tasks, single_answers

# Token lookup 1; the submission: task locked 1, lease with project and live leases 1, the
# writes 1 on PostgreSQL (4 on SQLite: judgment, answers, lease, task); the next lease:
# membership 1, then on PostgreSQL held leases, the rater's place found and moved on and the
# candidate locked 1, live leases, lease written and the task's content 1 (on SQLite: held leases
# 1, place found 1 and recorded 1, candidate 1, live leases with the content 1, lease written 1).
# Nothing is written for the curators' statistics (annotation.models.StatsVersion counts judgments
# when a page is viewed). A project that asks for fixes reads its outputs' length too.
STATEMENTS = {"postgresql": 7, "sqlite": 14}
WITHOUT_FIXES = [q for q in QUESTIONS if q["kind"] != "fix"]


def _statements(captured) -> list[str]:
    # Savepoints are the test's own transaction around the service's atomic blocks.
    return [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]


@pytest.mark.parametrize("fixes", [False, True], ids=["no-fix-question", "fix-question"])
@pytest.mark.django_db
def test_submit_and_next_runs_a_fixed_number_of_statements(bob, fixes, django_capture_on_commit_callbacks):
    project = Project.objects.create(
        name="Pinned", questions=QUESTIONS if fixes else WITHOUT_FIXES, overlap=2, lease_seconds=600
    )
    Membership.objects.create(user=bob, project=project)
    make_tasks(project, 3)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=bob).key}")
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    answers = {k: v for k, v in single_answers().items() if fixes or k != "fix"}
    for _ in range(2):
        with CaptureQueriesContext(connection) as captured, django_capture_on_commit_callbacks(execute=True):
            response = client.post(
                f"/api/v1/leases/{lease['id']}/submit/?next=1",
                {"answers": answers, "time_spent_ms": 1200},
                format="json",
            )
        assert response.status_code == 201, response.content
        statements = _statements(captured)
        expected = STATEMENTS[connection.vendor] + fixes
        assert len(statements) == expected, "\n".join(statements)
        lease = response.json()["next"]


@pytest.mark.django_db
def test_hand_built_answers_are_the_serializers_answers(project, bob):
    make_tasks(project, 1, kind="pairwise", prefix="pw")
    make_tasks(project, 1)
    pairwise = lease_acquire(project=project, rater=bob)
    assert pairwise.task.kind == "pairwise"
    assert s.lease_data(pairwise) == s.LeaseSerializer(pairwise).data
    stored = Lease.objects.select_related("task__project").get(pk=pairwise.pk)
    assert s.lease_data(stored) == s.LeaseSerializer(stored).data
    lease_skip(lease_id=pairwise.pk, rater=bob)
    lease = lease_acquire(project=project, rater=bob)
    submission = judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers(), time_spent_ms=900)
    judgment = submission.judgment
    context = {"answers": submission.answers}
    assert (
        s.judgment_data(judgment, submission.answers) == s.JudgmentSerializer(judgment, context=context).data
    )
    stored = Judgment.objects.get(pk=judgment.pk)
    assert s.judgment_data(stored) == s.JudgmentSerializer(stored).data
    assert s.judgment_data(stored) == s.judgment_data(judgment, submission.answers)


def _serializers_payload(data, query) -> dict:
    body = s.SubmitSerializer(data=data)
    assert body.is_valid()
    payload = dict(body.validated_data)
    if not payload["next"]:
        parsed = s.SubmitQuerySerializer(data=query)
        assert parsed.is_valid()
        payload["next"] = parsed.validated_data["next"]
    return payload


@pytest.mark.parametrize(
    "data, query",
    [
        ({"answers": {"feedback": "ok"}}, {}),
        ({"answers": {"feedback": "ok"}, "time_spent_ms": 0}, {"next": "1"}),
        ({"answers": {"feedback": "ok"}, "time_spent_ms": 24 * 3600 * 1000, "next": True}, {}),
        ({"answers": {}, "next": False}, {"next": "false"}),
        ({"answers": {"a": [1, {"b": None}]}}, {"next": "true", "other": "x"}),
    ],
)
def test_a_plainly_valid_submission_reads_as_the_serializers_read_it(data, query):
    from django.http import QueryDict

    query_dict = QueryDict(mutable=True)
    query_dict.update(query)
    payload = s.submit_payload(data, query_dict)
    assert payload is not None
    assert payload == _serializers_payload(data, query_dict)


@pytest.mark.parametrize(
    "data, query",
    [
        ({"answers": {"feedback": "ok"}, "time_spent_ms": "12"}, {}),  # the serializer's to say
        ({"answers": {"feedback": "ok"}, "time_spent_ms": -1}, {}),
        ({"answers": {"feedback": "ok"}, "time_spent_ms": 24 * 3600 * 1000 + 1}, {}),
        ({"answers": {"feedback": "ok"}, "time_spent_ms": True}, {}),
        ({"answers": {"feedback": "ok"}, "time_spent_ms": None}, {}),
        ({"answers": {"feedback": "ok"}, "next": "yes"}, {}),
        ({"answers": {"feedback": "ok"}, "next": None}, {}),
        ({"answers": {"feedback": "ok"}}, {"next": "perhaps"}),
        ({"answers": {"feedback": "ok"}}, {"next": ""}),
        ({"answers": {"feedback": "a\x00b"}}, {}),
        ({"answers": ["feedback"]}, {}),
        ({"answers": {"feedback": "ok"}, "extra": 1}, {}),
        ({}, {}),
        ([], {}),
    ],
)
def test_anything_else_is_left_to_the_serializers(data, query):
    from django.http import QueryDict

    query_dict = QueryDict(mutable=True)
    query_dict.update(query)
    assert s.submit_payload(data, query_dict) is None
