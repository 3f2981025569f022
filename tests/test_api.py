"""The REST API: access rules, the queue over HTTP, validation with named fields, bulk creates."""

from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from annotation.models import Judgment, Lease, Membership, Output, Prompt, Task
from tests.factories import make_tasks, single_answers

pytestmark = pytest.mark.django_db


def client_for(user=None, *, token=False):
    client = APIClient()
    if user is not None:
        if token:
            client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
        else:
            client.force_authenticate(user)
    return client


def test_anonymous_requests_are_refused(project):
    assert APIClient().get("/api/v1/projects/").status_code in (401, 403)
    assert APIClient().post(f"/api/v1/projects/{project.pk}/next-task/").status_code in (401, 403)


def test_token_authentication_works(project, bob):
    response = client_for(bob, token=True).get("/api/v1/projects/")
    assert response.status_code == 200
    assert [p["name"] for p in response.json()["results"]] == ["Summaries"]


def test_unknown_token_and_deactivated_users_token_are_refused(project, bob):
    client = client_for(bob, token=True)
    assert client.get("/api/v1/projects/").status_code == 200
    bob.is_active = False
    bob.save()
    refused = client.get("/api/v1/projects/")
    assert refused.status_code == 401 and refused.json()["detail"] == "User inactive or deleted."
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")
    refused = client.get("/api/v1/projects/")
    assert refused.status_code == 401 and refused.json()["detail"] == "Invalid token."


def test_rater_sees_only_their_projects(project, other_project, bob, charlie):
    assert [p["id"] for p in client_for(bob).get("/api/v1/projects/").json()["results"]] == [project.pk]
    assert client_for(charlie).get("/api/v1/projects/").json()["results"] == []
    assert client_for(bob).get(f"/api/v1/projects/{other_project.pk}/").status_code == 404


def test_next_task_then_submit_over_http(project, bob):
    make_tasks(project, 1)
    client = client_for(bob)
    response = client.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert response.status_code == 200
    lease = response.json()
    assert lease["task"]["outputs"][0]["text"] == "Output 0 for post 0."
    assert {q["name"] for q in lease["task"]["questions"]} == {"quality", "feedback", "fix", "assumptions"}
    submitted = client.post(
        f"/api/v1/leases/{lease['id']}/submit/",
        {"answers": single_answers(), "time_spent_ms": 3000},
        format="json",
    )
    assert submitted.status_code == 201, submitted.json()
    assert submitted.json()["answers"]["quality"] == {"helpful": 5, "accurate": 6}
    assert client.post(f"/api/v1/projects/{project.pk}/next-task/").status_code == 204


def test_retried_submit_answers_200_with_the_same_judgment(project, bob):
    make_tasks(project, 1)
    client = client_for(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    first = client.post(f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json")
    again = client.post(f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and Judgment.objects.count() == 1


def test_invalid_answer_gets_400_naming_the_field_and_writes_nothing(project, bob):
    make_tasks(project, 1)
    client = client_for(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    response = client.post(
        f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers(feedback="")}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["field"] == "answers.feedback"
    assert "required" in response.json()["detail"]
    assert not Judgment.objects.exists()


def test_missing_answers_payload_gets_400(project, bob):
    make_tasks(project, 1)
    client = client_for(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    response = client.post(f"/api/v1/leases/{lease['id']}/submit/", {}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "answers"


def test_expired_lease_on_a_full_task_gets_409_with_an_explanation(project, bob, django_user_model):
    make_tasks(project, 1)
    client = client_for(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    Lease.objects.filter(pk=lease["id"]).update(expires_at=timezone.now() - timedelta(minutes=1))
    for name in ["x", "y"]:
        other = django_user_model.objects.create_user(name)
        Membership.objects.create(user=other, project=project)
        other_client = client_for(other)
        other_lease = other_client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
        other_client.post(
            f"/api/v1/leases/{other_lease['id']}/submit/", {"answers": single_answers()}, format="json"
        )
    response = client.post(
        f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["code"] == "lease_expired" and "expired" in response.json()["detail"]


def test_skip_releases_the_lease(project, bob):
    make_tasks(project, 1)
    client = client_for(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    response = client.post(f"/api/v1/leases/{lease['id']}/skip/")
    assert response.status_code == 200 and response.json()["state"] == "skipped"
    assert client.post(f"/api/v1/projects/{project.pk}/next-task/").status_code == 204


def test_rater_cannot_submit_for_another_projects_lease(project, other_project, bob, dave):
    make_tasks(other_project, 1)
    lease = client_for(dave).post(f"/api/v1/projects/{other_project.pk}/next-task/").json()
    response = client_for(bob).post(
        f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json"
    )
    assert response.status_code == 404
    assert client_for(bob).post(f"/api/v1/projects/{other_project.pk}/next-task/").status_code == 404


def test_raters_see_only_their_own_judgments_and_curators_see_the_projects(
    project, alice, bob, django_user_model
):
    make_tasks(project, 2)
    carol = django_user_model.objects.create_user("carol")
    Membership.objects.create(user=carol, project=project)
    for rater in (bob, carol):
        client = client_for(rater)
        lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
        client.post(f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json")
    bobs = client_for(bob).get("/api/v1/judgments/").json()["results"]
    assert [j["rater"] for j in bobs] == ["bob"]
    alices = client_for(alice).get(f"/api/v1/judgments/?project={project.pk}").json()["results"]
    assert sorted(j["rater"] for j in alices) == ["bob", "carol"]


def test_judgments_filter_by_kind_and_status(project, alice, bob):
    make_tasks(project, 2)
    client = client_for(bob)
    for answers in (single_answers(), single_answers(fix="Better text.")):
        lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
        client.post(f"/api/v1/leases/{lease['id']}/submit/", {"answers": answers}, format="json")
    curator = client_for(alice)
    assert len(curator.get("/api/v1/judgments/?kind=fix").json()["results"]) == 1
    assert len(curator.get("/api/v1/judgments/?kind=feedback").json()["results"]) == 2
    Judgment.objects.filter(answer_rows__kind="fix").update(status=Judgment.Status.REJECTED)
    assert len(curator.get("/api/v1/judgments/?status=rejected").json()["results"]) == 1
    assert curator.get("/api/v1/judgments/?round=x").status_code == 400


def test_other_projects_judgments_are_invisible(project, other_project, alice, dave):
    make_tasks(other_project, 1)
    client = client_for(dave)
    lease = client.post(f"/api/v1/projects/{other_project.pk}/next-task/").json()
    client.post(f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json")
    assert client_for(alice).get("/api/v1/judgments/").json()["results"] == []


def test_bulk_prompt_create_is_all_or_nothing(project, alice):
    client = client_for(alice)
    good = [{"project": project.pk, "external_id": f"e{i}", "text": f"Prompt {i}"} for i in range(3)]
    bad = [*good, {"project": project.pk, "external_id": "e9", "text": "   "}]
    response = client.post("/api/v1/prompts/", bad, format="json")
    assert (
        response.status_code == 400
        and "[3]" in response.json()["field"]
        and "text" in response.json()["field"]
    )
    assert not Prompt.objects.exists()
    assert client.post("/api/v1/prompts/", good, format="json").status_code == 201
    assert Prompt.objects.count() == 3
    duplicate = client.post(
        "/api/v1/prompts/", [{"project": project.pk, "external_id": "e1", "text": "x"}], format="json"
    )
    assert duplicate.status_code == 400 and "already exists" in duplicate.json()["detail"]


def test_raters_cannot_create_prompts(project, bob):
    response = client_for(bob).post(
        "/api/v1/prompts/", [{"project": project.pk, "external_id": "e1", "text": "x"}], format="json"
    )
    assert response.status_code == 403 and not Prompt.objects.exists()


def test_bulk_outputs_and_tasks_then_the_task_is_served(project, alice, bob):
    client = client_for(alice)
    prompt = client.post(
        "/api/v1/prompts/", {"project": project.pk, "external_id": "q", "text": "Q?"}, format="json"
    ).json()
    outputs = client.post(
        "/api/v1/outputs/",
        [{"prompt": prompt["id"], "text": t, "model_name": "m", "round_number": 1} for t in ("one", "two")],
        format="json",
    ).json()
    ids = [o["id"] for o in outputs]
    bad = client.post(
        "/api/v1/tasks/",
        [{"project": project.pk, "prompt": prompt["id"], "kind": "pairwise", "outputs": ids[:1]}],
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["field"].endswith("outputs")
    made = client.post(
        "/api/v1/tasks/",
        [{"project": project.pk, "prompt": prompt["id"], "kind": "pairwise", "outputs": ids}],
        format="json",
    )
    assert made.status_code == 201 and made.json()[0]["outputs"] == ids
    lease = client_for(bob).post(f"/api/v1/projects/{project.pk}/next-task/").json()
    assert sorted(o["id"] for o in lease["task"]["outputs"]) == sorted(ids)
    assert Output.objects.filter(round_number=1).count() == 2 and Task.objects.count() == 1


def test_project_questions_are_validated(admin_user):
    client = client_for(admin_user)
    response = client.post(
        "/api/v1/projects/", {"name": "P", "questions": [{"name": "q", "kind": "stars"}]}, format="json"
    )
    assert response.status_code == 400 and response.json()["field"] == "questions"
    ok = client.post(
        "/api/v1/projects/", {"name": "P", "questions": [{"name": "q", "kind": "likert"}]}, format="json"
    )
    assert ok.status_code == 201 and ok.json()["questions"][0]["scale"] == [1, 7]


def test_openapi_schema_is_served(bob):
    response = client_for(bob).get("/api/schema/?format=json")
    assert response.status_code == 200
    paths = response.json()["paths"]
    assert "/api/v1/projects/{id}/next-task/" in paths and "/api/v1/leases/{id}/submit/" in paths


def test_a_busy_sqlite_write_lock_is_a_503_with_nothing_written(project, bob, monkeypatch):
    from django.db import OperationalError

    from annotation.services import judgments

    make_tasks(project, 1)
    client = client_for(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()

    def locked(**kwargs):
        raise OperationalError("database is locked")

    monkeypatch.setattr(judgments, "judgment_submit", locked)
    response = client.post(
        f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json"
    )
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["code"] == "busy" and not Judgment.objects.exists()
