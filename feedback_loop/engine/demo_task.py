"""The demo's task: a templated sentence task the tiny local model gets partly wrong.

Each prompt names a subject and an object ("Write a sentence about the cat and a red ball."); a
good answer is one sentence that mentions both. The tiny model, pretrained on sentences of the
same vocabulary (engine.tiny), writes fluent sentences about the wrong things, and a rater can say
exactly what is missing ("It should mention a red ball."). The check is mechanical, so the
held-out metric (the share of eval-split prompts whose output mentions both) needs no rater; the
eval split's (subject, object) pairs never appear among the train split's, so the metric measures
what the adapter learned, not what it memorised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from feedback_loop.engine.tiny import _ENDINGS, _OBJECTS, _SUBJECTS, _VERBS


@dataclass(frozen=True)
class SentencePrompt:
    external_id: str
    text: str  # what the model is asked
    reference: str  # one good answer
    must_include: tuple[str, ...]  # what a good answer mentions (case-insensitive)
    split: str  # "train" or "eval"


def sentence_prompt_text(subject: str, obj: str) -> str:
    return f"Write a sentence about {subject} and {obj}.\nSentence:"


def sentence_task(*, n_train: int = 96, n_eval: int = 24, seed: int = 0) -> list[SentencePrompt]:
    """`n_train` + `n_eval` prompts over distinct (subject, object) pairs, the same for a given seed."""
    rng = random.Random(seed)
    pairs = [(s, o) for s in _SUBJECTS for o in _OBJECTS]
    if n_train + n_eval > len(pairs):
        raise ValueError(f"the sentence task has {len(pairs)} (subject, object) pairs at most")
    rng.shuffle(pairs)
    prompts = []
    for index, (subject, obj) in enumerate(pairs[: n_train + n_eval]):
        split = "train" if index < n_train else "eval"
        reference = f"{subject.capitalize()} {rng.choice(_VERBS)} {obj} {rng.choice(_ENDINGS)}."
        prompts.append(
            SentencePrompt(
                external_id=f"sentence-{index}",
                text=sentence_prompt_text(subject, obj),
                reference=reference,
                must_include=(subject, obj),
                split=split,
            )
        )
    return prompts
