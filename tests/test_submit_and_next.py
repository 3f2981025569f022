"""Submitting a judgment and taking the next task in one request (`?next=1` or `"next": true`)."""

import pytest
from django.db import OperationalError, connection
from rest_framework.test import APIClient

from annotation.models import Judgment, Lease, Membership
from annotation.services import judgments
from tests.factories import make_tasks, single_answers


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def _lease(client, project) -> dict:
    response = client.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert response.status_code == 200
    return response.json()


def _submit(client, lease_id, url_suffix="", **body):
    return client.post(
        f"/api/v1/leases/{lease_id}/submit/{url_suffix}", {"answers": single_answers(), **body}, format="json"
    )


@pytest.mark.parametrize("how", ["query", "body"])
@pytest.mark.django_db
def test_submit_with_next_answers_the_saved_judgment_and_the_next_lease(project, bob, how):
    make_tasks(project, 2)
    client = api(bob)
    first = _lease(client, project)
    response = (
        _submit(client, first["id"], "?next=1") if how == "query" else _submit(client, first["id"], next=True)
    )
    assert response.status_code == 201
    body = response.json()
    judgment = Judgment.objects.get(lease_id=first["id"])
    assert body["judgment"]["id"] == judgment.pk and body["judgment"]["lease"] == first["id"]
    assert body["judgment"]["answers"]["feedback"] == "Mention the deadline."
    assert body["next_error"] is None
    following = body["next"]
    assert following["task"]["id"] != first["task"]["id"]
    assert Lease.objects.get(pk=following["id"]).is_live()
    # It is the lease next-task would hand out: asking now gives the same one back.
    assert _lease(client, project)["id"] == following["id"]


@pytest.mark.django_db
def test_submit_with_next_on_the_last_task_answers_next_null(project, bob):
    make_tasks(project, 1)
    client = api(bob)
    lease = _lease(client, project)
    response = _submit(client, lease["id"], "?next=1")
    assert response.status_code == 201
    assert response.json()["next"] is None and response.json()["next_error"] is None
    assert Judgment.objects.filter(lease_id=lease["id"]).exists()


@pytest.mark.django_db
def test_without_next_the_submission_answers_the_judgment_alone(project, bob):
    make_tasks(project, 2)
    client = api(bob)
    lease = _lease(client, project)
    response = _submit(client, lease["id"], "?next=0")
    assert response.status_code == 201
    assert response.json()["id"] == Judgment.objects.get().pk and "next" not in response.json()
    assert Lease.objects.filter(rater=bob).count() == 1  # no next lease taken


@pytest.mark.django_db
def test_a_retried_submit_with_next_answers_200_the_same_judgment_and_the_lease_held(project, bob):
    make_tasks(project, 3)
    client = api(bob)
    lease = _lease(client, project)
    first = _submit(client, lease["id"], "?next=1").json()
    again = _submit(client, lease["id"], "?next=1")
    assert again.status_code == 200
    assert again.json()["judgment"]["id"] == first["judgment"]["id"]
    assert again.json()["next"]["id"] == first["next"]["id"]  # not a second new lease
    assert Judgment.objects.count() == 1 and Lease.objects.filter(rater=bob).count() == 2


@pytest.mark.django_db
def test_a_refused_submission_with_next_takes_no_lease(project, bob):
    make_tasks(project, 2)
    client = api(bob)
    lease = _lease(client, project)
    assert client.post(f"/api/v1/leases/{lease['id']}/skip/").status_code == 200
    response = _submit(client, lease["id"], "?next=1")
    assert response.status_code == 409 and response.json()["code"] == "lease_skipped"
    assert Lease.objects.filter(rater=bob).count() == 1 and not Judgment.objects.exists()


@pytest.mark.django_db
def test_a_bad_next_flag_is_refused_before_anything_is_saved(project, bob):
    make_tasks(project, 2)
    client = api(bob)
    lease = _lease(client, project)
    response = _submit(client, lease["id"], "?next=perhaps")
    assert response.status_code == 400 and response.json()["field"] == "next"
    assert not Judgment.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_judgment_is_committed_before_the_next_lease_is_taken(project, bob, monkeypatch):
    make_tasks(project, 2)
    client = api(bob)
    lease = _lease(client, project)
    seen = []
    real = judgments.lease_acquire

    def acquire(**kwargs):
        seen.append((connection.in_atomic_block, Judgment.objects.filter(lease_id=lease["id"]).exists()))
        return real(**kwargs)

    monkeypatch.setattr(judgments, "lease_acquire", acquire)
    assert _submit(client, lease["id"], next=True).status_code == 201
    assert seen == [(False, True)]  # outside any transaction, with the judgment already there


@pytest.mark.django_db
def test_when_the_next_lease_is_refused_the_judgment_stays_saved_and_the_answer_says_why(
    project, bob, monkeypatch
):
    make_tasks(project, 2)
    client = api(bob)
    lease = _lease(client, project)
    real = judgments.lease_acquire

    def removed_meanwhile(**kwargs):  # a curator removes the rater between the two steps
        Membership.objects.filter(user=bob, project=project).update(is_active=False)
        return real(**kwargs)

    monkeypatch.setattr(judgments, "lease_acquire", removed_meanwhile)
    response = _submit(client, lease["id"], "?next=1")
    assert response.status_code == 201
    body = response.json()
    assert body["next"] is None
    assert body["next_error"]["code"] == "not_a_member"
    assert Judgment.objects.get().pk == body["judgment"]["id"]


@pytest.mark.django_db
def test_a_busy_database_on_the_next_lease_keeps_the_judgment(project, bob, monkeypatch):
    make_tasks(project, 2)
    client = api(bob)
    lease = _lease(client, project)

    def busy(**kwargs):
        raise OperationalError("canceling statement due to lock timeout")

    monkeypatch.setattr(judgments, "lease_acquire", busy)
    response = _submit(client, lease["id"], "?next=1")
    assert response.status_code == 201
    assert response.json()["next"] is None and response.json()["next_error"]["code"] == "busy"
    assert "saved" in response.json()["next_error"]["detail"]
    assert Judgment.objects.filter(lease_id=lease["id"]).exists()
