"""manage.py start_round: starts a round, refuses a second, and --wait follows it to its end."""

import io

import pytest
from django.core.management import CommandError, call_command

from feedback_loop.models import Round


def _run(*args):
    out, err = io.StringIO(), io.StringIO()
    call_command("start_round", *args, stdout=out, stderr=err)
    return out.getvalue()


def test_start_round_starts_the_projects_next_round_by_name_or_id(project):
    assert "Started round 1 of 'Summaries'" in _run(project.name, "--reason", "new feedback")
    round = Round.objects.get(project=project)
    assert (round.state, round.reason, round.started_by) == ("pending", "new feedback", None)
    with pytest.raises(CommandError, match="already running"):
        _run(str(project.pk))


def test_start_round_names_an_unknown_project(db):
    with pytest.raises(CommandError, match="no project"):
        _run("Nope")


@pytest.mark.parametrize(("ends", "error"), [("done", None), ("failed", "CUDA out of memory")])
def test_wait_follows_the_round_to_its_end_and_fails_when_the_round_fails(
    transactional_db, project, monkeypatch, ends, error
):
    from feedback_loop import tasks

    def worker(round_id, state, countdown=None):  # a worker that runs the whole round at once
        Round.objects.filter(pk=round_id).update(
            state=ends,
            error=error or "",
            progress={"stage": "training", "step": 3, "total_steps": 3, "loss": 1.0},
        )

    monkeypatch.setattr(tasks, "enqueue_step", worker)
    if error:
        with pytest.raises(CommandError, match="ended failed: CUDA out of memory"):
            _run(project.name, "--wait", "--timeout", "30")
    else:
        assert "Round 1: done." in _run(project.name, "--wait", "--timeout", "30")
