"""A project's loop settings: validated against the engine's own configs, routed to the right queues."""

import pytest
from django.core.exceptions import ValidationError

from feedback_loop import selectors, tasks


def test_loop_settings_are_created_with_defaults_on_first_use(project):
    config = selectors.loop_config_of(project)
    assert (config.n_refinements, config.selector, config.data_mode) == (
        5,
        "instruct_rm",
        "cumulative-from-base",
    )
    assert config.require_acceptance is False and config.auto_start_threshold == 0
    assert selectors.loop_config_of(project).pk == config.pk


@pytest.mark.parametrize(
    "training",
    [
        {"rnak": 8},
        {"rank": "eight"},
        {"learning_rate": "fast"},
        {"target_modules": "c_attn"},
        {"packing": "zip"},
    ],
)
def test_training_settings_the_trainer_does_not_know_are_refused(project, training):
    config = selectors.loop_config_of(project)
    config.training = training
    with pytest.raises(ValidationError) as raised:
        config.full_clean()
    assert "training" in raised.value.message_dict


def test_training_settings_become_the_trainers_config_with_checkpoints_on(project):
    config = tasks.training_config_from({"rank": 8, "learning_rate": 1, "target_modules": ["c_attn"]})
    assert (config.rank, config.learning_rate, config.target_modules) == (8, 1.0, ("c_attn",))
    assert config.save_every_steps > 0  # a worker that dies mid-training resumes


def test_every_step_that_loads_a_model_runs_on_the_model_queue_taking_feedback_on_default(settings):
    queues = {state: tasks.step_queue(state) for state in tasks.STEP_TASKS}
    assert queues == {
        "pending": "default",
        "refining": "gpu",
        "selecting": "gpu",
        "training": "gpu",
        "evaluating": "gpu",
        "generating": "gpu",
    }
    settings.REFINERY_MODEL_QUEUE = "models"
    assert tasks.step_queue("refining") == tasks.step_queue("evaluating") == "models"


def test_a_step_is_sent_to_its_queue(project, alice, settings, monkeypatch):
    sent = []
    monkeypatch.setattr(
        tasks.round_evaluate_task, "apply_async", lambda args, **kwargs: sent.append((args, kwargs))
    )
    tasks.enqueue_step(7, "evaluating")
    assert sent == [((7,), {"countdown": None, "queue": "gpu"})]


def test_the_default_tiny_model_is_built_on_first_use_and_then_reused(project, artifacts, monkeypatch):
    monkeypatch.setattr(tasks, "TINY_PRETRAIN_STEPS", 0)
    default = selectors.loop_config_of(project).snapshot()["base_model"]
    assert default == str(artifacts / "tiny-model")
    assert tasks.model_path(default) == default
    assert (artifacts / "tiny-model" / "config.json").exists()
    built = (artifacts / "tiny-model" / "config.json").stat().st_mtime_ns
    tasks.model_path(default)
    assert (artifacts / "tiny-model" / "config.json").stat().st_mtime_ns == built
    assert [p.name for p in artifacts.iterdir()] == ["tiny-model"]  # no building folder left behind


def test_a_model_given_by_name_is_never_built(project, artifacts):
    assert tasks.model_path("gpt2") == "gpt2"
    assert not artifacts.exists()


@pytest.mark.parametrize(
    "generation",
    [{"max_new_tokens": "ten"}, {"temprature": 0.7}, {"refine": {"top_p": "high"}}, {"refine": {"n": 3}}, []],
)
def test_generation_and_refiner_settings_the_engine_does_not_know_are_refused(project, generation):
    config = selectors.loop_config_of(project)
    config.generation = generation
    with pytest.raises(ValidationError) as raised:
        config.full_clean()
    assert "generation" in raised.value.message_dict


def test_generation_settings_become_the_engines_configs(project):
    settings = {
        "max_new_tokens": 20,
        "temperature": 1,
        "stop": ["\n"],
        "refine": {"max_new_tokens": 64, "seed": None},
    }
    generation = tasks.generation_config_from(settings)
    refine = tasks.refine_config_from(settings)
    assert (generation.max_new_tokens, generation.temperature, generation.stop, generation.n) == (
        20,
        1.0,
        ("\n",),
        1,
    )
    assert (refine.max_new_tokens, refine.seed) == (64, None)
