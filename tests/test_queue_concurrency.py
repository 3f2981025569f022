"""Many raters asking for tasks and submitting at once, on the database under test.

Run against PostgreSQL (row locks, SKIP LOCKED) and SQLite (BEGIN IMMEDIATE) by `make test`.
"""

import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from annotation.errors import LeaseExpired
from annotation.models import Judgment, Lease, Membership, Task
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire, lease_skip
from tests.factories import make_tasks, single_answers

N_TASKS = 40
N_RATERS = 12
OVERLAP = 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_raters_never_overcollect_duplicate_or_lose_a_submission(project, django_user_model):
    project.overlap = OVERLAP
    project.save()
    make_tasks(project, N_TASKS)
    raters = []
    for i in range(N_RATERS):
        rater = django_user_model.objects.create_user(f"rater{i}")
        Membership.objects.create(user=rater, project=project)
        raters.append(rater)

    acknowledged: list[int] = []  # judgment ids the "client" was told were saved
    refused: Counter = Counter()
    errors: list[BaseException] = []
    start = threading.Barrier(N_RATERS)
    lock = threading.Lock()

    def work(rater, seed):
        rng = random.Random(seed)
        try:
            start.wait()
            while True:
                # Some raters come back from a break: their lease ran out long ago.
                stale = rng.random() < 0.1
                now = timezone.now() - timedelta(hours=1) if stale else None
                lease = lease_acquire(project=project, rater=rater, now=now)
                if lease is None:
                    return
                if rng.random() < 0.1:
                    lease_skip(lease_id=lease.pk, rater=rater)
                    continue
                try:
                    submission = judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers())
                except LeaseExpired:
                    with lock:
                        refused["expired"] += 1
                    continue
                assert submission.created
                with lock:
                    acknowledged.append(submission.judgment.pk)
                if rng.random() < 0.2:  # a client that retries after a lost response
                    again = judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers())
                    assert not again.created and again.judgment.pk == submission.judgment.pk
        except BaseException as error:  # surfaced below with its traceback
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(r, i)) for i, r in enumerate(raters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a rater thread hung"
    if errors:
        raise errors[0]

    judgments = list(Judgment.objects.values_list("task_id", "rater_id"))
    per_task = Counter(task_id for task_id, _ in judgments)
    assert max(per_task.values()) <= OVERLAP, "a task collected more than `overlap` judgments"
    assert len(set(judgments)) == len(judgments), "a rater judged the same task twice"
    stored = set(Judgment.objects.values_list("pk", flat=True))
    assert set(acknowledged) <= stored, "an acknowledged submission is missing"
    assert len(acknowledged) == len(stored)
    for task in Task.objects.filter(project=project):
        assert task.judgment_count == per_task.get(task.pk, 0)
    # Nothing is stuck: draining the queue one rater at a time fills every task that still
    # has raters who may judge it.
    for rater in raters:
        while (lease := lease_acquire(project=project, rater=rater)) is not None:
            judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers())
    for task in Task.objects.filter(project=project, judgment_count__lt=OVERLAP):
        excluded = Lease.objects.filter(task=task).exclude(state=Lease.State.ACTIVE).count()
        assert N_RATERS - excluded == 0, f"task {task.pk} has room and willing raters but was not handed out"
    assert connection.vendor in {"postgresql", "sqlite"}
    assert len(stored) > N_TASKS  # real work happened


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's row locks")
@pytest.mark.django_db(transaction=True)
def test_two_requests_waiting_for_each_others_task_give_up_instead_of_deadlocking(project, bob, monkeypatch):
    """A request whose candidates were all full or locked waits for a locked one, while still
    holding the full ones it passed over. Another holding that task and waiting for one of those
    would be a deadlock (one of the two requests failing after PostgreSQL's deadlock_timeout):
    the wait gives up after WAIT_FOR_LOCKED_MS instead, and both go on."""
    import psycopg

    from annotation.services import leases

    first, second = make_tasks(project, 2)
    Membership.objects.get_or_create(user=bob, project=project)
    # The first task is found full under the lock (as when another rater's lease committed after
    # the candidate query's snapshot): passed over, it stays locked by bob's request.
    monkeypatch.setattr(leases, "_lease_if_room", lambda task, **kw: None)
    monkeypatch.setattr(leases, "room_left", lambda task, **kw: 0 if task.pk == first.pk else 1)
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    outcome: dict = {}
    with psycopg.connect(**params) as other:  # another request, holding the second task
        other.execute("SELECT id FROM annotation_task WHERE id = %s FOR UPDATE", [second.pk])

        def request():
            try:
                outcome["lease"] = lease_acquire(project=project, rater=bob)
            except BaseException as error:
                outcome["error"] = error
            finally:
                connections.close_all()

        thread = threading.Thread(target=request)
        thread.start()
        # Wait until bob's request holds the first task and waits for the second, then ask for
        # the first: the two now wait for each other.
        for _ in range(200):
            waiting = other.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            if waiting:
                break
            threading.Event().wait(0.01)
        other.execute("SET lock_timeout = '5s'")
        other.execute("SELECT id FROM annotation_task WHERE id = %s FOR UPDATE", [first.pk])
        other.rollback()
        thread.join(timeout=10)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["lease"] is None  # it gave the locked task up: nothing for bob this time
    assert not Lease.objects.filter(rater=bob).exists()
