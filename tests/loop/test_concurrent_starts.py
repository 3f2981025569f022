"""Two starts at once for one project: exactly one round runs. Real concurrent transactions on
PostgreSQL (threads, each with its own connection), through the service and through the API."""

import threading

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient

from feedback_loop import services, tasks
from feedback_loop.models import Round

pytestmark = pytest.mark.postgres

STARTERS = 6


@pytest.fixture
def concurrent(transactional_db, monkeypatch):
    if connection.vendor != "postgresql":
        pytest.skip("concurrent transactions: PostgreSQL only")
    sent = []
    monkeypatch.setattr(tasks, "enqueue_step", lambda round_id, state, **kw: sent.append((round_id, state)))

    def run(work, n):
        """Run `work(i)` in n threads released together; what each returned or raised."""
        barrier = threading.Barrier(n)
        results = [None] * n

        def one(i):
            try:
                barrier.wait()
                results[i] = work(i)
            except Exception as error:
                results[i] = error
            finally:
                connections.close_all()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        return results

    run.sent = sent
    return run


def test_concurrent_starts_of_one_project_start_one_round(project, alice, concurrent):
    results = concurrent(lambda i: services.round_start(project=project, user=alice, reason=f"{i}"), STARTERS)
    started = [r for r in results if isinstance(r, Round)]
    refused = [r for r in results if isinstance(r, services.RoundInProgress)]
    assert (len(started), len(refused)) == (1, STARTERS - 1), results
    assert list(Round.objects.values_list("pk", "number")) == [(started[0].pk, 1)]
    assert concurrent.sent == [(started[0].pk, "pending")]  # one first step sent


def test_two_api_starts_at_once_give_one_201_and_one_409(project, alice, concurrent):
    def post(i):
        client = APIClient()
        client.force_authenticate(alice)
        response = client.post(f"/api/v1/projects/{project.pk}/rounds/", {"reason": f"{i}"}, format="json")
        return response.status_code, response.json()

    results = concurrent(post, 2)
    assert sorted(status for status, _ in results) == [201, 409], results
    assert [body["code"] for status, body in results if status == 409] == ["round_in_progress"]
    assert Round.objects.count() == 1
