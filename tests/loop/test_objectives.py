"""Training objectives per round: besides ILF, a round can learn from the raters' Likert scores of
the project's outputs (conditional training with control tokens, filtering, reward-weighted
regression); a conditionally trained adapter writes its outputs after `<|good|>` with both control
tokens banned."""

import json

import pytest
from django.core.exceptions import ValidationError

from annotation.models import Output, Prompt, Task, TaskOutput
from feedback_loop import selectors, services, tasks
from feedback_loop.engine.conditional import BAD, GOOD, is_conditional_adapter
from feedback_loop.models import Adapter, LoopConfig, Round
from tests.factories import write_judgment
from tests.loop.conftest import POSTS
from tests.loop.test_round_eager import eager  # noqa: F401 (fixture)

GOOD_TEXT = "The landlord must fix the heating soon."


def scored_outputs(project, rater, scores, *, status="pending", prefix="scored"):
    """One train prompt per score, its output, a single task and the rater's Likert judgment."""
    judgments = []
    for i, score in enumerate(scores):
        prompt = Prompt.objects.create(
            project=project, external_id=f"{prefix}-{i}", text="Summarise this post.", context=POSTS[i % 4]
        )
        text = GOOD_TEXT if score >= 5 else f"Post {i} is a thing."
        output = Output.objects.create(prompt=prompt, text=text, model_name="seed")
        task = Task.objects.create(project=project, prompt=prompt, kind=Task.Kind.SINGLE)
        TaskOutput.objects.create(task=task, output=output, position=0)
        value = {"helpful": score, "accurate": score - 1 if score > 1 else score}
        judgments.append(write_judgment(task, rater, {"quality": ("likert", value)}, status=status))
    return judgments


def test_scored_rows_are_the_mean_likert_score_of_outputs_that_may_train(project, bob, alice):
    kept = scored_outputs(project, bob, [6, 2])
    rejected = scored_outputs(project, alice, [7], status="rejected", prefix="rejected")
    round = services.round_start(project=project, user=alice)
    round.judgment_ids = [j.pk for j in kept + rejected]
    round.save()
    rows = selectors.scored_rows(round)
    assert [(row.judgment_id, row.score) for row in rows] == [(kept[0].pk, 5.5), (kept[1].pk, 1.5)]
    assert rows[0].completion == GOOD_TEXT and POSTS[0] in rows[0].prompt


def test_the_objective_is_one_of_the_known_ones(project):
    config = selectors.loop_config_of(project)
    config.objective = "dpo"
    with pytest.raises(ValidationError) as error:
        config.full_clean()
    assert "objective" in error.value.message_dict


@pytest.mark.slow
def test_a_conditional_round_trains_control_tokens_and_generates_after_good_with_them_banned(
    transactional_db,
    eager,  # noqa: F811
    project,
    loop_config,
    alice,
    bob,
    monkeypatch,
):
    loop_config.objective = LoopConfig.Objective.CONDITIONAL
    loop_config.score_percentile = 50.0
    loop_config.promotion_tolerance = 100.0  # this test is about the objective, not the promotion rule
    loop_config.training = {**loop_config.training, "learning_rate": 1e-2}
    loop_config.full_clean()
    loop_config.save()
    judgments = scored_outputs(project, bob, [7, 6, 2, 1])
    Task.objects.update(status=Task.Status.COMPLETE)
    generated = []
    real_backend = tasks._backend

    def recording_backend(model, *, adapters=None):
        backend = real_backend(model, adapters=adapters)
        generate = backend.generate

        def record(prompts, config):
            generated.append((backend.active_adapter, list(prompts), config))
            return generate(prompts, config)

        backend.generate = record
        return backend

    monkeypatch.setattr(tasks, "_backend", recording_backend)
    round = services.round_start(project=project, user=alice, reason="scores")
    round.refresh_from_db()
    assert round.state == Round.State.DONE, round.error
    assert (round.feedback_count, round.refinement_count, round.selected_count) == (4, 0, 0)

    adapter = Adapter.objects.get(round=round)
    assert is_conditional_adapter(adapter.path)  # its tokenizer learned <|good|> and <|bad|>
    assert set(adapter.training_judgments.values_list("pk", flat=True)) == {j.pk for j in judgments}
    objective = adapter.training_metrics["objective"]
    assert (
        objective["name"] == "conditional"
        and objective["good"] + objective["bad"] + objective["untagged"] == 4
    )
    assert objective["good"] == 2 and objective["bad"] == 2

    new = [(prompts, config) for name, prompts, config in generated if name == "new"]
    assert new and all(p.endswith(GOOD) for prompts, _ in new for p in prompts)
    assert all({GOOD, BAD} <= set(config.bad_words) for _, config in new)
    outputs = Output.objects.filter(round_number=round.number, generation__role="new")
    assert outputs.exists() and all(o.generation["conditional"] for o in outputs)
    assert not any(GOOD in o.text or BAD in o.text for o in Output.objects.filter(round_number=round.number))


def test_a_conditional_adapter_is_loaded_before_a_plain_one(project, alice, tmp_path):
    # An ILF round after a conditional one compares a plain adapter with a conditional parent:
    # the backend grows the vocabulary only before any other adapter is loaded.
    conditional = tmp_path / "conditional"
    conditional.mkdir()
    (conditional / "training_config.json").write_text(
        json.dumps({"run": {"config": {"added_tokens": [GOOD, BAD]}}})
    )
    first = Round.objects.create(project=project, number=1, state=Round.State.DONE)
    parent = Adapter.objects.create(project=project, round=first, path=str(conditional), checksum="a")
    second = Round.objects.create(project=project, number=2, state=Round.State.DONE)
    adapter = Adapter.objects.create(
        project=project, round=second, parent=parent, path=str(tmp_path / "plain"), checksum="b"
    )
    assert list(tasks.adapters_of(adapter)) == ["previous", "new"]
    assert list(tasks.adapters_of(parent)) == ["new"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("objective", "counts"), [("filtering", {"kept": 2, "dropped": 2}), ("rwr", {"examples": 4})]
)
def test_filtering_and_rwr_rounds_train_on_the_scores(
    transactional_db,
    eager,  # noqa: F811
    project,
    loop_config,
    alice,
    bob,
    objective,
    counts,
):
    loop_config.objective = objective
    loop_config.score_threshold = 5.0
    loop_config.promotion_tolerance = 100.0
    loop_config.save()
    scored_outputs(project, bob, [7, 6, 2, 1])
    round = services.round_start(project=project, user=alice)
    round.refresh_from_db()
    assert round.state == Round.State.DONE, round.error
    adapter = Adapter.objects.get(round=round)
    assert not is_conditional_adapter(adapter.path)
    metrics = adapter.training_metrics["objective"]
    assert metrics["name"] == objective and counts.items() <= metrics.items()
