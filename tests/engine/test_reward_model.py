"""The Yes/No reward model: trained on comparisons, it prefers what raters preferred."""

import random

import pytest
from transformers import AutoTokenizer

from feedback_loop.engine.reward_model import (
    NO,
    YES,
    Comparison,
    reward_model_examples,
    reward_model_input,
    score_with_reward_model,
    train_reward_model,
)
from feedback_loop.engine.train import IGNORE_INDEX, LoRATrainingConfig, tokenize_examples

SUBJECTS = ["the cat", "the dog", "a bird", "my friend", "the teacher", "a child", "the farmer", "our team"]
OBJECTS = ["the house", "a red ball", "the small book", "the garden", "the door", "a short story"]
NOISE = [
    "apple",
    "water",
    "window",
    "mountain",
    "village",
    "market",
    "kitchen",
    "morning",
    "evening",
    "winter",
]


def comparison(rng, subj):
    obj = rng.choice(OBJECTS)
    prompt = f"Question: What does {subj} see?\nAnswer:"
    # Raters prefer an answer that is a sentence about the question over a jumble of words.
    return Comparison(
        prompt=prompt,
        chosen=f" {subj.capitalize()} sees {obj}.",
        rejected=" " + " ".join(rng.sample(NOISE, 4)) + ".",
    )


def test_reward_examples_put_the_loss_on_the_answer_token_alone(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    c = Comparison(prompt="Question: Is it red?\nAnswer:", chosen=" Yes.", rejected=" Blue window.")
    chosen, rejected = reward_model_examples([c])
    assert (chosen.prompt, chosen.completion) == (reward_model_input(c.prompt, c.chosen), YES)
    assert (rejected.prompt, rejected.completion) == (reward_model_input(c.prompt, c.rejected), NO)

    for example, answer in ((chosen, YES), (rejected, NO)):
        [tokenized] = tokenize_examples(tokenizer, [example], max_length=512, append_eos=False)
        trained_on = [label for label in tokenized.labels if label != IGNORE_INDEX]
        assert trained_on == tokenizer(answer, add_special_tokens=False)["input_ids"]


def test_trained_reward_model_scores_the_preferred_pattern_higher(tiny_model_dir, tmp_path):
    rng = random.Random(0)
    comparisons = [comparison(rng, rng.choice(SUBJECTS[:6])) for _ in range(32)]
    config = LoRATrainingConfig(epochs=10, batch_size=8, learning_rate=1e-2, max_length=128)
    result = train_reward_model(tiny_model_dir, comparisons, tmp_path / "rm", config, progress=False)
    assert result.metrics["train_loss"][-1] < result.metrics["train_loss"][0]

    # New subjects: the model has to score the pattern, not remember the texts. The untrained model
    # gives both kinds about 0.54, and one that learned only how often raters say Yes gives both the same.
    held_out = [comparison(rng, subj) for subj in SUBJECTS[6:] for _ in range(3)]
    for c in held_out:
        chosen, rejected = score_with_reward_model(
            tiny_model_dir, result.adapter_dir, c.prompt, [c.chosen, c.rejected]
        )
        assert chosen > 0.5 > rejected, (c, chosen, rejected)


def test_reward_model_refuses_a_tokenizer_that_splits_yes_and_no(tiny_model_dir, tmp_path, monkeypatch):
    from feedback_loop.engine import reward_model

    monkeypatch.setattr(reward_model, "YES", " Yesterday-ish")
    with pytest.raises(ValueError, match="one token each"):
        train_reward_model(tiny_model_dir, [], tmp_path / "rm", progress=False)


def test_best_of_n_keeps_the_sample_the_reward_model_ranks_highest():
    import math

    from feedback_loop.engine.reward_model import best_of_n
    from feedback_loop.engine.types import GenerationConfig

    class Policy:
        name = "policy"

        def generate(self, prompts, config):
            return [[f"{p} a", f"{p} best", f"{p} c"][: config.n] for p in prompts]

    class Judge:
        name = "judge"

        def next_token_logprobs(self, prompts, tokens):
            p_yes = [0.9 if "BEST" in p else 0.2 for p in prompts]
            return [{" Yes": math.log(p), " No": math.log(1 - p)} for p in p_yes]

    config = GenerationConfig(n=3, temperature=0.8)
    [pick] = best_of_n(Policy(), Judge(), ["q"], config, transform=str.upper)
    assert (pick.text, pick.index) == ("Q BEST", 1)
    assert pick.scores == pytest.approx([0.2, 0.9, 0.2])
    with pytest.raises(ValueError, match="temperature"):
        best_of_n(Policy(), Judge(), ["q"], GenerationConfig(n=3, temperature=0.0))
