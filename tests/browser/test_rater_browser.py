"""A rater at work in a real browser: keyboard only, validation, drafts, untrusted outputs."""

import pytest

from annotation.models import Answer, Judgment, Membership, Output, Project, Prompt, Task, TaskOutput
from tests.browser.conftest import log_in, screenshot
from tests.factories import QUESTIONS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def add_task(project, key, texts, kind):
    prompt = Prompt.objects.create(
        project=project, external_id=key, text=f"Summarise post {key}.", context="A post."
    )
    task = Task.objects.create(project=project, prompt=prompt, kind=kind)
    for position, text in enumerate(texts):
        output = Output.objects.create(prompt=prompt, text=text)
        TaskOutput.objects.create(task=task, output=output, position=position)
    return task


@pytest.fixture
def rating_project(django_user_model):
    project = Project.objects.create(
        name="Browser project", questions=QUESTIONS, overlap=1, guidelines="Be kind and specific."
    )
    rater = django_user_model.objects.create_user("rosa", password="rosa-pass-123")
    Membership.objects.create(user=rater, project=project)
    return project, rater


def wait_for_task(page, text):
    page.wait_for_selector(f"pre.text:has-text('{text}')")


def test_rater_judges_every_kind_with_the_keyboard_and_each_lands_once(live_server, page, rating_project):
    project, rater = rating_project
    first = add_task(project, "s1", ["The first summary."], "single")
    second = add_task(project, "s2", ["The second summary."], "single")
    pair = add_task(project, "p1", ["Left answer.", "Right answer."], "pairwise")
    ranked = add_task(project, "r1", ["Rank one.", "Rank two.", "Rank three."], "ranking")

    log_in(page, live_server, "rosa", "rosa-pass-123")
    screenshot(page, "home")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    wait_for_task(page, "The first summary.")
    keyboard = page.keyboard

    # Task 1: scores, then a too-short feedback: the error shows and the text stays.
    keyboard.press("5")
    keyboard.press("6")
    keyboard.press("f")
    keyboard.type("ab")
    keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid[data-question=feedback]")
    assert "at least 3" in page.inner_text("[data-error-for=feedback]")
    assert page.input_value("textarea[name=feedback]") == "ab"
    screenshot(page, "annotate-single-validation-error")
    keyboard.type("out the deadline.")
    # Tab on to the fix box, then to the first rubric flag, which asks for its note.
    keyboard.press("Tab")
    keyboard.press("Tab")
    keyboard.press("Space")
    keyboard.type("It assumes a deadline exists.")
    keyboard.press("Control+Enter")
    wait_for_task(page, "The second summary.")

    # Task 2: scores, feedback, and a fix written in the fix box.
    keyboard.press("7")
    keyboard.press("4")
    keyboard.press("f")
    keyboard.type("Too vague.")
    keyboard.press("Escape")
    keyboard.press("x")
    keyboard.press("Control+End")
    keyboard.type(" With the date.")
    page.wait_for_selector(".diff ins")
    screenshot(page, "annotate-single-fix-diff")
    keyboard.press("Control+Enter")
    wait_for_task(page, "Left answer.")

    # Task 3: a comparison. A without a strength is refused; then strength 2 (better).
    screenshot(page, "annotate-pairwise")
    keyboard.press("a")
    keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid[data-question=preference]")
    keyboard.press("2")
    shown_first = int(page.get_attribute("article.output >> nth=0", "data-output"))
    keyboard.press("Control+Enter")
    wait_for_task(page, "Rank one.")

    # Task 4: a ranking; move the selected (first) output down one place.
    screenshot(page, "annotate-ranking")
    before = [
        int(x) for x in page.eval_on_selector_all("ol.ranking li", "els => els.map(e => e.dataset.output)")
    ]
    keyboard.press("Shift+J")
    keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    screenshot(page, "annotate-queue-empty")
    assert page.js_errors == []

    judgments = {j.task_id: j for j in Judgment.objects.filter(rater=rater)}
    assert sorted(judgments) == sorted([first.pk, second.pk, pair.pk, ranked.pk])
    assert Judgment.objects.count() == 4  # exactly once each

    def answers(task):
        return {a.question: a.value for a in Answer.objects.filter(judgment=judgments[task.pk])}

    assert answers(first) == {
        "quality": {"helpful": 5, "accurate": 6},
        "feedback": "about the deadline.",
        "assumptions": {
            "flags": ["questionable_assumption"],
            "notes": {"questionable_assumption": "It assumes a deadline exists."},
        },
    }
    assert answers(second)["fix"] == "The second summary. With the date."
    assert answers(second)["quality"] == {"helpful": 7, "accurate": 4}
    assert answers(pair)["preference"] == {"preferred": shown_first, "strength": "better"}
    assert answers(ranked)["order"] == {"ranking": [[before[1]], [before[0]], [before[2]]]}
    assert all(j.time_spent_ms and j.time_spent_ms > 0 for j in judgments.values())


def test_untrusted_output_is_shown_as_text_and_runs_nothing(live_server, page, rating_project):
    project, _ = rating_project
    hostile = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2"> done'
    add_task(project, "x1", [hostile], "single")
    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    page.wait_for_selector("article.output pre.text")
    assert page.inner_text("article.output pre.text") == hostile
    assert page.eval_on_selector_all("article.output img, article.output script", "els => els.length") == 0
    page.wait_for_timeout(300)
    assert page.evaluate("window.__pwned") is None
    screenshot(page, "annotate-untrusted-output")


def test_draft_survives_a_reload_and_the_guidelines_are_one_key_away(live_server, page, rating_project):
    project, _ = rating_project
    add_task(project, "d1", ["Some summary."], "single")
    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    wait_for_task(page, "Some summary.")
    page.keyboard.press("3")
    page.keyboard.press("f")
    page.keyboard.type("Half-written thought")
    page.reload()
    wait_for_task(page, "Some summary.")
    assert page.input_value("textarea[name=feedback]") == "Half-written thought"
    assert page.is_checked("input[name='quality.helpful'][value='3']")
    page.keyboard.press("g")
    assert page.is_visible("#guidelines") and "Be kind and specific." in page.inner_text("#guidelines")
    screenshot(page, "annotate-guidelines")
    page.keyboard.press("Escape")
    page.keyboard.press("?")
    assert page.is_visible("#help")
    screenshot(page, "annotate-shortcuts")


def test_expired_lease_is_explained(live_server, page, rating_project, django_user_model):
    from datetime import timedelta

    from django.utils import timezone

    from annotation.models import Lease
    from annotation.services.judgments import judgment_submit
    from annotation.services.leases import lease_acquire

    project, _ = rating_project
    add_task(project, "e1", ["Soon taken."], "single")
    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    wait_for_task(page, "Soon taken.")
    Lease.objects.update(expires_at=timezone.now() - timedelta(minutes=1))
    other = django_user_model.objects.create_user("otto")
    Membership.objects.create(user=other, project=project)
    lease = lease_acquire(project=project, rater=other)
    judgment_submit(
        lease_id=lease.pk,
        rater=other,
        answers={"quality": {"helpful": 1, "accurate": 1}, "feedback": "Fine."},
    )
    page.keyboard.press("4")
    page.keyboard.press("4")
    page.keyboard.press("f")
    page.keyboard.type("My late feedback.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".banner.warn")
    assert "ran out" in page.inner_text("#banner")
    screenshot(page, "annotate-expired-lease")


def test_narrow_phone_width_shows_the_whole_task(live_server, chromium, rating_project):
    project, _ = rating_project
    add_task(project, "m1", ["A summary on a phone."], "single")
    context = chromium.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    wait_for_task(page, "A summary on a phone.")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, f"the page scrolls sideways on a phone ({width}px)"
    screenshot(page, "annotate-phone")
    context.close()


def test_network_hiccups_keep_the_answers_and_a_retry_saves_them_once(live_server, page, rating_project):
    project, rater = rating_project
    (task,) = [add_task(project, "n1", ["Flaky network summary."], "single")]
    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    wait_for_task(page, "Flaky network summary.")
    page.keyboard.press("2")
    page.keyboard.press("3")
    page.keyboard.press("f")
    page.keyboard.type("Feedback typed before the network dropped.")

    # 1. The request never reaches the server.
    page.route("**/submit/", lambda route: route.abort())
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".banner.error")
    assert "answers are kept" in page.inner_text("#banner")
    assert page.input_value("textarea[name=feedback]") == "Feedback typed before the network dropped."
    assert not Judgment.objects.exists()
    screenshot(page, "annotate-network-error")

    # 2. The server saves it, but the response is lost on the way back.
    page.unroute("**/submit/")

    def deliver_then_drop(route):
        route.fetch()
        route.abort()

    page.route("**/submit/", deliver_then_drop)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".banner.error")
    assert Judgment.objects.count() == 1

    # 3. The retry is answered with the judgment already saved: no duplicate, and on to the end.
    page.unroute("**/submit/")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    assert Judgment.objects.count() == 1
    judgment = Judgment.objects.get()
    assert judgment.task_id == task.pk and judgment.rater_id == rater.pk
    assert Answer.objects.get(judgment=judgment, question="feedback").value == (
        "Feedback typed before the network dropped."
    )
