"""A fix may be as long as the output it rewrites needs: the limit follows the output's size, up to
the project's `max_fix_chars`, and a fix over it is refused in words a rater understands."""

import pytest
from rest_framework.test import APIClient

from annotation.models import Answer, Output, Project
from annotation.questions import MAX_TEXT, AnswerError, clean_answers, fix_limit, validate_questions_config
from tests.factories import QUESTIONS, make_tasks, single_answers

pytestmark = pytest.mark.django_db


def test_the_fix_limit_is_twice_the_output_at_least_the_text_limit_and_at_most_the_cap():
    assert fix_limit(100) == MAX_TEXT
    assert fix_limit(200_000) == 400_000
    assert fix_limit(5_000_000) == 1_000_000
    assert fix_limit(200_000, cap=250_000) == 250_000


def test_a_too_long_fix_is_refused_with_both_numbers_in_plain_words():
    with pytest.raises(AnswerError) as caught:
        clean_answers(
            validate_questions_config(QUESTIONS),
            task_kind="single",
            output_ids=[1],
            answers=single_answers(fix="x" * 250_000),
            max_fix_chars=200_000,
        )
    assert caught.value.field == "answers.fix"
    assert caught.value.message == (
        "Your fix is too long: 250,000 characters; the limit for this task is 200,000."
    )


def lease_with_output(project, bob, text):
    [task] = make_tasks(project, 1)
    Output.objects.filter(tasks=task).update(text=text)
    client = APIClient()
    client.force_authenticate(bob)
    return client, client.post(f"/api/v1/projects/{project.pk}/next-task/").json()


def test_a_200000_character_output_can_be_fixed_as_a_whole(project, bob):
    output = "word " * 40_000
    client, lease = lease_with_output(project, bob, output)
    [fix_question] = [q for q in lease["task"]["questions"] if q["kind"] == "fix"]
    assert fix_question["max_length"] == 400_000  # the page warns before the server refuses
    fixed = output.replace("word", "Word", 1) + "and a better ending."
    response = client.post(
        f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers(fix=fixed)}, format="json"
    )
    assert response.status_code == 201, response.json()
    assert Answer.objects.get(question="fix").value == fixed


def test_the_projects_cap_bounds_the_fix(project, bob):
    Project.objects.filter(pk=project.pk).update(max_fix_chars=250_000)
    client, lease = lease_with_output(project, bob, "word " * 40_000)
    response = client.post(
        f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers(fix="y" * 250_001)}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["field"] == "answers.fix"
    assert (
        "Your fix is too long: 250,001 characters; the limit for this task is 250,000."
        in response.json()["detail"]
    )
    assert not Answer.objects.exists()
