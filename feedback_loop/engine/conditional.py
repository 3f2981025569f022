"""Training objectives that learn from scores (Korbak et al., "Pretraining Language Models with Human
Preferences"), next to plain ILF's supervised fine-tuning on refinements.

Each objective turns scored (prompt, completion) pairs (rater Likert scores, or a reward model's)
into training examples for `train.train_lora`:

- **conditional**: each completion is prefixed with a control token, `<|good|>` when its score
  reaches the threshold and `<|bad|>` otherwise; a small random fraction (default 1%) stays untagged, so the
  model still works without a token. The tokens are new to the tokenizer; their embedding (and output)
  rows start at the mean embedding and are trained with the LoRA matrices. The model learns the
  conditional distribution; generation then asks for the good one (`conditional_prompt`) and bans
  both tokens from the output (`conditional_generation_config`).
- **filtering**: train on the good examples only (the threshold as above).
- **rwr** (reward-weighted regression): every example, its loss weighted by exp(score / β), clipped
  at `max_weight` so that one high score cannot dominate.

The threshold is absolute (`threshold=5`: a Likert 5 or more is good) or a percentile of the scores
(`percentile=75`: the top quarter is good).

Where the control token goes. Korbak et al. put a control token before each segment of a document
(a sentence; a line of code), chosen by that segment's score, so that the segment is generated
conditioned on it; their released code (`apo/dataset_wrappers.py`) writes token + segment for each
sentence, and when it samples after a prompt it puts, by default, the prompt first and the token
between the prompt and the continuation (`prompt_before_control: false`, `apo/callbacks.py`).
Refinery's examples are (prompt, completion) pairs whose completion is the scored text: the
completion is the segment, so the token goes between prompt and completion, in the same place at
training time (`tag_examples`) and at generation time (`conditional_prompt`). Two departures, both
deliberate: the token ends the prompt, so it carries no loss (the released code trains on it like any
token, which buys nothing once generation bans both tokens); and exactly round(fraction * n)
examples, drawn with a seed, stay untagged, instead of a coin flip per segment, so that a round is
reproducible.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from feedback_loop.engine.types import GenerationConfig, SFTExample

GOOD = "<|good|>"
BAD = "<|bad|>"
CONTROL_TOKENS = (GOOD, BAD)

Objective = Literal["sft", "conditional", "filtering", "rwr"]


def score_threshold(
    scores: Sequence[float], *, threshold: float | None = None, percentile: float | None = None
) -> float:
    """The score from which an example is good: `threshold` itself, or the `percentile` of `scores`."""
    if (threshold is None) == (percentile is None):
        raise ValueError("give exactly one of threshold (absolute) and percentile")
    if threshold is not None:
        return float(threshold)
    if not scores:
        raise ValueError("a percentile threshold needs scores")
    if not 0 <= percentile <= 100:
        raise ValueError("percentile must be between 0 and 100")
    import numpy as np

    return float(np.percentile(np.asarray(scores, dtype=float), percentile))


def _check(examples: Sequence[SFTExample], scores: Sequence[float]) -> None:
    if len(examples) != len(scores):
        raise ValueError(f"{len(examples)} examples but {len(scores)} scores")


def tag_examples(
    examples: Sequence[SFTExample],
    scores: Sequence[float],
    *,
    threshold: float | None = None,
    percentile: float | None = None,
    untagged_fraction: float = 0.01,
    seed: int = 0,
) -> list[SFTExample]:
    """Prefix each completion with `<|good|>` (score >= the threshold) or `<|bad|>`; leave
    round(untagged_fraction * n) examples, drawn with `seed`, untagged. As in Korbak et al., the token
    precedes the text it describes, so everything the model writes is conditioned on it; it ends the
    prompt (no loss on it: the model is told the token, it never learns to write it)."""
    _check(examples, scores)
    if not 0 <= untagged_fraction <= 1:
        raise ValueError("untagged_fraction must be between 0 and 1")
    cut = score_threshold(scores, threshold=threshold, percentile=percentile)
    untagged = set(random.Random(seed).sample(range(len(examples)), round(untagged_fraction * len(examples))))
    return [
        e
        if i in untagged
        else SFTExample(prompt=e.prompt + (GOOD if s >= cut else BAD), completion=e.completion)
        for i, (e, s) in enumerate(zip(examples, scores, strict=True))
    ]


def filter_examples(
    examples: Sequence[SFTExample],
    scores: Sequence[float],
    *,
    threshold: float | None = None,
    percentile: float | None = None,
) -> list[SFTExample]:
    """The examples whose score reaches the threshold."""
    _check(examples, scores)
    cut = score_threshold(scores, threshold=threshold, percentile=percentile)
    return [e for e, s in zip(examples, scores, strict=True) if s >= cut]


def rwr_weights(scores: Sequence[float], *, beta: float = 1.0, max_weight: float = 10.0) -> list[float]:
    """Reward-weighted regression weights exp(score / beta), clipped at `max_weight`."""
    if beta <= 0:
        raise ValueError("beta must be positive")
    # min() before exp() would be wrong for negative clips; exp of a huge score overflows, so cap the exponent.
    cap = math.log(max_weight)
    return [math.exp(min(s / beta, cap)) for s in scores]


@dataclass(frozen=True)
class PreparedTraining:
    examples: list[SFTExample]  # what train_lora trains on
    weights: list[float] | None  # per-example loss weights (rwr), else None
    added_tokens: tuple[str, ...]  # tokens the tokenizer must learn (conditional), else ()
    counts: dict[str, int]  # how many examples went where, for the round's record


def prepare_training(
    objective: Objective,
    examples: Sequence[SFTExample],
    scores: Sequence[float] | None = None,
    *,
    threshold: float | None = None,
    percentile: float | None = None,
    untagged_fraction: float = 0.01,
    beta: float = 1.0,
    max_weight: float = 10.0,
    seed: int = 0,
) -> PreparedTraining:
    """The training set, weights and new tokens of one objective; pass them on to `train_lora`
    (`LoRATrainingConfig.added_tokens`, `example_weights`)."""
    if objective == "sft":
        return PreparedTraining(list(examples), None, (), {"examples": len(examples)})
    if scores is None:
        raise ValueError(f"the {objective!r} objective needs a score per example")
    _check(examples, scores)
    if objective == "conditional":
        tagged = tag_examples(
            examples,
            scores,
            threshold=threshold,
            percentile=percentile,
            untagged_fraction=untagged_fraction,
            seed=seed,
        )
        counts = {
            "good": sum(e.prompt.endswith(GOOD) for e in tagged),
            "bad": sum(e.prompt.endswith(BAD) for e in tagged),
        }
        counts["untagged"] = len(tagged) - counts["good"] - counts["bad"]
        return PreparedTraining(tagged, None, CONTROL_TOKENS, counts)
    if objective == "filtering":
        kept = filter_examples(examples, scores, threshold=threshold, percentile=percentile)
        return PreparedTraining(kept, None, (), {"kept": len(kept), "dropped": len(examples) - len(kept)})
    if objective == "rwr":
        weights = rwr_weights(scores, beta=beta, max_weight=max_weight)
        clipped = sum(s / beta >= math.log(max_weight) for s in scores)
        return PreparedTraining(list(examples), weights, (), {"examples": len(examples), "clipped": clipped})
    raise ValueError(f"unknown objective {objective!r}; expected sft, conditional, filtering or rwr")


# -- generation from a conditionally trained adapter -------------------------------------------------


def conditional_prompt(prompt: str) -> str:
    """Ask for the good distribution: the output starts after `<|good|>`, as the good examples did."""
    return prompt + GOOD


def conditional_generation_config(config: GenerationConfig) -> GenerationConfig:
    """`config` with both control tokens banned: the model must never write them itself."""
    banned = tuple(dict.fromkeys((*config.bad_words, *CONTROL_TOKENS)))
    return dataclasses.replace(config, bad_words=banned)


def is_conditional_adapter(adapter_dir: str | Path) -> bool:
    """Whether an adapter was trained with the control tokens (its saved tokenizer knows them)."""
    import json

    path = Path(adapter_dir) / "training_config.json"
    if not path.exists():
        return False
    run = json.loads(path.read_text(encoding="utf-8")).get("run", {})
    return set(CONTROL_TOKENS) <= set(run.get("config", {}).get("added_tokens") or ())
