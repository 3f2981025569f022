"""Edge cases of the queue, the API, the admin and imports: closed tasks, taken ids, bad configs, NUL bytes."""

from __future__ import annotations

import pytest
from django.contrib.admin.sites import site as admin_site
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import RequestFactory
from rest_framework.test import APIClient

from annotation import importing
from annotation.errors import TaskClosed
from annotation.models import Judgment, Lease, Membership, Project, Prompt, Task
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire
from annotation.services.prompts import prompts_import
from tests.factories import QUESTIONS, make_tasks, single_answers

pytestmark = pytest.mark.django_db


def api(user):
    client = APIClient(raise_request_exception=False)
    client.force_authenticate(user)
    return client


# ---------------------------------------------------------------- queue


def test_held_lease_on_a_task_a_curator_closed_is_not_handed_back(project, bob):
    """A rater holding a live lease on a task that was since closed keeps getting that dead task
    from next-task (submit answers 409 task_closed, the page's "Next task" shows it again) while
    open tasks wait, until the lease runs out."""
    closed, open_task = make_tasks(project, 2)
    lease = lease_acquire(project=project, rater=bob)
    assert lease.task_id == closed.pk
    Task.objects.filter(pk=closed.pk).update(status=Task.Status.CLOSED)

    with pytest.raises(TaskClosed):
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    again = lease_acquire(project=project, rater=bob)
    assert again is not None and again.task_id == open_task.pk


def test_closed_gold_task_refuses_submissions(project, bob):
    """judgment_submit checks `status == CLOSED` only for non-gold tasks: a gold task a curator
    closed still takes judgments (and counts them)."""
    (gold,) = make_tasks(project, 1, gold=True, prefix="g")
    project.gold_rate = 1.0
    project.save()
    lease = lease_acquire(project=project, rater=bob)
    assert lease.task_id == gold.pk
    Task.objects.filter(pk=gold.pk).update(status=Task.Status.CLOSED)
    with pytest.raises(TaskClosed):
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert not Judgment.objects.exists()


# ---------------------------------------------------------------- API


def test_posting_one_prompt_with_a_taken_external_id_is_a_400_not_a_500(project, alice):
    """PromptSerializer drops the (project, external_id) unique validator and checks the batch in
    PromptListSerializer, which only runs for a list: a single object POST hits the database
    constraint and the IntegrityError becomes a 500."""
    Prompt.objects.create(project=project, external_id="dup", text="First.")
    response = api(alice).post(
        "/api/v1/prompts/", {"project": project.pk, "external_id": "dup", "text": "Second."}, format="json"
    )
    assert response.status_code == 400, response.status_code
    assert Prompt.objects.filter(project=project, external_id="dup").count() == 1


# ---------------------------------------------------------------- admin


@pytest.fixture
def staff_curator(alice):
    alice.is_staff = True
    alice.save()
    alice.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    return alice


def test_admin_refuses_an_invalid_questions_config(project, staff_curator, bob):
    """Curators change their projects in the admin, whose form never runs
    validate_questions_config (the API's serializer does). A bad config saves, and then every
    next-task and submit of the project raises QuestionsConfigError: a 500 for every rater."""
    request = RequestFactory().post("/admin/")
    request.user = staff_curator
    model_admin = admin_site._registry[Project]
    form_class = model_admin.get_form(request, project)
    data = {
        "name": project.name,
        "description": "",
        "kind": project.kind,
        "guidelines": "",
        "questions": '[{"name": "quality", "kind": "likert", "scale": "seven"}]',
        "overlap": project.overlap,
        "lease_seconds": project.lease_seconds,
        "max_pending_per_rater": project.max_pending_per_rater,
        "gold_rate": project.gold_rate,
        "base_model": "",
        "generation": "{}",
        "loop_settings": "{}",
    }
    form = form_class(data, instance=project)
    valid = form.is_valid()
    if valid:  # what a curator's save does to the raters
        form.save()
        make_tasks(project, 1)
        response = api(bob).post(f"/api/v1/projects/{project.pk}/next-task/")
        assert response.status_code != 500, "an invalid questions config saved in the admin breaks next-task"
    assert not valid, "the admin accepted an invalid questions config"


# ---------------------------------------------------------------- import


def test_import_refuses_tasks_of_a_kind_the_project_asks_nothing_on(db, alice):
    """POST /api/v1/tasks/ refuses a task kind the project asks no questions on; the importer
    makes such tasks anyway. Raters then get a task with no questions, and an empty submission
    becomes a judgment with no answers that uses up the overlap."""
    single_only = [q for q in QUESTIONS if q["kind"] in ("likert", "feedback")]
    project = Project.objects.create(name="Single only", questions=single_only, overlap=1)
    Membership.objects.create(user=alice, project=project, role=Membership.Role.CURATOR)
    rows = importing.parse_prompt_rows(
        [{"external_id": "a", "text": "Summarise.", "outputs": ["One.", "Two."]}]
    )
    with pytest.raises(importing.ImportFileError):
        prompts_import(project=project, rows=rows, make_tasks="pairwise")
    assert not Task.objects.filter(project=project).exists()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL refuses NUL in text")
def test_import_with_a_nul_character_is_a_line_error_not_a_500(project, alice):
    """PostgreSQL text columns cannot hold U+0000. Nothing on the human side refuses it, so a
    JSONL line (or a rater's feedback) carrying one is a DataError: a 500, not a 400 naming the line."""
    response = api(alice).post(
        f"/api/v1/projects/{project.pk}/import/",
        {"rows": [{"external_id": "n1", "text": "Summarise\u0000 this."}]},
        format="json",
    )
    assert response.status_code == 400, response.status_code


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL refuses NUL in text")
def test_feedback_with_a_nul_character_is_a_400_not_a_500(project, bob):
    make_tasks(project, 1)
    client = api(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    response = client.post(
        f"/api/v1/leases/{lease['id']}/submit/",
        {"answers": single_answers(feedback="Mention\u0000 the deadline.")},
        format="json",
    )
    assert response.status_code == 400, response.status_code
    assert Lease.objects.get(pk=lease["id"]).state == Lease.State.ACTIVE
