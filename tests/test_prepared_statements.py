"""The statements run on every task are prepared on PostgreSQL (config.postgresql): each is parsed
and planned once per connection, then executed with new values. They are still logged and
counted with their values, and DATABASE_PREPARED_STATEMENTS=0 turns preparation off."""

from itertools import count

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Judgment, Membership, Project
from tests.factories import QUESTIONS, make_tasks, single_answers

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's prepared statements")

WITHOUT_FIXES = [q for q in QUESTIONS if q["kind"] != "fix"]
_names = count()


def _prepared() -> dict[str, str]:
    """{name: statement} of this connection's prepared statements."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT name, statement FROM pg_prepared_statements")
        return dict(cursor.fetchall())


def _rate(bob, submissions: int) -> tuple[Project, list]:
    """A project of bob's, his first lease taken and `submissions` submit-and-next calls made; the
    statements of the last one, as the test runner captured them."""
    project = Project.objects.create(
        name=f"Prepared {next(_names)}", questions=WITHOUT_FIXES, overlap=1, lease_seconds=600
    )
    Membership.objects.create(user=bob, project=project)
    make_tasks(project, submissions + 2)
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=bob)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    for _ in range(submissions):
        with CaptureQueriesContext(connection) as captured:
            response = client.post(
                f"/api/v1/leases/{lease['id']}/submit/?next=1",
                {"answers": single_answers(), "time_spent_ms": 900},
                format="json",
            )
        assert response.status_code == 201, response.content
        lease = response.json()["next"]
    return project, captured.captured_queries


@pytest.mark.django_db
def test_the_hot_statements_are_prepared_once_and_reused_and_the_queue_scans_are_not(bob):
    _rate(bob, 1)
    prepared = _prepared()
    texts = " ".join(prepared.values())
    # The token's lookup, the submission's task, lease and writes, the next lease's membership and
    # the lease written (earlier tests on this connection may have prepared some already).
    for table in (
        "authtoken_token",
        "annotation_judgment",
        "annotation_membership",
        "annotation_lease",
    ):
        assert table in texts, table
    assert all("$1" in sql for sql in prepared.values())  # values bound by the server, not in the text
    # The queue's scan is planned with its values every time.
    assert "SKIP LOCKED" not in texts and "WITH held AS" not in texts

    project, captured = _rate(bob, 3)  # another project, more submissions: the same statements
    assert set(_prepared()) == set(prepared)
    assert Judgment.objects.filter(project=project, rater=bob).count() == 3
    # Logged with their values, as the ORM's are.
    assert all("$1" not in query["sql"] for query in captured), captured
    assert any(f"{project.pk}" in query["sql"] for query in captured)


@pytest.mark.django_db
def test_turned_off_nothing_is_prepared(bob, settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    before = _prepared()
    project, _ = _rate(bob, 2)
    assert _prepared() == before
    assert Judgment.objects.filter(project=project, rater=bob).count() == 2


@pytest.mark.django_db
def test_a_prepared_statement_outlives_a_rolled_back_transaction(bob):
    """A rollback (a failed submission's, a test's) makes psycopg deallocate what it prepared; the
    next call prepares again instead of naming a statement the backend no longer has."""
    from django.db import transaction

    _rate(bob, 1)
    with pytest.raises(ZeroDivisionError), transaction.atomic():
        _rate(bob, 1)
        1 / 0  # noqa: B018
    project, captured = _rate(bob, 2)
    assert captured and Judgment.objects.filter(project=project, rater=bob).count() == 2
    assert any("annotation_lease" in sql for sql in _prepared().values())
