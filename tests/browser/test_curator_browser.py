"""A curator at work in a real browser: rejects a judgment in the admin with a reason, sees it leave
the training export, and finds the dashboard, raters and import pages usable on a laptop and a phone."""

import json
import os

import pytest
from django.contrib.auth.models import Permission

from annotation.models import AuditEvent, Judgment, Membership
from tests.browser.conftest import log_in, screenshot
from tests.curation_data import judge, output_ids
from tests.factories import make_tasks

# Playwright's sync API runs an event loop in this thread (tests/browser/conftest.py sets it too).
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def curated(project, alice, bob, django_user_model):
    """Alice is a staff curator (not a superuser); Bob has judged two outputs and a comparison."""
    alice.is_staff = True
    alice.save()
    alice.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    singles = make_tasks(project, 2, prefix="post-")
    judgments = [
        judge(
            task,
            bob,
            {
                "quality": {"helpful": 3 + i, "accurate": 4 + i},
                "feedback": f"Feedback {i}: <b>not bold</b> and mention the deadline.",
                "fix": f"Bob's fix number {i}.",
            },
            time_spent_ms=12_000 + 1000 * i,
        )
        for i, task in enumerate(singles)
    ]
    [pair] = make_tasks(project, 1, kind="pairwise", prefix="pair-")
    judge(pair, bob, {"preference": {"preferred": output_ids(pair)[1], "strength": "better"}})
    # A second rater on the same tasks, so the dashboard has agreement to show.
    erin = django_user_model.objects.create_user("erin")
    Membership.objects.create(user=erin, project=project, role=Membership.Role.RATER)
    for task, scores in zip(singles, [(3, 5), (4, 5)], strict=True):
        judge(
            task,
            erin,
            {"quality": dict(zip(["helpful", "accurate"], scores, strict=True)), "feedback": "Fine."},
        )
    judge(pair, erin, {"preference": {"preferred": output_ids(pair)[1], "strength": "slightly_better"}})
    return judgments


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def sft_completions(page, live_server, project) -> set[str]:
    response = page.request.get(f"{live_server.url}/projects/{project.pk}/exports/sft.jsonl")
    assert response.ok
    return {json.loads(line)["completion"] for line in response.text().splitlines()}


def test_curator_rejects_a_judgment_in_the_admin_and_it_leaves_the_training_export(
    live_server, page, project, curated, alice
):
    rejected, kept = curated
    log_in(page, live_server, "alice", "pw-alice-123")
    screenshot(page, "curator-home")
    assert sft_completions(page, live_server, project) == {"Bob's fix number 0.", "Bob's fix number 1."}

    page.goto(f"{live_server.url}/admin/annotation/judgment/?project__id__exact={project.pk}")
    assert "helpful 3 accurate 4" in page.inner_text("#result_list")
    screenshot(page, "admin-judgment-list")
    page.check(f"input[name=_selected_action][value='{rejected.pk}']")
    page.select_option("select[name=action]", "review_reject")
    page.click("button[name=index]")

    # The confirmation page wants a reason before anything changes.
    page.wait_for_selector("textarea[name=reason]")
    assert "Feedback 0: <b>not bold</b>" in page.inner_text(".review-confirm table")  # shown as text
    assert page.get_attribute("textarea[name=reason]", "required") is not None  # the browser asks first
    assert Judgment.objects.get(pk=rejected.pk).status == "pending"
    page.fill("textarea[name=reason]", "The fix repeats the output word for word.")
    screenshot(page, "admin-review-confirmation")
    page.click("input[type=submit].default")
    page.wait_for_selector(".messagelist .success")
    assert "1 judgment marked rejected" in page.inner_text(".messagelist")

    assert Judgment.objects.get(pk=rejected.pk).status == "rejected"
    assert Judgment.objects.get(pk=kept.pk).status == "pending"
    event = AuditEvent.objects.get()
    assert (event.actor, event.object_id, event.reason) == (
        alice,
        rejected.pk,
        "The fix repeats the output word for word.",
    )
    assert sft_completions(page, live_server, project) == {"Bob's fix number 1."}

    # The judgment's own page: outputs as text, the review buttons, and its history.
    page.goto(f"{live_server.url}/admin/annotation/judgment/{rejected.pk}/change/")
    page.wait_for_selector("#review")
    assert "The fix repeats the output word for word." in page.inner_text("body")
    screenshot(page, "admin-judgment-change")


def test_curator_pages_render_on_a_laptop_and_a_phone(live_server, page, chromium, project, curated):
    log_in(page, live_server, "alice", "pw-alice-123")
    base = f"{live_server.url}/projects/{project.pk}"

    page.goto(f"{base}/dashboard/")
    plot = page.wait_for_selector("img.plot")
    assert plot.get_attribute("src").startswith("data:image/png;base64,")
    assert page.locator("img.plot").count() == 3  # helpful, accurate, preference
    # Every PNG decodes.
    assert page.evaluate("[...document.querySelectorAll('img.plot')].every(img => img.naturalWidth > 100)")
    assert page.inner_text("#agreement")
    screenshot(page, "curator-dashboard")

    page.goto(f"{base}/raters/")
    assert "bob" in page.inner_text("#raters")
    page.fill("input[name=username]", "newrater")
    page.check("input[name=create_account]")
    page.click("form.add-member button[type=submit]")
    password = page.inner_text("#one-time-password")
    assert len(password) >= 12
    screenshot(page, "curator-raters")

    page.goto(f"{base}/import/")
    page.set_input_files(
        "input[name=file]",
        files=[
            {
                "name": "prompts.jsonl",
                "mimeType": "application/json",
                "buffer": b'{"external_id": "a", "text": "Fine"}\n{"external_id": "b", "text": ""}\n',
            }
        ],
    )
    page.click("form.import button[type=submit]")
    error = page.wait_for_selector(".field-error")
    assert "line 2" in error.inner_text()
    screenshot(page, "curator-import-error")

    phone = chromium.new_context(viewport=PHONE, storage_state=page.context.storage_state())
    try:
        small = phone.new_page()
        for name in ("dashboard", "raters", "import"):
            small.goto(f"{base}/{name}/")
            assert no_sideways_scroll(small), f"the {name} page scrolls sideways on a phone"
            screenshot(small, f"curator-{name}-phone")
    finally:
        phone.close()
