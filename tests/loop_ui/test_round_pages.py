"""The loop's curator pages: who may see and drive them, what the buttons do, what a round page
shows while it runs and after, that model text is escaped, and the history page at 0, 1 and many
rounds."""

import re

import pytest
from django.urls import reverse

from feedback_loop.models import Refinement, Round
from tests.loop_ui.conftest import client_for, feedback_judgments, make_adapter, make_round

SCRIPT = "<script>alert('pwned')</script>"


def rounds_url(project):
    return reverse("loop-rounds", args=[project.pk])


def round_url(round, suffix=""):
    return reverse("loop-round", args=[round.project_id, round.number]) + suffix


# ---------------------------------------------------------------- access


@pytest.fixture
def running(project, alice):
    return make_round(project, 1, state=Round.State.TRAINING, started_by=alice, reason="new feedback")


def every_page(project, round):
    return [
        ("get", rounds_url(project)),
        ("get", round_url(round)),
        ("post", reverse("loop-round-start", args=[project.pk])),
        ("post", round_url(round, "retry/")),
        ("post", round_url(round, "cancel/")),
    ]


def test_rater_gets_403_on_every_loop_page_and_button(project, running, bob):
    client = client_for(bob)
    for method, url in every_page(project, running):
        assert getattr(client, method)(url).status_code == 403, url
    running.refresh_from_db()
    assert running.state == Round.State.TRAINING
    assert Round.objects.filter(project=project).count() == 1


def test_outsider_gets_404_on_every_loop_page_and_button(project, running, charlie, dave, other_project):
    for user in (charlie, dave):
        client = client_for(user)
        for method, url in every_page(project, running):
            assert getattr(client, method)(url).status_code == 404, (user, url)
    assert Round.objects.filter(project=project).count() == 1


def test_anonymous_user_is_sent_to_the_login_page(client, project, running):
    for method, url in every_page(project, running):
        response = getattr(client, method)(url)
        assert response.status_code == 302 and response.url.startswith(reverse("login")), url


def test_round_of_another_project_is_not_reachable_through_this_project(project, other_project, alice):
    make_round(other_project, 1)
    assert client_for(alice).get(reverse("loop-round", args=[project.pk, 1])).status_code == 404


def test_curator_pages_link_to_the_rounds_tab(project, alice_client):
    page = alice_client.get(reverse("curation-dashboard", args=[project.pk])).content.decode()
    assert f'href="{rounds_url(project)}"' in page


# ---------------------------------------------------------------- start, retry, cancel


def test_curator_starts_a_round_and_lands_on_its_page_in_pending_state(project, alice, alice_client):
    response = alice_client.post(
        reverse("loop-round-start", args=[project.pk]), {"reason": "400 new feedbacks"}
    )
    round = Round.objects.get(project=project)
    assert response.status_code == 302 and response.url == round_url(round)
    assert (round.number, round.state, round.started_by, round.reason) == (
        1,
        Round.State.PENDING,
        alice,
        "400 new feedbacks",
    )
    page = alice_client.get(response.url).content.decode()
    assert "Round 1 started." in page
    assert 'data-state="pending"' in page
    assert "400 new feedbacks" in page
    assert "Cancel round" in page


def test_second_start_while_a_round_runs_shows_the_services_error_and_starts_nothing(
    project, running, alice_client
):
    response = alice_client.post(reverse("loop-round-start", args=[project.pk]), follow=True)
    assert response.status_code == 200
    assert "No round was started: a round of this project is already running." in response.content.decode()
    assert list(Round.objects.filter(project=project).values_list("number", flat=True)) == [1]


def test_curator_retries_a_failed_round_from_the_step_that_failed(project, alice_client):
    failed = make_round(
        project, 1, state=Round.State.FAILED, failed_state=Round.State.TRAINING, error="CUDA out of memory"
    )
    page = alice_client.get(round_url(failed)).content.decode()
    assert "Retry from training" in page and "CUDA out of memory" in page
    response = alice_client.post(round_url(failed, "retry/"), follow=True)
    failed.refresh_from_db()
    assert (failed.state, failed.error) == (Round.State.TRAINING, "")
    assert "resumes from the step that failed" in response.content.decode()


def test_retrying_a_round_that_did_not_fail_is_refused_with_a_message(project, alice_client):
    done = make_round(project, 1, state=Round.State.DONE)
    response = alice_client.post(round_url(done, "retry/"), follow=True)
    assert "was not retried: only a failed round can be retried" in response.content.decode()
    done.refresh_from_db()
    assert done.state == Round.State.DONE


def test_curator_cancels_a_running_round(project, running, alice_client):
    response = alice_client.post(round_url(running, "cancel/"), follow=True)
    running.refresh_from_db()
    assert running.state == Round.State.CANCELLED
    page = response.content.decode()
    assert "Round 1 is cancelled." in page
    assert "Cancel round" not in page  # nothing left to cancel


def test_buttons_refuse_get(project, running, alice_client):
    for suffix in ("retry/", "cancel/"):
        assert alice_client.get(round_url(running, suffix)).status_code == 405
    assert alice_client.get(reverse("loop-round-start", args=[project.pk])).status_code == 405


# ---------------------------------------------------------------- a round's page


def stage_row(page: str, state: str) -> str:
    match = re.search(rf'<li class="stage" data-stage="{state}".*?</li>', page, re.S)
    assert match, state
    return match.group(0)


def test_training_round_shows_step_of_total_with_loss_and_earlier_steps_done(project, alice_client):
    round = make_round(
        project,
        1,
        state=Round.State.TRAINING,
        feedback_count=12,
        refinement_count=60,
        selected_count=11,
        progress={"stage": "training", "step": 30, "total_steps": 120, "loss": 1.23456},
    )
    page = alice_client.get(round_url(round)).content.decode()
    training = stage_row(page, "training")
    assert 'data-status="running"' in training
    assert 'value="30" max="120"' in training
    assert "step 30 of 120 · loss 1.2346" in training
    assert "11 selected for 12 feedback" in stage_row(page, "selecting")
    assert 'data-status="done"' in stage_row(page, "refining")
    assert 'data-status="todo"' in stage_row(page, "evaluating")
    assert 'src="/static/round.js"' in page and 'type="module"' in page


def test_refining_round_shows_how_many_feedback_items_are_refined(project, alice_client):
    round = make_round(
        project, 1, state=Round.State.REFINING, progress={"stage": "refining", "done": 0, "total": 40}
    )
    refining = stage_row(alice_client.get(round_url(round)).content.decode(), "refining")
    assert 'data-status="running"' in refining and 'value="0" max="40"' in refining

    Round.objects.filter(pk=round.pk).update(progress={"stage": "refining", "done": 32, "total": 40})
    page = alice_client.get(round_url(round)).content.decode()
    refining = stage_row(page, "refining")
    assert 'value="32" max="40"' in refining
    assert "32 of 40 feedback items refined" in refining
    # The poller reads the loop's API, and the state names come with the page.
    assert f'data-api-url="{reverse("round-detail", args=[round.pk])}"' in page
    assert 'id="round-state-labels"' in page


def test_failed_round_marks_the_step_it_failed_at(project, alice_client):
    round = make_round(
        project,
        1,
        state=Round.State.FAILED,
        failed_state=Round.State.EVALUATING,
        error="boom",
        progress={"stage": "evaluating", "done": 0, "total": 8},
    )
    page = alice_client.get(round_url(round)).content.decode()
    by_state = {
        state: re.search(r'data-status="(\w+)"', stage_row(page, state)).group(1)
        for state in ("pending", "refining", "selecting", "training", "evaluating", "generating")
    }
    assert by_state == {
        "pending": "done",
        "refining": "done",
        "selecting": "done",
        "training": "done",
        "evaluating": "failed",
        "generating": "todo",
    }
    assert "Failed at evaluating" in page and "8 held-out examples" in stage_row(page, "evaluating")
    assert "Cancel round" in page  # a failed round may still be given up
    assert 'src="/static/round.js"' not in page  # nothing moves any more: no polling


def test_round_page_shows_adapter_refinements_and_new_tasks(project, bob, alice, alice_client):
    judgments = feedback_judgments(project, bob, 3, feedback="Say who is affected.", output="A summary.")
    round = make_round(
        project, 1, state=Round.State.DONE, feedback_count=3, selected_count=3, new_task_count=2
    )
    for judgment in judgments:
        Refinement.objects.create(round=round, judgment=judgment, text="Candidate one.", sample_index=0)
        Refinement.objects.create(
            round=round,
            judgment=judgment,
            text=f"Better summary {judgment.pk}.",
            sample_index=1,
            selected=True,
            scores={"instruct_rm": 0.875},
        )
    adapter = make_adapter(
        round,
        is_active=True,
        judgments=judgments,
        evaluation={"held_out_loss": 1.5, "baseline_held_out_loss": 1.75, "n_held_out": 20},
    )
    from annotation.models import Task

    for task in Task.objects.filter(project=project)[:2]:
        Task.objects.filter(pk=task.pk).update(round_number=1)
    page = alice_client.get(round_url(round)).content.decode()
    assert adapter.checksum in page
    assert "3 judgments, 0 examples" in page
    assert "held_out_loss" in page and "1.5" in page
    assert "Better summary" in page and "Say who is affected." in page and "A summary." in page
    assert "1 of 2" in page and "instruct_rm 0.875" in page
    assert "2 tasks for raters" in page
    assert "active model" in page


def test_model_and_rater_text_is_escaped_everywhere_on_the_round_page(project, bob, alice_client):
    [judgment] = feedback_judgments(project, bob, 1, feedback=f"feedback {SCRIPT}", output=f"output {SCRIPT}")
    round = make_round(
        project,
        1,
        state=Round.State.FAILED,
        failed_state=Round.State.REFINING,
        error=f"error {SCRIPT}",
        reason=f"reason {SCRIPT}",
    )
    Refinement.objects.create(round=round, judgment=judgment, text=f"refined {SCRIPT}", selected=True)
    make_adapter(round, judgments=[judgment], evaluation={f"metric {SCRIPT}": 1.0})
    for url in (round_url(round), rounds_url(project)):
        page = alice_client.get(url).content.decode()
        assert "<script>alert" not in page, url
    page = alice_client.get(round_url(round)).content.decode()
    escaped = "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;"
    for prefix in ("feedback", "output", "error", "reason", "refined", "metric"):
        assert f"{prefix} {escaped}" in page, prefix


# ---------------------------------------------------------------- the history page


def test_history_page_with_no_round(project, alice_client):
    page = alice_client.get(rounds_url(project)).content.decode()
    assert "No rounds yet." in page
    assert "No evaluated adapter yet." in page
    assert "No adapter trained yet" in page
    assert "<svg" not in page
    assert "Start round" in page


def test_rounds_page_counts_the_feedback_no_round_has_taken_up(project, bob, alice_client):
    judgments = feedback_judgments(project, bob, 3)
    taken = make_round(project, 1)
    Refinement.objects.create(round=taken, judgment=judgments[0], text="taken up by round 1")
    page = alice_client.get(rounds_url(project)).content.decode()
    assert re.search(r"<strong>2</strong> feedback judgments no round has taken up yet", page)


def test_history_page_with_one_round(project, alice_client):
    round = make_round(project, 1, promoted=True)
    make_adapter(round, is_active=True, evaluation={"held_out_loss": 1.25, "baseline_held_out_loss": 1.5})
    page = alice_client.get(rounds_url(project)).content.decode()
    assert page.count('<tr data-round="') == 1
    assert "1.2500" in page
    assert page.count('<figure class="chart">') == 1  # loss only: no task metric or probes yet
    assert page.count("<circle") == 3  # one round: new, replaced and final training loss
    assert "generates with round 1's adapter" in page


def test_history_page_with_several_rounds_plots_metrics_and_lineage(project, alice_client):
    parent = None
    for number in (1, 2, 3):
        round = make_round(project, number, promoted=number != 3)
        parent_next = make_adapter(
            round,
            parent=parent,
            is_active=number == 2,
            evaluation={
                "held_out_loss": 2.0 - number / 10,
                "baseline_held_out_loss": 2.1 - number / 10,
                "win_rate": 0.25 + number / 20,
                "probes": {
                    "inverse_scaling": {"accuracy": 0.5 + number / 100},
                    "biased_cot": {"flip_rate": 0.2},
                },
            },
        )
        parent = parent_next if number != 3 else parent
    make_round(project, 4, state=Round.State.REFINING)
    page = alice_client.get(rounds_url(project)).content.decode()
    assert page.count('<tr data-round="') == 4
    assert page.count('<figure class="chart">') == 3
    for title in ("Loss", "Task metric", "Regression probes"):
        assert f">{title}</text>" in page
    assert "inverse_scaling.accuracy" in page and "win rate: new adapter" in page
    assert page.count("<polyline") == 3 + 1 + 2  # loss: new, replaced, training; win rate; two probes
    # Lineage: round 1 → round 2 (active) → rounds 3 (not promoted) under round 2.
    lineage = page[page.index('<ul class="lineage">') :]
    assert lineage.index("Round 1") < lineage.index("Round 2") < lineage.index("Round 3")
    assert lineage.count('<ul class="lineage">') == 3
    assert re.search(r'class="node active">\s*<a href="[^"]+/rounds/2/">Round 2', lineage)
    assert "Round 4 is refining" in page


def test_code_project_history_plots_pass_at_1_of_the_adapter_and_the_model_it_replaced(project, alice_client):
    for number, (new, old) in enumerate([(0.25, 0.2), (0.4, 0.25)], 1):
        make_adapter(make_round(project, number), evaluation={"pass@1": new, "baseline_pass@1": old})
    page = alice_client.get(rounds_url(project)).content.decode()
    assert ">Task metric</text>" in page
    assert "pass@1: new adapter" in page and "pass@1: model it replaced" in page
    assert "pass@1: new adapter, round 2: 0.4" in page


def test_history_chart_scales_points_into_the_plot_box():
    from feedback_loop.reports import Chart, Series, layout

    chart = layout(Chart(title="Loss", series=[Series("loss", [(1, 2.0), (2, 1.0), (3, 1.5)])]))
    [line] = chart.lines
    xs = [p["x"] for p in line["points"]]
    ys = [p["y"] for p in line["points"]]
    assert xs == sorted(xs) and xs[0] == chart.box["left"] and xs[-1] == chart.box["right"]
    assert chart.box["top"] <= min(ys) and max(ys) <= chart.box["bottom"]
    assert ys[0] < ys[2] < ys[1]  # SVG y grows downwards: the highest value is nearest the top
