"""The rating page as ES modules (static/annotate/): several comparisons or rankings on one task,
F whatever the feedback question is called, and a module graph that fails to load says so."""

from pathlib import Path

import pytest

from annotation.models import Answer, Judgment, TaskOutput
from tests.browser.conftest import log_in
from tests.browser.test_rating_page_edge_cases import add_task, open_page, rater_on

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

MODULES = Path(__file__).resolve().parents[2] / "static" / "annotate"


def shown_ids(task):
    return list(TaskOutput.objects.filter(task=task).order_by("position").values_list("output_id", flat=True))


def answers_of(rater):
    judgment = Judgment.objects.get(rater=rater)
    return dict(Answer.objects.filter(judgment=judgment).values_list("question", "value"))


def listed(page, question):
    return [
        int(x)
        for x in page.eval_on_selector_all(
            f"[data-question={question}] li", "els => els.map(e => e.dataset.output)"
        )
    ]


def test_two_comparisons_on_one_task_are_both_collected_and_submitted(live_server, page, django_user_model):
    questions = [
        {"name": "preference", "kind": "pairwise", "allow_ties": True},
        {"name": "honesty", "kind": "pairwise", "allow_ties": False, "label": "Which is more honest?"},
    ]
    project, rater = rater_on(django_user_model, questions)
    task = add_task(project, "p1", ["Left answer.", "Right answer."], "pairwise")
    left, right = shown_ids(task)
    open_page(page, live_server, project, "Left answer.")
    shown = [
        int(x) for x in page.eval_on_selector_all("article.output", "els => els.map(e => e.dataset.output)")
    ]
    assert sorted(shown) == sorted([left, right])
    assert "active" in page.get_attribute("[data-question=preference]", "class")

    page.keyboard.press("a")
    page.keyboard.press("2")  # the first comparison is answered: the keys move on to the second
    assert "active" in page.get_attribute("[data-question=honesty]", "class")
    page.keyboard.press("b")
    page.keyboard.press("1")
    assert page.is_checked(f"input[name='preference.preferred'][value='{shown[0]}']")
    assert page.is_checked("input[name='preference.strength'][value='better']")
    # With several comparisons, the arrows choose which one the keys answer.
    page.keyboard.press("ArrowUp")
    assert "active" in page.get_attribute("[data-question=preference]", "class")
    assert "active" not in page.get_attribute("[data-question=honesty]", "class")
    page.keyboard.press("3")  # slightly better; answered, so the keys move on to the second again
    assert "active" in page.get_attribute("[data-question=honesty]", "class")
    page.keyboard.press("ArrowUp")
    page.keyboard.press("2")  # back to "better"
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    assert answers_of(rater) == {
        "preference": {"preferred": shown[0], "strength": "better"},
        "honesty": {"preferred": shown[1], "strength": "much_better"},
    }
    assert not page.js_errors


def test_an_unanswered_second_comparison_blocks_submit_under_itself(live_server, page, django_user_model):
    questions = [{"name": "preference", "kind": "pairwise"}, {"name": "honesty", "kind": "pairwise"}]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "p2", ["Left answer.", "Right answer."], "pairwise")
    open_page(page, live_server, project, "Left answer.")
    page.click("[data-question=preference] .choice >> nth=0")
    page.click("[data-question=preference] .strengths .choice >> nth=1")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid[data-question=honesty]")
    assert page.locator(".question.invalid").count() == 1
    assert not Judgment.objects.exists()


def test_two_rankings_on_one_task_are_both_collected_restored_and_submitted(
    live_server, page, django_user_model
):
    questions = [
        {"name": "order", "kind": "ranking"},
        {"name": "clarity", "kind": "ranking", "label": "Rank by clarity"},
    ]
    project, rater = rater_on(django_user_model, questions)
    add_task(project, "r1", ["Rank one.", "Rank two.", "Rank three."], "ranking")
    open_page(page, live_server, project, "Rank one.")
    start = listed(page, "order")
    assert listed(page, "clarity") == start

    page.keyboard.press("Shift+J")  # in the first list, the first output down one place
    page.keyboard.press("j")
    page.keyboard.press("j")  # past the end of the first list: into the second
    assert page.locator("[data-question=clarity] li.selected").count() == 1
    assert page.locator("[data-question=order] li.selected").count() == 0
    page.keyboard.press("Shift+J")
    page.keyboard.press("Shift+J")  # in the second list, the first output to the bottom
    order = [start[1], start[0], start[2]]
    clarity = [start[1], start[2], start[0]]
    assert (listed(page, "order"), listed(page, "clarity")) == (order, clarity)

    page.reload()
    page.wait_for_selector("pre.text:has-text('Rank one.')")
    assert (listed(page, "order"), listed(page, "clarity")) == (order, clarity)
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    assert answers_of(rater) == {
        "order": {"ranking": [[i] for i in order]},
        "clarity": {"ranking": [[i] for i in clarity]},
    }
    assert not page.js_errors


def focused_name(page):
    return page.evaluate("document.activeElement.getAttribute('name')")


def test_f_focuses_the_first_feedback_question_whatever_it_is_called(live_server, page, django_user_model):
    # A rubric called "feedback" and a fix come first: F still goes to the first written feedback.
    questions = [
        {"name": "feedback", "kind": "rubric", "flags": [{"name": "off_topic"}]},
        {"name": "rewrite", "kind": "fix"},
        {"name": "critique", "kind": "feedback"},
        {"name": "anything_else", "kind": "feedback", "required": False},
    ]
    project, rater = rater_on(django_user_model, questions)
    add_task(project, "f1", ["A summary to criticise."], "single")
    open_page(page, live_server, project, "A summary to criticise.")
    page.keyboard.press("f")
    assert focused_name(page) == "critique"
    page.keyboard.type("Misses the point.")
    page.keyboard.press("Escape")
    page.keyboard.press("x")
    assert focused_name(page) == "rewrite"
    page.keyboard.press("Escape")
    page.keyboard.press("F")
    assert focused_name(page) == "critique"
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    assert answers_of(rater) == {"critique": "Misses the point."}


def test_optional_is_said_once_whatever_its_case(live_server, page, django_user_model):
    questions = [
        {"name": "feedback", "kind": "feedback"},
        {"name": "note", "kind": "feedback", "label": "A note (Optional)", "required": False},
        {"name": "fix", "kind": "fix"},
    ]
    project, _ = rater_on(django_user_model, questions)
    add_task(project, "o1", ["Optional summary."], "single")
    open_page(page, live_server, project, "Optional summary.")
    legends = page.eval_on_selector_all("legend", "els => els.map(e => e.textContent)")
    assert legends == ["Feedback", "A note (Optional)", "Fix (optional)"]


def test_the_page_is_modules_and_each_one_is_loaded_as_a_module(live_server, page, django_user_model):
    project, _ = rater_on(django_user_model, [{"name": "feedback", "kind": "feedback"}])
    add_task(project, "m1", ["A summary."], "single")
    requests = []
    page.on("request", lambda request: requests.append(request))
    open_page(page, live_server, project, "A summary.")
    assert page.eval_on_selector_all(
        "script[src*='/static/annotate/']", "els => els.map(e => [e.type, e.src.split('/static/')[1]])"
    ) == [["", "annotate/check.js"], ["module", "annotate/main.js"]]
    fetched = {r.url.split("/static/")[1]: r for r in requests if "/static/annotate/" in r.url}
    on_disk = {f"annotate/{p.relative_to(MODULES).as_posix()}" for p in MODULES.rglob("*.js")}
    assert set(fetched) == on_disk  # main.js's imports reach every module
    # Module scripts are fetched in CORS mode, classic scripts in no-cors mode.
    modes = {name: r.header_value("sec-fetch-mode") for name, r in fetched.items()}
    assert modes.pop("annotate/check.js") == "no-cors"
    assert set(modes.values()) == {"cors"}, modes


def test_a_module_that_fails_to_load_is_reported_to_the_rater(live_server, page, django_user_model):
    project, _ = rater_on(django_user_model, [{"name": "feedback", "kind": "feedback"}])
    add_task(project, "m2", ["A summary."], "single")
    page.route("**/static/annotate/drafts.js", lambda route: route.fulfill(status=404, body="Not found"))
    log_in(page, live_server, "rita", "rita-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    banner = page.wait_for_selector("#banner.error")
    assert "could not load its scripts" in banner.inner_text()
    assert "Loading your next task" not in page.inner_text("#stage")
