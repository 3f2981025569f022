"""The rating page takes care of the rater: a skip can be undone, long fixes fit, focus goes where
the work is, and text cannot disguise itself with invisible characters."""

import pytest

from annotation.models import Answer, Lease, Membership, Output, Project, Prompt, Task, TaskOutput
from tests.browser.conftest import log_in, screenshot
from tests.factories import QUESTIONS

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

SINGLE = [q for q in QUESTIONS if q["kind"] in ("likert", "feedback", "fix", "rubric")]


def add_task(project, key, texts, kind="single"):
    prompt = Prompt.objects.create(project=project, external_id=key, text=f"Summarise post {key}.")
    task = Task.objects.create(project=project, prompt=prompt, kind=kind)
    for position, text in enumerate(texts):
        output = Output.objects.create(prompt=prompt, text=text)
        TaskOutput.objects.create(task=task, output=output, position=position)
    return task


@pytest.fixture
def make_project(django_user_model):
    def make(questions=SINGLE, **fields):
        project = Project.objects.create(name="Care project", questions=questions, overlap=1, **fields)
        rater = django_user_model.objects.create_user("rosa", password="rosa-pass-123")
        Membership.objects.create(user=rater, project=project)
        return project

    return make


def open_page(page, live_server, project, text):
    log_in(page, live_server, "rosa", "rosa-pass-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/annotate/")
    page.wait_for_selector(f"pre.text:has-text('{text}')")


def focused(page) -> str:
    """The focused element, as tag#id[name]."""
    return page.evaluate(
        "(() => { const a = document.activeElement;"
        " return `${a.tagName.toLowerCase()}#${a.id}[${a.getAttribute('name') || ''}]`; })()"
    )


# ---------------------------------------------------------------- skip


def test_skip_waits_under_an_undo_bar_and_undo_keeps_what_was_typed(live_server, page, make_project):
    project = make_project()
    first = add_task(project, "k1", ["First summary."])
    add_task(project, "k2", ["Second summary."])
    open_page(page, live_server, project, "First summary.")
    page.keyboard.press("4")
    page.keyboard.press("f")
    page.keyboard.type("A thought I want to keep.")
    page.keyboard.press("Escape")
    page.keyboard.press("s")
    banner = page.locator("#banner")
    assert banner.is_visible() and "Skipped" in banner.inner_text() and "Undo" in banner.inner_text()
    screenshot(page, "annotate-skip-undo")
    page.wait_for_timeout(1000)
    assert Lease.objects.get(task=first).state == Lease.State.ACTIVE  # nothing sent yet
    page.click("#banner button:has-text('Undo')")
    page.wait_for_selector("pre.text:has-text('First summary.')")
    assert page.input_value("textarea[name=feedback]") == "A thought I want to keep."
    assert page.is_checked("input[name='quality.helpful'][value='4']")
    page.wait_for_timeout(5500)  # past the undo time: the undone skip is never sent
    assert Lease.objects.get(task=first).state == Lease.State.ACTIVE

    page.keyboard.press("s")
    page.wait_for_selector("pre.text:has-text('Second summary.')", timeout=10_000)
    assert Lease.objects.get(task=first).state == Lease.State.SKIPPED
    assert "Skipped" in page.inner_text("#banner")


def test_a_skip_that_fails_to_send_can_be_retried(live_server, page, make_project):
    project = make_project()
    first = add_task(project, "k3", ["Unlucky summary."])
    add_task(project, "k4", ["Lucky summary."])
    open_page(page, live_server, project, "Unlucky summary.")
    page.route("**/skip/", lambda route: route.abort())
    page.keyboard.press("s")
    page.wait_for_selector(".banner.error", timeout=10_000)
    assert "Could not reach the server" in page.inner_text("#banner")
    assert Lease.objects.get(task=first).state == Lease.State.ACTIVE
    page.keyboard.press("Control+Enter")  # no task on screen: nothing to submit, nothing breaks
    page.unroute("**/skip/")
    page.click("#banner button:has-text('Retry')")
    page.wait_for_selector("pre.text:has-text('Lucky summary.')")
    assert Lease.objects.get(task=first).state == Lease.State.SKIPPED
    assert not page.js_errors


# ---------------------------------------------------------------- long fixes and error wording


def test_a_200000_character_output_can_be_fixed_and_submitted(live_server, page, make_project):
    project = make_project(questions=[{"name": "fix", "kind": "fix", "required": True}])
    long_output = "word " * 40_000
    add_task(project, "l1", [long_output])
    open_page(page, live_server, project, "word word")
    page.evaluate(
        """() => { const area = document.querySelector("textarea[name=fix]");
        area.value = area.value + "And a proper ending."; area.dispatchEvent(new Event("input", {bubbles: true})); }"""
    )
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("text=Nothing left for you right now")
    assert Answer.objects.get(question="fix").value == long_output + "And a proper ending."


def test_a_too_long_fix_is_explained_in_plain_words_under_the_field(live_server, page, make_project):
    project = make_project(questions=[{"name": "fix", "kind": "fix", "required": True}])
    add_task(project, "l2", ["word " * 40_000])
    open_page(page, live_server, project, "word word")
    page.evaluate(
        """() => { const area = document.querySelector("textarea[name=fix]");
        area.value = "y".repeat(450000); area.dispatchEvent(new Event("input", {bubbles: true})); }"""
    )
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid[data-question=fix]")
    message = page.inner_text("[data-error-for=fix]")
    assert message == "Your fix is too long: 450,000 characters; the limit for this task is 400,000."
    assert not Answer.objects.exists()


def test_server_errors_under_a_field_do_not_show_its_internal_name(live_server, page, make_project):
    project = make_project(questions=[{"name": "feedback", "kind": "feedback"}])
    add_task(project, "l3", ["A short summary."])
    open_page(page, live_server, project, "A short summary.")
    page.evaluate(
        """() => { const area = document.querySelector("textarea[name=feedback]");
        area.value = "z".repeat(20001); area.dispatchEvent(new Event("input", {bubbles: true})); }"""
    )
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid[data-question=feedback]")
    message = page.inner_text("[data-error-for=feedback]")
    assert "answers.feedback" not in message
    assert message == "Your feedback is too long: 20,001 characters; the limit for this task is 20,000."
    assert focused(page) == "textarea#[feedback]"


# ---------------------------------------------------------------- focus


def test_focus_goes_to_the_new_task_and_to_the_first_invalid_field(live_server, page, make_project):
    project = make_project()
    add_task(project, "c1", ["Focus summary one."])
    add_task(project, "c2", ["Focus summary two."])
    open_page(page, live_server, project, "Focus summary one.")
    assert focused(page) == "h2#task-heading[]"

    page.keyboard.press("5")  # helpful; accurate is left blank
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid")
    assert focused(page) == "input#[quality.accurate]"
    page.keyboard.press("6")  # the highlighted criterion is the blank one
    assert page.is_checked("input[name='quality.accurate'][value='6']")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector(".question.invalid[data-question=feedback]")
    assert focused(page) == "textarea#[feedback]"
    page.keyboard.type("Clear enough.")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("pre.text:has-text('Focus summary two.')")
    assert focused(page) == "h2#task-heading[]"


def test_panels_take_focus_and_give_it_back(live_server, page, make_project):
    project = make_project(
        guidelines="**Be kind.** Read [the policy](https://example.org/policy).\n\n- Quote\n- Be specific"
    )
    add_task(project, "c3", ["Panel summary."])
    open_page(page, live_server, project, "Panel summary.")
    page.focus("input[name='quality.helpful'][value='3']")
    page.keyboard.press("?")
    assert page.is_visible("#help") and focused(page) == "aside#help[]"
    page.keyboard.press("Escape")
    assert page.is_hidden("#help") and focused(page) == "input#[quality.helpful]"
    page.keyboard.press("g")
    assert page.is_visible("#guidelines") and focused(page) == "aside#guidelines[]"
    assert page.inner_text("#guidelines strong") == "Be kind."  # Markdown, rendered
    screenshot(page, "annotate-guidelines-markdown")
    page.click("#guidelines [data-close]")
    assert page.is_hidden("#guidelines") and focused(page) == "input#[quality.helpful]"


# ---------------------------------------------------------------- smaller things


def test_optional_is_said_once_when_the_label_says_it(live_server, page, make_project):
    project = make_project(
        questions=[
            {"name": "feedback", "kind": "feedback"},
            {"name": "fix", "kind": "fix", "label": "Your improved summary (optional)"},
            {"name": "note", "kind": "feedback", "label": "Anything else", "required": False},
        ]
    )
    add_task(project, "o1", ["Optional summary."])
    open_page(page, live_server, project, "Optional summary.")
    assert page.inner_text("[data-question=fix] legend") == "Your improved summary (optional)"
    assert page.inner_text("[data-question=note] legend") == "Anything else (optional)"


def test_the_highlighted_criterion_survives_a_reload(live_server, page, make_project):
    project = make_project()
    add_task(project, "h1", ["Highlight summary."])
    open_page(page, live_server, project, "Highlight summary.")
    page.keyboard.press("5")  # scores helpful, moves on to accurate
    assert page.get_attribute(".likert-row.active", "data-criterion") == "accurate"
    page.reload()
    page.wait_for_selector("pre.text:has-text('Highlight summary.')")
    assert page.get_attribute(".likert-row.active", "data-criterion") == "accurate"


def test_bidi_controls_in_outputs_are_shown_as_marks(live_server, page, make_project):
    project = make_project()
    add_task(project, "b1", ["Open the attachment \u202egpj.exe today."])
    open_page(page, live_server, project, "Open the attachment")
    output = page.locator("article.output pre.text")
    assert output.locator(".invisible-char").inner_text() == "⟪U+202E⟫"
    text = output.text_content()
    assert "\u202e" not in text
    assert text.index("U+202E") < text.index("gpj.exe")
    # The mark is an element with text, the rest plain text: nothing was parsed as HTML.
    assert (
        output.evaluate("node => [...node.childNodes].map(n => n.nodeName).join(',')") == "#text,SPAN,#text"
    )
    screenshot(page, "annotate-bidi-mark")
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "annotate-bidi-mark-phone")
