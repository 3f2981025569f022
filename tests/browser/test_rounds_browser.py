"""A curator drives the loop in a real browser: starts a round, watches its steps move without a
reload while the worker (here: the test, writing the Round row) makes progress, sees a failure with
its error and retries it, and reads the history of earlier rounds. No model is trained: the pages
only read rows. Every page is served under a strict Content-Security-Policy, so an inline script
or style would show up as a violation."""

import os

import pytest
from django.utils import timezone

from feedback_loop import tasks as loop_tasks
from feedback_loop.models import Refinement, Round
from tests.browser.conftest import log_in, screenshot
from tests.loop_ui.conftest import feedback_judgments, make_adapter, make_round, make_staff_curator

os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PHONE = {"width": 390, "height": 844}
CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'"


@pytest.fixture
def history(project, bob, alice):
    """Three finished rounds: 1 → 2 promoted (2 active), 3 trained but not promoted."""
    judgments = feedback_judgments(
        project,
        bob,
        3,
        feedback="Name the landlord and say how long the heating has been broken. <b>not bold</b>",
        output="The post is about heating.",
    )
    parent = None
    for number, (loss, baseline, win) in enumerate(
        [(2.31, 2.52, 0.29), (2.12, 2.31, 0.34), (2.2, 2.12, 0.33)], 1
    ):
        round = make_round(
            project,
            number,
            started_by=alice,
            reason=f"{40 * number} new feedback judgments",
            feedback_count=40 * number,
            refinement_count=200 * number,
            selected_count=38 * number,
            train_example_count=38 * number,
            new_task_count=32 if number < 3 else 0,
            promoted=number < 3,
            promotion_reason="held-out loss against the active model",
            finished_at=timezone.now(),
        )
        adapter = make_adapter(
            round,
            parent=parent,
            is_active=number == 2,
            judgments=judgments,
            train_loss=(3.1, 2.6 - number / 10, 2.2 - number / 10),
            evaluation={
                "held_out_loss": loss,
                "baseline_held_out_loss": baseline,
                "n_held_out": 24,
                "win_rate": win,
                "probes": {"inverse_scaling": {"accuracy": 0.62 - number / 50}},
            },
        )
        if number < 3:
            parent = adapter
    selected = [
        Refinement.objects.create(
            round=round,
            judgment=judgment,
            text="My landlord has left the heating broken for a month; winter is coming. <script>alert(1)</script>",
            sample_index=1,
            selected=True,
            scores={"instruct_rm": 0.91},
        )
        for judgment in judgments
    ]
    round.adapter.training_refinement_ids = [r.pk for r in selected]
    round.adapter.save()
    return round


def drawn_stages(page) -> list:
    """Each step's line as the page shows it: status, words, and the bar's value and maximum."""
    return page.evaluate(
        """[...document.querySelectorAll('li.stage')].map(li => {
            const bar = li.querySelector('progress');
            return [li.dataset.stage, li.dataset.status, li.querySelector('.detail').textContent.trim(),
                    bar.hasAttribute('value') ? bar.value : null, bar.max];
        })"""
    )


def same_as_after_a_reload(page) -> bool:
    """What the poller drew from the API equals what the server draws from the row."""
    polled = drawn_stages(page)
    page.reload()
    return drawn_stages(page) == polled


def fits_the_width(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


@pytest.fixture
def strict_csp(page):
    """Serve every response with a strict CSP and record what the browser refuses."""
    violations: list[str] = []
    page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)

    def with_csp(route):
        response = route.fetch(max_redirects=0)  # the browser follows redirects itself (and keeps cookies)
        route.fulfill(response=response, headers={**response.headers, "content-security-policy": CSP})

    page.route("**/*", with_csp)
    return violations


@pytest.fixture
def no_worker(monkeypatch):
    """No Celery worker: a started round stays where the test puts it."""
    sent = []
    monkeypatch.setattr(
        loop_tasks, "enqueue_step", lambda round_id, state, countdown=None: sent.append(state)
    )
    return sent


def test_curator_starts_a_round_and_watches_it_move_without_a_reload(
    live_server, page, chromium, project, alice, history, no_worker, strict_csp
):
    log_in(page, live_server, "alice", "pw-alice-123")
    page.goto(f"{live_server.url}/projects/{project.pk}/dashboard/")
    page.click("nav.tabs >> text=Rounds")
    page.wait_for_selector("#rounds")
    assert page.locator("figure.chart").count() == 3
    assert page.locator("ul.lineage .node.active").inner_text().startswith("Round 2")
    assert fits_the_width(page)
    screenshot(page, "rounds-history")

    page.fill("input[name=reason]", "Raters wrote 120 new feedbacks")
    page.click("button:has-text('Start round')")
    page.wait_for_url(f"{live_server.url}/projects/{project.pk}/rounds/4/")
    round = Round.objects.get(project=project, number=4)
    assert (round.state, round.started_by, no_worker) == ("pending", alice, ["pending"])
    assert page.inner_text(".round-title [data-role=state]") == "Pending"
    assert "Raters wrote 120 new feedbacks" in page.inner_text("dl.facts")
    screenshot(page, "round-page-pending")

    # The worker takes up feedback, refines, selects, and is half-way through training.
    page.evaluate("window.stillTheSamePage = true")
    Round.objects.filter(pk=round.pk).update(
        state=Round.State.TRAINING,
        feedback_count=120,
        refinement_count=600,
        selected_count=117,
        train_example_count=117,
        progress={"stage": "training", "step": 45, "total_steps": 120, "loss": 1.8734},
    )
    training = page.locator("[data-stage=training]")
    training.locator("text=step 45 of 120 · loss 1.8734").wait_for(timeout=6000)
    assert training.get_attribute("data-status") == "running"
    assert page.evaluate("document.querySelector('[data-stage=training] progress').value") == 45
    assert page.get_attribute("[data-stage=selecting]", "data-status") == "done"
    assert page.inner_text(".round-title [data-role=state]") == "Training"
    assert page.evaluate("window.stillTheSamePage") is True  # moved without a reload
    assert fits_the_width(page)
    screenshot(page, "round-page")
    assert same_as_after_a_reload(page)

    # Evaluating, then trying the step again after an error: the error shows while it retries.
    Round.objects.filter(pk=round.pk).update(
        state=Round.State.EVALUATING,
        train_example_count=117,
        error="OSError: disk full",
        progress={"stage": "evaluating", "done": 0, "total": 24},
    )
    page.locator("[data-stage=evaluating] >> text=24 held-out examples").wait_for(timeout=6000)
    assert page.is_visible("text=OSError: disk full")
    assert page.get_attribute("[data-stage=training]", "data-status") == "done"
    assert same_as_after_a_reload(page)

    # The evaluation fails for good: the page reloads once to show the error and the Retry button.
    Round.objects.filter(pk=round.pk).update(
        state=Round.State.FAILED,
        failed_state=Round.State.EVALUATING,
        error="RuntimeError: CUDA out of memory <img src=x onerror=alert(1)>",
        progress={"stage": "evaluating", "done": 0, "total": 24},
    )
    page.wait_for_selector("button:has-text('Retry from evaluating')", timeout=6000)
    assert "CUDA out of memory <img src=x onerror=alert(1)>" in page.inner_text("[data-role=error]")
    assert page.get_attribute("[data-stage=evaluating]", "data-status") == "failed"
    screenshot(page, "round-page-failed")
    page.click("button:has-text('Retry from evaluating')")
    page.wait_for_selector(".message.success")
    round.refresh_from_db()
    assert (round.state, round.error) == (Round.State.EVALUATING, "")
    assert no_worker == ["pending", "evaluating"]

    # A finished round: its adapter, the judgments it trained on, and its refinements as text.
    page.goto(f"{live_server.url}/projects/{project.pk}/rounds/3/")
    assert "<script>alert(1)</script>" in page.inner_text("#refinements")
    assert "not promoted" in page.inner_text("body").lower()
    assert fits_the_width(page)
    screenshot(page, "round-page-done")

    phone = chromium.new_context(viewport=PHONE, storage_state=page.context.storage_state())
    try:
        small = phone.new_page()
        for path, name in (
            (f"rounds/{round.number}/", "round-page-phone"),
            ("rounds/", "rounds-history-phone"),
        ):
            small.goto(f"{live_server.url}/projects/{project.pk}/{path}")
            assert fits_the_width(small), name
            screenshot(small, name)
    finally:
        phone.close()

    assert page.js_errors == []
    assert strict_csp == []


def test_staff_curator_starts_a_round_from_the_admin(live_server, page, project, alice, history, no_worker):
    make_staff_curator(alice)
    log_in(page, live_server, "alice", "pw-alice-123")
    page.goto(f"{live_server.url}/admin/feedback_loop/round/")
    screenshot(page, "admin-rounds")
    page.click("text=Start round")
    page.select_option("select[name=project]", str(project.pk))
    page.fill("textarea[name=reason]", "From the admin")
    screenshot(page, "admin-round-start")
    page.click("input[type=submit][value='Start round']")
    page.wait_for_selector(".messagelist .success")
    assert "Round 4 of Summaries started." in page.inner_text(".messagelist")
    assert Round.objects.get(project=project, number=4).reason == "From the admin"

    # A second start while round 4 runs: the loop's error, and no round 5.
    page.goto(f"{live_server.url}/admin/feedback_loop/round/add/")
    page.select_option("select[name=project]", str(project.pk))
    page.click("input[type=submit][value='Start round']")
    page.wait_for_selector(".messagelist .error")
    assert "already running" in page.inner_text(".messagelist")
    assert not Round.objects.filter(project=project, number=5).exists()

    adapter = Round.objects.get(project=project, number=3).adapter
    page.goto(f"{live_server.url}/admin/feedback_loop/adapter/{adapter.pk}/change/")
    page.click("text=3 judgments")
    page.wait_for_selector("#result_list")
    assert page.locator("#result_list tbody tr").count() == 3
    screenshot(page, "admin-adapter-judgments")
