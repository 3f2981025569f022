"""The loop's API: alice curates the project, bob rates it, charlie has no access."""

import pytest
from rest_framework.test import APIClient

from feedback_loop.models import Adapter, Round


@pytest.fixture
def client_for():
    def make(user):
        client = APIClient()
        client.force_authenticate(user)
        return client

    return make


def _start(client, project, reason="more feedback came in"):
    return client.post(f"/api/v1/projects/{project.pk}/rounds/", {"reason": reason}, format="json")


def test_a_curator_starts_a_round_and_gets_it_back(
    project, alice, client_for, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as sent:
        response = _start(client_for(alice), project)
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["number"], body["state"], body["started_by"], body["reason"]) == (
        1,
        "pending",
        "alice",
        "more feedback came in",
    )
    assert body["adapter"] is None and body["config"]["n_refinements"] == 5
    assert len(sent) == 1  # its first step goes to the workers once committed


def test_a_second_start_while_a_round_runs_is_a_409_round_in_progress(project, alice, client_for):
    client = client_for(alice)
    assert _start(client, project).status_code == 201
    response = _start(client, project)
    assert response.status_code == 409
    assert response.json()["code"] == "round_in_progress"
    assert Round.objects.count() == 1


def test_a_rater_cannot_start_a_round_and_a_stranger_does_not_see_the_project(
    project, bob, charlie, client_for
):
    assert _start(client_for(bob), project).status_code == 403
    assert _start(client_for(charlie), project).status_code == 404
    assert not Round.objects.exists()


def test_anonymous_requests_are_refused(project):
    assert _start(APIClient(), project).status_code in (401, 403)


def test_members_list_and_read_rounds_strangers_do_not(project, alice, bob, charlie, client_for):
    round = _start(client_for(alice), project).json()
    listed = client_for(bob).get(f"/api/v1/projects/{project.pk}/rounds/")
    assert listed.status_code == 200 and [r["id"] for r in listed.json()["results"]] == [round["id"]]
    assert client_for(bob).get(f"/api/v1/rounds/{round['id']}/").json()["state"] == "pending"
    assert client_for(charlie).get(f"/api/v1/rounds/{round['id']}/").status_code == 404
    assert client_for(charlie).get(f"/api/v1/projects/{project.pk}/rounds/").status_code == 404


def test_a_round_shows_its_adapter_and_the_judgments_it_trained_on(project, alice, bob, client_for):
    from tests.loop.conftest import make_feedback

    round = Round.objects.create(project=project, number=1, state=Round.State.DONE)
    adapter = Adapter.objects.create(
        project=project, round=round, base_model="m", path="p", checksum="c" * 64
    )
    judgments = make_feedback(project, bob, 2)
    adapter.training_judgments.set(judgments)
    body = client_for(alice).get(f"/api/v1/rounds/{round.pk}/").json()
    assert body["adapter"]["checksum"] == "c" * 64
    assert body["adapter"]["training_judgments"] == sorted(j.pk for j in judgments)


def test_curators_cancel_and_retry_rounds_raters_cannot(project, alice, bob, client_for):
    round = _start(client_for(alice), project).json()
    assert client_for(bob).post(f"/api/v1/rounds/{round['id']}/cancel/").status_code == 403
    response = client_for(alice).post(f"/api/v1/rounds/{round['id']}/cancel/")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    again = client_for(alice).post(f"/api/v1/rounds/{round['id']}/cancel/")
    assert again.status_code == 409 and again.json()["code"] == "round_state"
    # A cancelled round is not retried; a failed one is, from its failed step.
    assert client_for(alice).post(f"/api/v1/rounds/{round['id']}/retry/").status_code == 409
    Round.objects.filter(pk=round["id"]).update(state="failed", failed_state="training", error="boom")
    assert client_for(bob).post(f"/api/v1/rounds/{round['id']}/retry/").status_code == 403
    response = client_for(alice).post(f"/api/v1/rounds/{round['id']}/retry/")
    assert response.status_code == 200 and response.json()["state"] == "training"
    assert response.json()["error"] == ""


def test_listing_rounds_takes_the_same_few_queries_however_many_rounds(
    project, alice, client_for, django_assert_max_num_queries
):
    for number in range(1, 6):
        round = Round.objects.create(project=project, number=number, state=Round.State.DONE)
        Adapter.objects.create(project=project, round=round, base_model="m", path=f"p{number}", checksum="c")
    with django_assert_max_num_queries(8):
        response = client_for(alice).get(f"/api/v1/projects/{project.pk}/rounds/")
    assert len(response.json()["results"]) == 5


def test_the_round_endpoints_are_in_the_openapi_schema(alice, client_for):
    paths = client_for(alice).get("/api/schema/", {"format": "json"}).json()["paths"]
    assert {"post", "get"} <= set(paths["/api/v1/projects/{project_id}/rounds/"])
    assert "409" in paths["/api/v1/projects/{project_id}/rounds/"]["post"]["responses"]
    for path in (
        "/api/v1/rounds/{round_id}/",
        "/api/v1/rounds/{round_id}/retry/",
        "/api/v1/rounds/{round_id}/cancel/",
    ):
        assert path in paths
