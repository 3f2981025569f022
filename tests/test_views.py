"""Pages: who may open them, and that session posts need a CSRF token."""

import pytest
from django.test import Client

from tests.factories import make_tasks

pytestmark = pytest.mark.django_db


def test_anonymous_users_are_sent_to_login(project):
    for url in ["/", f"/projects/{project.pk}/annotate/"]:
        response = Client().get(url)
        assert response.status_code == 302 and response.url.startswith("/accounts/login/")


def test_home_lists_the_raters_projects_with_progress(project, other_project, bob):
    make_tasks(project, 3)
    client = Client()
    client.force_login(bob)
    page = client.get("/").content.decode()
    assert "Summaries" in page and "Other" not in page
    assert "0 / 3" in page


def test_rater_of_another_project_cannot_open_its_rating_page(project, other_project, bob, charlie):
    client = Client()
    client.force_login(bob)
    assert client.get(f"/projects/{other_project.pk}/annotate/").status_code == 404
    assert client.get(f"/projects/{project.pk}/annotate/").status_code == 200
    client.force_login(charlie)
    assert client.get(f"/projects/{project.pk}/annotate/").status_code == 404


def test_session_posts_to_the_api_need_a_csrf_token(project, bob):
    make_tasks(project, 1)
    client = Client(enforce_csrf_checks=True)
    client.force_login(bob)
    refused = client.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    client.get(f"/projects/{project.pk}/annotate/")  # sets the csrftoken cookie
    token = client.cookies["csrftoken"].value
    accepted = client.post(f"/api/v1/projects/{project.pk}/next-task/", HTTP_X_CSRFTOKEN=token)
    assert accepted.status_code == 200


def test_project_content_in_the_page_is_escaped(project, bob):
    project.guidelines = "<script>alert(1)</script>"
    project.save()
    client = Client()
    client.force_login(bob)
    page = client.get(f"/projects/{project.pk}/annotate/").content.decode()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
