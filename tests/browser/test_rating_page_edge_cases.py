"""Edge cases of the rating page (static/annotate/): zero scores, optional questions, restored drafts, failed loads."""

import pytest

from annotation.models import Answer, Judgment, Membership, Output, Project, Prompt, Task, TaskOutput
from tests.browser.conftest import log_in

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def add_task(project, key, texts, kind):
    prompt = Prompt.objects.create(project=project, external_id=key, text=f"Summarise post {key}.")
    task = Task.objects.create(project=project, prompt=prompt, kind=kind)
    for position, text in enumerate(texts):
        output = Output.objects.create(prompt=prompt, text=text)
        TaskOutput.objects.create(task=task, output=output, position=position)
    return task


def rater_on(django_user_model, questions, name="Edge project"):
    project = Project.objects.create(name=name, questions=questions, overlap=1)
    rater = django_user_model.objects.create_user("rita", password="rita-pass-123")
    Membership.objects.create(user=rater, project=project)
    return project, rater


def open_page(page, live_server, project, text):
    log_in(page, live_server, "rita", "rita-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    page.wait_for_selector(f"pre.text:has-text('{text}')")


def test_a_score_of_zero_counts_as_given(live_server, page, django_user_model):
    """checkRequired tests `value && value[c]`, and restoreAnswers `if (value)`: on a scale that
    starts at 0 (validate_questions_config allows [0, 4]) a 0 is "missing", so the page never
    submits it."""
    questions = [{"name": "quality", "kind": "likert", "scale": [0, 4], "criteria": ["helpful"]}]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "z1", ["Zero-worthy summary."], "single")
    open_page(page, live_server, project, "Zero-worthy summary.")
    page.keyboard.press("0")
    assert page.is_checked("input[name='quality.helpful'][value='0']")
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(1000)
    assert page.locator(".question.invalid").count() == 0, page.inner_text("[data-error-for=quality]")
    page.wait_for_selector("text=Nothing left for you right now")
    assert Answer.objects.get(question="quality").value == {"helpful": 0}


def test_an_optional_likert_question_can_be_left_blank(live_server, page, django_user_model):
    """checkRequired demands every likert criterion whatever `required` says, so a project whose
    scores are optional ("required": false) cannot submit feedback alone from the page."""
    questions = [
        {"name": "quality", "kind": "likert", "scale": [1, 5], "criteria": ["helpful"], "required": False},
        {"name": "feedback", "kind": "feedback"},
    ]
    project, rater = rater_on(django_user_model, questions)
    add_task(project, "o1", ["A summary to comment on."], "single")
    open_page(page, live_server, project, "A summary to comment on.")
    page.keyboard.press("f")
    page.keyboard.type("Only feedback, no score.")
    page.keyboard.press("Control+Enter")
    page.wait_for_timeout(1000)
    assert page.locator(".question.invalid").count() == 0, page.inner_text("[data-error-for=quality]")
    page.wait_for_selector("text=Nothing left for you right now")
    assert Judgment.objects.filter(rater=rater).count() == 1


def test_a_submission_brings_the_next_task_in_the_same_request(live_server, page, django_user_model):
    """The page submits with `next: true` and shows the lease that comes back: one request per
    judgment, and next-task is not called."""
    questions = [{"name": "feedback", "kind": "feedback"}]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "f1", ["First summary."], "single")
    add_task(project, "f2", ["Second summary."], "single")
    open_page(page, live_server, project, "First summary.")
    asked = []
    page.on("request", lambda request: asked.append(request.url) if "next-task" in request.url else None)
    page.keyboard.press("f")
    page.keyboard.type("Good enough.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("pre.text:has-text('Second summary.')")
    assert "Saved. Here is your next task." in page.inner_text("#banner")
    assert Judgment.objects.count() == 1
    assert asked == []
    page.keyboard.press("f")
    page.keyboard.type("Fine too.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    assert Judgment.objects.count() == 2 and asked == []


def test_a_failure_to_lease_the_next_task_is_not_hidden_by_saved(live_server, page, django_user_model):
    """The judgment is saved but no next lease could be taken (next_error): the page must say so
    and offer Try again, not show "Saved. Here is your next task." over the task just submitted."""
    questions = [{"name": "feedback", "kind": "feedback"}]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "f1", ["First summary."], "single")
    add_task(project, "f2", ["Second summary."], "single")
    open_page(page, live_server, project, "First summary.")

    def next_lease_refused(route):
        body = route.fetch().json()
        body["next"] = None
        body["next_error"] = {"detail": "the database was busy; ask again", "code": "busy"}
        route.fulfill(status=201, json=body)

    page.route("**/submit/", next_lease_refused)
    page.keyboard.press("f")
    page.keyboard.type("Good enough.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".banner.error")
    assert Judgment.objects.count() == 1
    banner = page.locator("#banner")
    assert "the database was busy" in banner.inner_text()
    assert "Try again" in banner.inner_text()
    # Try again asks next-task, which hands out the next task.
    banner.get_by_role("button", name="Try again").click()
    page.wait_for_selector("pre.text:has-text('Second summary.')")


def test_a_failure_to_load_the_next_task_after_a_skip_is_not_hidden(live_server, page, django_user_model):
    questions = [{"name": "feedback", "kind": "feedback"}]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "f1", ["First summary."], "single")
    add_task(project, "f2", ["Second summary."], "single")
    open_page(page, live_server, project, "First summary.")
    page.route("**/next-task/", lambda route: route.abort())
    page.keyboard.press("s")
    page.wait_for_selector(".banner.error", timeout=15000)
    banner = page.locator("#banner")
    assert "Try again" in banner.inner_text()


def test_a_restored_strength_without_a_choice_is_not_shown_as_a_tie(live_server, page, django_user_model):
    """A draft holding only a strength ({preferred: null, strength: "better"}) is restored with
    pick("tie"): the page shows "About the same" chosen, which the rater never chose."""
    questions = [{"name": "preference", "kind": "pairwise", "allow_ties": True}]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "p1", ["Left answer.", "Right answer."], "pairwise")
    open_page(page, live_server, project, "Left answer.")
    page.keyboard.press("2")  # strength "better", no side chosen yet
    page.reload()
    page.wait_for_selector("pre.text:has-text('Left answer.')")
    assert page.is_checked("input[name='preference.strength'][value='better']")
    assert not page.is_checked("input[name='preference.preferred'][value='tie']")
