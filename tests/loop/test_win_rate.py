"""The raters' win rate of a round's new model over the previous one, from the comparison tasks the
generating step made: outcomes follow the output a rater preferred (by id, whatever side it was
shown on), ties count ½, and the interval is over tasks. Judgments are built by hand."""

import pytest
from django.urls import reverse

from feedback_loop import selectors, tasks
from feedback_loop.models import Adapter, Round
from tests.factories import write_judgment


@pytest.fixture
def round(project):
    round = Round.objects.create(project=project, number=1, state=Round.State.DONE)
    Adapter.objects.create(project=project, round=round, base_model="tiny", path="/a/1", checksum="x")
    return round


def comparison(round, i):
    """A comparison task of the round: its new model's output and the previous model's."""
    from annotation.models import Output, Prompt, Task, TaskOutput

    prompt = Prompt.objects.create(
        project=round.project, external_id=f"r{round.number}-{i}", text=f"Prompt {i}"
    )
    outputs = {}
    for role in ("new", "previous"):
        outputs[role] = Output.objects.create(
            prompt=prompt,
            text=f"{role} {i}",
            round_number=round.number,
            generation={"role": role, "round": round.number},
        )
    task = Task.objects.create(
        project=round.project, prompt=prompt, kind=Task.Kind.PAIRWISE, round_number=round.number
    )
    # Stored sides alternate, as the shuffle of outputs_enqueue leaves them.
    first, second = ("new", "previous") if i % 2 else ("previous", "new")
    TaskOutput.objects.create(task=task, output=outputs[first], position=0)
    TaskOutput.objects.create(task=task, output=outputs[second], position=1)
    return task, outputs["new"].pk, outputs["previous"].pk


def judge(task, rater, preferred, order, **fields):
    value = {"preferred": preferred, "strength": "better" if preferred else "about_the_same"}
    return write_judgment(task, rater, {"preference": ("pairwise", value)}, display_order=order, **fields)


@pytest.fixture
def raters(django_user_model):
    return [django_user_model.objects.create_user(f"rater{i}") for i in range(4)]


def test_outcomes_follow_the_preferred_output_whatever_side_it_was_shown_on(round, raters):
    (t1, n1, p1), (t2, n2, p2), (t3, n3, p3) = (comparison(round, i) for i in range(3))
    judge(t1, raters[0], n1, [p1, n1])  # new shown on the right, preferred: 1
    judge(t1, raters[1], None, [n1, p1])  # tie: ½
    judge(t2, raters[0], p2, [n2, p2])  # previous preferred: 0
    judge(t2, raters[1], n2, [p2, n2])  # 1
    judge(t3, raters[0], None, [p3, n3])  # ½
    judge(t3, raters[2], p3, [n3, p3], status="rejected")  # a curator took it out
    assert sorted(selectors.comparison_outcomes(round)) == sorted(
        [(t1.pk, 1.0), (t1.pk, 0.5), (t2.pk, 0.0), (t2.pk, 1.0), (t3.pk, 0.5)]
    )
    result = tasks.round_win_rate(round)
    assert result["win_rate"] == pytest.approx(3 / 5)
    assert (result["win_rate_n"], result["win_rate_n_tasks"]) == (5, 3)


def test_judgments_outside_the_rounds_comparisons_do_not_count(round, raters, project):
    task, new, previous = comparison(round, 0)
    judge(task, raters[0], new, [new, previous])
    other = Round.objects.create(project=project, number=2, state=Round.State.DONE)
    other_task, other_new, other_previous = comparison(other, 1)
    judge(other_task, raters[0], other_previous, [other_new, other_previous])
    # A judgment whose recorded order did not show the new output beside the previous one.
    judge(task, raters[1], previous, [previous])
    assert selectors.comparison_outcomes(round) == [(task.pk, 1.0)]


def test_the_interval_resamples_tasks_not_judgments(round, raters):
    # Two tasks whose raters all agree: one the new model wins, one it loses. Over tasks, a
    # resample is all-win, all-loss or half: the interval is [0, 1]; over six independent
    # judgments it would be much narrower.
    (t1, n1, p1), (t2, n2, p2) = comparison(round, 0), comparison(round, 1)
    for rater in raters[:3]:
        judge(t1, rater, n1, [n1, p1])
        judge(t2, rater, p2, [n2, p2])
    result = tasks.round_win_rate(round)
    assert result["win_rate"] == 0.5
    assert (result["win_rate_low"], result["win_rate_high"]) == (0.0, 1.0)
    assert result["win_rate_se"] == pytest.approx(0.5)  # cluster-robust, over the two tasks


def test_the_periodic_task_stores_the_win_rate_once_per_new_judgment(round, raters):
    t1, n1, p1 = comparison(round, 0)
    judge(t1, raters[0], n1, [p1, n1])
    round.adapter.evaluation = {"held_out_loss": 1.5}
    round.adapter.save()
    assert tasks.rounds_win_rate_task() == [round.pk]
    evaluation = Adapter.objects.get(pk=round.adapter.pk).evaluation
    assert evaluation["held_out_loss"] == 1.5  # the evaluating step's numbers stay
    assert (evaluation["win_rate"], evaluation["win_rate_n"], evaluation["win_rate_se"]) == (1.0, 1, None)
    assert tasks.rounds_win_rate_task() == []  # nothing new
    judge(t1, raters[1], p1, [n1, p1])
    assert tasks.rounds_win_rate_task() == [round.pk]
    assert Adapter.objects.get(pk=round.adapter.pk).evaluation["win_rate"] == 0.5


def test_beat_updates_win_rates(settings):
    from config.celery import app

    entry = settings.CELERY_BEAT_SCHEDULE["loop-win-rates"]
    assert entry["task"] == "feedback_loop.update_win_rates" in app.tasks
    assert entry["schedule"] <= 600


def test_round_page_shows_the_win_rate(round, raters, alice):
    from django.test import Client

    (t1, n1, p1), (t2, n2, p2) = comparison(round, 0), comparison(round, 1)
    judge(t1, raters[0], n1, [n1, p1])
    judge(t2, raters[0], None, [p2, n2])
    assert tasks.rounds_win_rate_task() == [round.pk]
    client = Client()
    client.force_login(alice)
    page = client.get(reverse("loop-round", args=[round.project_id, round.number])).content.decode()
    assert "<strong>0.750</strong> of 2 comparisons on 2 tasks" in page
