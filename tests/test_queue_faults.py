"""The queue against raters who misbehave: hoarders asking as fast as they can, and raters who
take tasks and never answer.

The threaded tests give each thread its own connection, as tests/test_queue_concurrency.py does;
on PostgreSQL they exercise the row locks, on SQLite the serialised transactions.
"""

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import connections
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from annotation.errors import LeaseExpired
from annotation.models import Judgment, Lease, Membership, Task
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire
from tests.factories import make_tasks, single_answers


def _raters(project, django_user_model, n, prefix="rater"):
    raters = []
    for i in range(n):
        rater = django_user_model.objects.create_user(f"{prefix}{i}")
        Membership.objects.create(user=rater, project=project)
        raters.append(rater)
    return raters


def _run(threads: list[threading.Thread], errors: list[BaseException]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def _live_leases(rater) -> int:
    return Lease.objects.filter(rater=rater, state=Lease.State.ACTIVE, expires_at__gt=timezone.now()).count()


# ---------------------------------------------------------------- hoarding


@pytest.mark.django_db
def test_a_rater_holds_at_most_max_pending_leases_and_then_gets_the_oldest_back(project, bob):
    project.max_pending_per_rater = 3
    project.save()
    make_tasks(project, 6)
    first, second, third = (lease_acquire(project=project, rater=bob) for _ in range(3))
    assert len({first.task_id, second.task_id, third.task_id}) == 3
    assert [lease_acquire(project=project, rater=bob).pk for _ in range(3)] == [first.pk] * 3
    assert _live_leases(bob) == 3
    # Answering one frees a place: the next call hands a task not held yet.
    judgment_submit(lease_id=second.pk, rater=bob, answers=single_answers())
    fourth = lease_acquire(project=project, rater=bob)
    assert fourth.task_id not in {first.task_id, second.task_id, third.task_id}
    assert _live_leases(bob) == 3


@pytest.mark.django_db
def test_by_default_a_rater_holds_one_lease_per_project(project, bob):
    make_tasks(project, 3)
    assert project.max_pending_per_rater == 1
    leases = {lease_acquire(project=project, rater=bob).pk for _ in range(4)}
    assert len(leases) == 1 and _live_leases(bob) == 1


@pytest.mark.django_db
def test_expired_leases_do_not_count_against_the_limit(project, bob):
    project.max_pending_per_rater = 2
    project.save()
    make_tasks(project, 4)
    long_ago = timezone.now() - timedelta(hours=1)
    stale = [lease_acquire(project=project, rater=bob, now=long_ago) for _ in range(2)]
    fresh = {lease_acquire(project=project, rater=bob).pk for _ in range(3)}
    assert len(fresh) == 2 and _live_leases(bob) == 2
    assert all(not lease.is_live() for lease in stale)


@pytest.mark.parametrize("max_pending", [1, 3])
@pytest.mark.django_db(transaction=True)
def test_concurrent_calls_of_one_rater_never_hold_more_than_max_pending(
    project, bob, django_user_model, max_pending
):
    project.max_pending_per_rater = max_pending
    project.save()
    make_tasks(project, 30)
    n_threads, calls = 8, 6
    handed: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)
    lock = threading.Lock()

    def hoard():
        try:
            start.wait()
            for _ in range(calls):
                lease = lease_acquire(project=project.pk, rater=bob)
                with lock:
                    handed.append(lease.pk)
        except BaseException as error:  # surfaced below with its traceback
            errors.append(error)
        finally:
            connections.close_all()

    _run([threading.Thread(target=hoard) for _ in range(n_threads)], errors)
    assert len(handed) == n_threads * calls
    assert len(set(handed)) == max_pending, "a rater holds more leases than the project allows"
    assert Lease.objects.filter(rater=bob).count() == max_pending
    assert _live_leases(bob) == max_pending


@pytest.fixture
def low_next_task_rate(monkeypatch):
    # DRF reads the rates once, into the class: set them there.
    monkeypatch.setattr(
        SimpleRateThrottle, "THROTTLE_RATES", {"user": "1000/min", "anon": "1000/min", "next_task": "3/min"}
    )
    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
def test_next_task_calls_over_the_rate_get_429_with_retry_after_per_rater(
    project, bob, django_user_model, low_next_task_rate
):
    make_tasks(project, 3)
    (carol,) = _raters(project, django_user_model, 1, prefix="carol")
    client = APIClient()
    client.force_authenticate(bob)
    url = f"/api/v1/projects/{project.pk}/next-task/"
    assert [client.post(url).status_code for _ in range(4)] == [200, 200, 200, 429]
    response = client.post(url)
    assert response.status_code == 429
    assert response.json()["code"] == "throttled"
    assert 0 < int(response["Retry-After"]) <= 60
    # The limit is on next-task alone ...
    assert client.get(f"/api/v1/projects/{project.pk}/progress/").status_code == 200
    assert Lease.objects.filter(rater=bob).count() == 1
    # ... and counted per rater: another rater of the project is not held back.
    other = APIClient()
    other.force_authenticate(carol)
    assert other.post(url).status_code == 200


# ---------------------------------------------------------------- raters who never answer

LEASE_SECONDS = 30
OVERLAP = 3


@pytest.mark.django_db(transaction=True)
def test_leases_of_raters_who_never_answer_return_to_the_pool_and_overlap_stays_exact(
    project, django_user_model
):
    """20 raters, 2 of whom take tasks and never answer, on a project with a short lease. Time
    is a shared simulated clock, moved on by whoever finds the queue empty for them (they wait,
    then ask again)."""
    project.overlap = OVERLAP
    project.lease_seconds = LEASE_SECONDS
    project.save()
    n_tasks = 24
    make_tasks(project, n_tasks)
    workers = _raters(project, django_user_model, 18, prefix="worker")
    stuck = _raters(project, django_user_model, 2, prefix="stuck")

    clock = {"now": timezone.now()}
    lock = threading.Lock()

    def now():
        with lock:
            return clock["now"]

    def wait(seconds):
        with lock:
            clock["now"] += timedelta(seconds=seconds)

    def all_complete() -> bool:
        return not Task.objects.filter(project=project, status=Task.Status.OPEN).exists()

    # The silent raters take their tasks first, so that the queue cannot finish without them.
    stuck_tasks = {lease_acquire(project=project, rater=rater, now=now()).task_id for rater in stuck}
    acknowledged: list[int] = []
    refused: Counter = Counter()
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers) + len(stuck))

    def answer(rater):
        try:
            start.wait()
            for _ in range(2000):
                lease = lease_acquire(project=project, rater=rater, now=now())
                if lease is None:
                    if all_complete():
                        return
                    wait(5)  # nothing for this rater now: come back later
                    continue
                try:
                    submission = judgment_submit(
                        lease_id=lease.pk, rater=rater, answers=single_answers(), now=now()
                    )
                except LeaseExpired:  # others' waiting outlasted this lease, and the task filled
                    with lock:
                        refused["expired"] += 1
                    continue
                with lock:
                    acknowledged.append(submission.judgment.pk)
            raise AssertionError(f"{rater} was still working after 2000 requests")
        except BaseException as error:  # surfaced below with its traceback
            errors.append(error)
        finally:
            connections.close_all()

    def take_and_vanish(rater):
        # Comes back twice after its lease ran out, takes another task, and answers nothing.
        try:
            start.wait()
            for _ in range(2):
                held = Lease.objects.filter(rater=rater).latest("id")
                for _ in range(100_000):
                    if now() > held.expires_at or all_complete():
                        break
                    threading.Event().wait(0.001)
                lease = lease_acquire(project=project, rater=rater, now=now())
                if lease is None:
                    return
                with lock:
                    stuck_tasks.add(lease.task_id)
        except BaseException as error:  # surfaced below with its traceback
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=answer, args=(r,)) for r in workers]
    threads += [threading.Thread(target=take_and_vanish, args=(r,)) for r in stuck]
    _run(threads, errors)

    per_task = Counter(Judgment.objects.filter(project=project).values_list("task_id", flat=True))
    assert all_complete()
    assert {task_id: per_task[task_id] for task_id in per_task if per_task[task_id] != OVERLAP} == {}
    assert len(per_task) == n_tasks and sum(per_task.values()) == n_tasks * OVERLAP
    assert set(Task.objects.filter(project=project).values_list("judgment_count", flat=True)) == {OVERLAP}
    assert not Judgment.objects.filter(rater__in=stuck).exists()
    # The silent raters' tasks went back to the pool and were judged by others: a live lease
    # holds a place, so each was filled by `overlap` others only once its lease had run out.
    assert stuck_tasks and all(per_task[task_id] == OVERLAP for task_id in stuck_tasks)
    stored = set(Judgment.objects.filter(project=project).values_list("pk", flat=True))
    assert set(acknowledged) == stored, "an acknowledged judgment is missing, or one was not acknowledged"
