"""Fixtures of the loop tests: a project with feedback to learn from, and the tiny model."""

import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.factories import write_judgment

TINY_PRETRAIN_STEPS = 60  # words rather than noise; a few seconds on a CPU

# Everything small enough that a whole round runs in seconds on a CPU.
FAST_LOOP = {
    "n_refinements": 2,
    "selector": "instruct_rm",
    "training": {
        "rank": 4,
        "batch_size": 2,
        "epochs": 5,
        "max_steps": 3,
        "max_length": 192,
        "save_every_steps": 2,
    },
    "generation": {"max_new_tokens": 12, "temperature": 1.0, "refine": {"max_new_tokens": 16}},
    "generation_batch": 3,
    "stage_retries": 0,
}

POSTS = [
    "My landlord has not fixed the heating for a month and winter is coming.",
    "I want to learn to play the piano but I only have ten minutes a day.",
    "Our team keeps missing deadlines because meetings run too long.",
    "The cat sees the house every morning and likes the garden.",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    import torch

    from feedback_loop.engine.tiny import build_tiny_model

    torch.set_num_threads(1)
    return build_tiny_model(
        tmp_path_factory.mktemp("loop_tiny_model"), seed=0, pretrain_steps=TINY_PRETRAIN_STEPS
    )


@pytest.fixture
def artifacts(settings, tmp_path):
    settings.REFINERY_ARTIFACTS_DIR = tmp_path / "artifacts"
    return settings.REFINERY_ARTIFACTS_DIR


def make_feedback(project, rater, n, *, prefix="post", split="train", status="pending", fix=None):
    """n prompts (a post and an instruction), a model output each, a single task, and a rater's
    judgment with written feedback (and a fix if given)."""
    from annotation.models import Output, Prompt, Task, TaskOutput

    judgments = []
    for i in range(n):
        prompt = Prompt.objects.create(
            project=project,
            external_id=f"{prefix}-{i}",
            text="Summarise this post.",
            context=POSTS[i % len(POSTS)],
            split=split,
        )
        output = Output.objects.create(
            prompt=prompt, text=f"The post {i} is about a thing.", model_name="seed"
        )
        task = Task.objects.create(project=project, prompt=prompt, kind=Task.Kind.SINGLE)
        TaskOutput.objects.create(task=task, output=output, position=0)
        answers = {"feedback": ("feedback", "The summary should mention the main problem.")}
        if fix is not None:
            answers["fix"] = ("fix", fix)
        judgments.append(write_judgment(task, rater, answers, status=status))
    return judgments


@pytest.fixture
def loop_config(project, tiny_model_dir, artifacts):
    from feedback_loop.selectors import loop_config_of

    config = loop_config_of(project)
    for name, value in FAST_LOOP.items():
        setattr(config, name, value)
    config.base_model = str(tiny_model_dir)
    config.save()
    return config
