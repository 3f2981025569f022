"""A rater answers (QA)² tasks in a real browser: the mouse for the assumption, the keys for the rest."""

import pytest

from annotation.models import Answer, Judgment, Membership, Output, Prompt, Task, TaskOutput
from annotation.services.projects import project_create_from_template
from tests.browser.conftest import log_in, screenshot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def add_question(project, key, question, answer):
    prompt = Prompt.objects.create(project=project, external_id=key, text=question)
    task = Task.objects.create(project=project, prompt=prompt, kind=Task.Kind.SINGLE)
    TaskOutput.objects.create(task=task, output=Output.objects.create(prompt=prompt, text=answer), position=0)
    return task


def test_rater_flags_an_assumption_rejects_the_answer_and_explains(live_server, page, django_user_model):
    project = project_create_from_template(name="QA2 in the browser", template="qa2", overlap=1)
    rater = django_user_model.objects.create_user("rosa", password="rosa-pass-123")
    Membership.objects.create(user=rater, project=project)
    curie = add_question(
        project, "q1", "When did Marie Curie discover uranium?", "Marie Curie discovered uranium in 1896."
    )
    paris = add_question(project, "q2", "What is the capital of France?", "Paris.")

    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    page.wait_for_selector("pre.text:has-text('Marie Curie discovered uranium')")
    assert (
        page.inner_text(".question[data-question=acceptable] .hint") == "0 = not acceptable, 1 = acceptable"
    )

    # The mouse ticks the assumption; its note box opens with the focus in it.
    page.click("text=Yes: the question assumes something false or unverifiable")
    page.keyboard.type("Marie Curie did not discover uranium (Becquerel found its radioactivity).")
    page.keyboard.press("Escape")
    page.keyboard.press("0")  # not acceptable
    page.keyboard.press("f")  # to the explanation, whatever the feedback question is called
    page.keyboard.type("It repeats the false premise; it should say Curie did not discover uranium.")
    screenshot(page, "annotate-qa2")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("pre.text:has-text('Paris.')")

    # A sound question, a correct answer: acceptable, nothing else to say.
    page.keyboard.press("1")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left")
    assert page.js_errors == []

    first = dict(Answer.objects.filter(judgment__task=curie).values_list("question", "value"))
    assert first == {
        "assumption": {
            "flags": ["questionable_assumption"],
            "notes": {
                "questionable_assumption": "Marie Curie did not discover uranium (Becquerel found its radioactivity)."
            },
        },
        "acceptable": {"acceptable": 0},
        "explanation": "It repeats the false premise; it should say Curie did not discover uranium.",
    }
    second = dict(Answer.objects.filter(judgment__task=paris).values_list("question", "value"))
    assert second == {"acceptable": {"acceptable": 1}}
    assert Judgment.objects.filter(rater=rater).count() == 2
