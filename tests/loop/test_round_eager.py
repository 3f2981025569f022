"""A whole round on the tiny model, its Celery tasks run in-process (eager) on both databases."""

import itertools
from pathlib import Path

import pytest
from celery import current_app

from annotation.models import Output, Prompt, Task
from annotation.services.leases import lease_acquire
from feedback_loop import services
from feedback_loop.models import Adapter, Refinement, Round
from tests.loop.conftest import POSTS, make_feedback

pytestmark = pytest.mark.slow


@pytest.fixture
def eager(settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    # The Celery app read its configuration once already: tell it too.
    before = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = before


FIX = "The landlord must fix the heating soon."


@pytest.fixture
def feedback_project(project, bob, loop_config):
    """Feedback on four train prompts (one with a rater's fix), two held-out prompts with gold.

    The held-out gold is the fix, which the adapter trains on, and the learning rate is high enough
    for three steps to matter: the adapter is promoted and writes outputs unlike the base model's.
    """
    loop_config.training = {**loop_config.training, "learning_rate": 1e-2}
    loop_config.save()
    judgments = make_feedback(project, bob, 3)
    judgments += make_feedback(project, bob, 1, prefix="fixed", fix=FIX)
    for i in range(2):
        Prompt.objects.create(
            project=project,
            external_id=f"eval-{i}",
            text="Summarise this post.",
            context=POSTS[0],
            split=Prompt.Split.EVAL,
            gold=FIX,
        )
    # The seed tasks are done: the queue holds only what the round adds.
    Task.objects.update(status=Task.Status.COMPLETE)
    return project, judgments


def test_a_round_refines_selects_trains_evaluates_and_puts_new_tasks_before_raters(
    transactional_db, eager, feedback_project, alice, bob
):
    project, judgments = feedback_project
    round = services.round_start(project=project, user=alice, reason="first round")
    round.refresh_from_db()
    assert round.state == Round.State.DONE, round.error
    assert round.promoted is not None and round.promotion_reason

    # Refinements: the refiner's samples for the three feedback judgments, the rater's fix as a human one.
    refinements = Refinement.objects.filter(round=round)
    assert refinements.filter(source="human").count() == 1
    assert set(refinements.values_list("judgment_id", flat=True)) <= {j.pk for j in judgments}
    assert round.feedback_count == 4 and round.refinement_count == refinements.count()
    # Selection: at most one per feedback, scored by InstructRM; the fix is selected.
    selected = refinements.filter(selected=True)
    assert selected.count() == round.selected_count
    assert selected.filter(source="human").exists()
    assert len(set(selected.values_list("judgment_id", flat=True))) == selected.count()
    assert all("instruct_rm" in r.scores for r in refinements.filter(source="model"))

    # The adapter: files with their checksum, the exact judgments and refinements it trained on.
    adapter = Adapter.objects.get(round=round)
    assert len(adapter.checksum) == 64
    assert adapter.path.endswith(f"adapters/{project.pk}/round-1")
    assert set(adapter.training_judgments.values_list("pk", flat=True)) == set(
        selected.values_list("judgment_id", flat=True)
    )
    assert sorted(adapter.training_refinement_ids) == sorted(selected.values_list("pk", flat=True))
    assert adapter.training_metrics["steps"] == 3
    assert len(round.dataset_sha256) == 64 and round.train_example_count == selected.count()
    # The evaluation: held-out loss of the adapter and of the base model on the eval prompts' gold.
    assert adapter.evaluation["n_held_out"] == 2
    assert adapter.evaluation["held_out_loss"] > 0 and adapter.evaluation["baseline_held_out_loss"] > 0
    assert adapter.evaluation["held_out_loss"] < adapter.evaluation["baseline_held_out_loss"]
    assert round.promoted is True and adapter.is_active

    # New outputs with their provenance, as single tasks and as comparisons with the base model.
    new_outputs = Output.objects.filter(round_number=1, generation__role="new")
    assert new_outputs.count() == 3  # generation_batch
    assert {(o.model_name, o.adapter) for o in new_outputs} == {(round.config["base_model"], adapter.path)}
    tasks = Task.objects.filter(round_number=1)
    assert tasks.count() == round.new_task_count
    assert tasks.filter(kind="single").count() == 3
    assert tasks.filter(kind="pairwise").exists()
    for pair in tasks.filter(kind="pairwise"):
        assert sorted(pair.outputs.values_list("generation__role", flat=True)) == ["new", "previous"]
    lease = lease_acquire(project=project, rater=bob)
    assert lease is not None and lease.task.round_number == 1


def test_a_round_whose_adapter_regresses_ends_done_unpromoted_without_new_tasks(
    transactional_db, eager, feedback_project, alice
):
    project, _ = feedback_project
    config = project.loop_config
    config.promotion_tolerance = 0.0
    config.training = {**config.training, "learning_rate": 0.5, "max_steps": 3}  # a step far too big
    config.save()
    round = services.round_start(project=project, user=alice)
    round.refresh_from_db()
    assert round.state == Round.State.DONE, round.error
    assert round.promoted is False and "worse" in round.promotion_reason
    assert Task.objects.filter(round_number=1).count() == 0
    assert not Adapter.objects.filter(project=project, is_active=True).exists()


def test_a_failing_step_fails_the_round_and_retry_resumes_from_it(
    transactional_db, eager, feedback_project, alice, monkeypatch
):
    from feedback_loop import tasks

    project, _ = feedback_project
    real_train = tasks.train_lora

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(tasks, "train_lora", broken)
    round = services.round_start(project=project, user=alice)
    round.refresh_from_db()
    assert (round.state, round.failed_state) == ("failed", "training")
    assert "CUDA out of memory" in round.error
    refinement_ids = set(Refinement.objects.filter(round=round).values_list("pk", flat=True))

    monkeypatch.setattr(tasks, "train_lora", real_train)
    services.round_retry(round=round)
    round.refresh_from_db()
    assert round.state == "done", round.error
    # Resumed at training: the refinements are the first try's, not made again.
    assert set(Refinement.objects.filter(round=round).values_list("pk", flat=True)) == refinement_ids
    assert Adapter.objects.filter(round=round).exists()


def test_a_full_disk_while_saving_the_adapter_fails_the_round_clearly_and_records_no_adapter(
    transactional_db, eager, feedback_project, alice, monkeypatch
):
    import errno

    import peft.peft_model

    project, _ = feedback_project
    real_save = peft.peft_model.safe_save_file

    def full(tensors, filename, *args, **kwargs):
        with open(filename, "wb") as f:  # the first bytes, as a full disk leaves them
            f.write(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device", str(filename))

    monkeypatch.setattr(peft.peft_model, "safe_save_file", full)
    round = services.round_start(project=project, user=alice)
    round.refresh_from_db()
    assert (round.state, round.failed_state) == ("failed", "training")
    assert round.error.startswith("no space left on device writing "), round.error
    assert "free disk space, then retry the round" in round.error
    assert not Adapter.objects.filter(round=round).exists()
    folder = round.adapter_dir()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoints", "dataset.sha256"]

    monkeypatch.setattr(peft.peft_model, "safe_save_file", real_save)
    services.round_retry(round=round)
    round.refresh_from_db()
    assert round.state == "done", round.error
    adapter = Adapter.objects.get(round=round)
    assert (Path(adapter.path) / "adapter.sha256").read_text().split()[0] == adapter.checksum


def test_training_reports_its_progress_and_a_crashed_try_resumes_from_its_checkpoint(
    transactional_db, eager, feedback_project, alice, monkeypatch
):
    project, _ = feedback_project
    config = project.loop_config
    config.stage_retries = 1
    config.save()
    reported = []
    real_heartbeat = services.round_heartbeat

    def heartbeat(*, round_id, token, progress=None):
        reported.append(progress)
        if (
            progress
            and progress.get("step") == 2
            and len([p for p in reported if p and p.get("step") == 2]) == 1
        ):
            # The checkpoint of step 2 is on disk; the worker dies before step 3.
            raise RuntimeError("worker lost")
        return real_heartbeat(round_id=round_id, token=token, progress=progress)

    monkeypatch.setattr(services, "round_heartbeat", heartbeat)
    round = services.round_start(project=project, user=alice)
    round.refresh_from_db()
    assert round.state == "done", round.error
    training = [p for p in reported if p and p.get("stage") == "training" and p.get("step")]
    assert [p["step"] for p in training] == [1, 2, 3]  # the second try starts after step 2
    assert all(p["total_steps"] == 3 and p["loss"] > 0 for p in training)
    metrics = Adapter.objects.get(round=round).training_metrics
    assert (metrics["steps"], metrics["steps_this_run"]) == (3, 1)


def test_a_round_tells_the_projects_webhooks_each_state_change_and_the_promotion(
    transactional_db, eager, feedback_project, alice, settings
):
    from annotation.models import Webhook, WebhookDelivery

    project, _ = feedback_project
    settings.REFINERY_WEBHOOKS_ALLOW_PRIVATE = True
    # Deliveries are recorded in the loop's transactions; sending them is the webhook tests' business.
    settings.REFINERY_WEBHOOKS_MAX_ATTEMPTS = 1
    Webhook.objects.create(
        project=project,
        url="http://127.0.0.1:9/",
        secret="s",
        events=[Webhook.Event.ROUND_STATE_CHANGED, Webhook.Event.ADAPTER_PROMOTED],
    )
    round = services.round_start(project=project, user=alice, reason="events")
    round.refresh_from_db()
    assert round.state == Round.State.DONE, round.error

    changes = [
        (d.payload["from"], d.payload["to"])
        for d in WebhookDelivery.objects.filter(event=Webhook.Event.ROUND_STATE_CHANGED).order_by("pk")
    ]
    path = ["", "pending", "refining", "selecting", "training", "evaluating"]
    path += ["generating", "done"] if round.promoted else ["done"]
    assert changes == list(itertools.pairwise(path))
    promoted = WebhookDelivery.objects.filter(event=Webhook.Event.ADAPTER_PROMOTED)
    assert promoted.count() == (1 if round.promoted else 0)
    if round.promoted:
        assert promoted.get().payload["adapter"] == Adapter.objects.get(round=round).pk


def test_a_full_disk_said_in_words_by_a_library_is_named_as_one():
    from feedback_loop import tasks

    class SafetensorError(Exception):
        pass

    said = tasks.step_error(
        "training",
        SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)"),
    )
    assert said.startswith("no space left on device during training: nothing of the step was kept")
    assert said.endswith(
        "(SafetensorError: Error while serializing: I/O error: No space left on device (os error 28))"
    )
    assert (
        tasks.step_error("training", RuntimeError("CUDA out of memory")) == "RuntimeError: CUDA out of memory"
    )
