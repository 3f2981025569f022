"""Progress counts stay exact when tasks have several judgments (overlap > 1)."""

import pytest
from django.test import Client
from rest_framework.test import APIClient

from annotation import selectors
from annotation.models import Answer, Task
from tests.factories import make_tasks, write_judgment

pytestmark = pytest.mark.django_db

FEEDBACK = {"feedback": (Answer.Kind.FEEDBACK, "Mention the deadline.")}


@pytest.fixture
def mixed_project(project, bob, charlie, dave):
    """Overlap 3; six tasks: two complete, one open with two judgments, one open with one,
    one closed with one, one untouched; and a gold task bob judged (never counted)."""
    project.overlap = 3
    project.save()
    tasks = make_tasks(project, 6)
    (gold,) = make_tasks(project, 1, gold=True, prefix="gold")
    judged_by = {0: [bob, charlie, dave], 1: [bob, charlie, dave], 2: [bob, charlie], 3: [charlie], 4: [dave]}
    for index, raters in judged_by.items():
        for rater in raters:
            write_judgment(tasks[index], rater, FEEDBACK)
    Task.objects.filter(pk__in=[tasks[0].pk, tasks[1].pk]).update(
        status=Task.Status.COMPLETE, judgment_count=3
    )
    Task.objects.filter(pk=tasks[2].pk).update(judgment_count=2)
    Task.objects.filter(pk=tasks[3].pk).update(judgment_count=1)
    Task.objects.filter(pk=tasks[4].pk).update(status=Task.Status.CLOSED, judgment_count=1)
    write_judgment(gold, bob, FEEDBACK)
    return project


EXPECTED = {"tasks": 6, "tasks_done": 3, "tasks_remaining": 3, "judgments": 10, "judgments_needed": 18}


def test_progress_counts_each_task_once_whatever_its_judgments(mixed_project, bob):
    progress = selectors.project_progress(mixed_project, rater=bob)
    assert {key: progress[key] for key in EXPECTED} == EXPECTED
    assert progress["own_judgments"] == 4  # three tasks and the gold one
    assert progress["holding_lease"] is False


def test_progress_api_and_home_page_show_the_exact_counts(mixed_project, bob):
    api = APIClient()
    api.force_authenticate(bob)
    body = api.get(f"/api/v1/projects/{mixed_project.pk}/progress/").json()
    assert {key: body[key] for key in EXPECTED} == EXPECTED  # the empty-queue screen reads these

    client = Client()
    client.force_login(bob)
    page = client.get("/").content.decode()
    assert "<td>3 / 6</td>" in page and "<td>3</td>" in page
