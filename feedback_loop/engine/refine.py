"""Refine: a refiner model writes N improved outputs per (input, output, feedback).

`refine(backend, items, n=5)` builds one refinement prompt per item (text or code, see `prompts`),
samples N completions per prompt in one batched call, and drops the samples no one should rate or
train on: empty ones, degenerate ones (the same few words over and over), copies of the output the
feedback was about, and duplicates of an earlier sample. What is left may be fewer than N.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from feedback_loop.engine.prompts import refinement_prompt
from feedback_loop.engine.types import FeedbackItem, GenerationConfig, ModelBackend, Refinement

__all__ = ["FeedbackItem", "RefineConfig", "Refinement", "filter_refinements", "refine"]


@dataclass(frozen=True)
class RefineConfig:
    max_new_tokens: int = 128  # longest refinement, in tokens
    code_max_new_tokens: int | None = 512  # longest code refinement (a whole program); None: max_new_tokens
    temperature: float = 0.8  # sampling temperature: N distinct candidates need some randomness
    top_p: float = 0.95  # nucleus sampling mass
    seed: int | None = 0  # seed for the sampler (None: not reproducible)
    text_stop: tuple[str, ...] = ("\n\n",)  # a text refinement ends at the first blank line
    code_stop: tuple[str, ...] = ("\nOLD CODE", "\nFEEDBACK", "\nREFINEMENT", "\n\n\n")  # the code block ends
    ngram: int = 3  # word n-gram length for the repetition check
    max_repeated_ngram_fraction: float = (
        0.5  # degenerate if more than this share of n-grams repeat an earlier one
    )


def _normalise(text: str) -> str:
    return " ".join(text.split())


def repeated_ngram_fraction(text: str, n: int = 3) -> float:
    """Share of the word n-grams of `text` that already occurred earlier in it (0 for short texts)."""
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(grams) < 4:  # too short to call repetitive
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def clean_refinement(text: str, kind: str, entry_point: str | None = None) -> str:
    """Text refinements lose surrounding whitespace; code keeps its indentation, loses blank edges."""
    if kind == "code":
        if re.search(r"^def\s", text, flags=re.M):
            from feedback_loop.engine.code import extract_program

            # A whole program: cut after its function, as evaluation cuts the model's programs.
            text = extract_program("", text.strip("\n"), entry_point=entry_point)
        return text.strip("\n").rstrip()
    return text.strip()


def drop_reason(
    text: str, item: FeedbackItem, seen: set[str], config: RefineConfig = RefineConfig()
) -> str | None:
    """Why a cleaned refinement should be dropped ("empty", "copy", "duplicate", "repetitive"), or None."""
    normalised = _normalise(text)
    if not normalised:
        return "empty"
    if normalised == _normalise(item.output):
        return "copy"
    if normalised in seen:
        return "duplicate"
    if repeated_ngram_fraction(text, config.ngram) > config.max_repeated_ngram_fraction:
        return "repetitive"
    return None


def filter_refinements(
    texts: Sequence[str], item: FeedbackItem, config: RefineConfig = RefineConfig()
) -> list[Refinement]:
    """The samples worth keeping, in sampling order, each remembering its sample index."""
    kept: list[Refinement] = []
    seen: set[str] = set()
    for index, raw in enumerate(texts):
        text = clean_refinement(raw, item.kind, item.entry_point)
        if drop_reason(text, item, seen, config) is None:
            kept.append(Refinement(text=text, source="model", sample_index=index))
            seen.add(_normalise(text))
    return kept


def refine(
    backend: ModelBackend,
    items: Sequence[FeedbackItem],
    n: int = 5,
    config: RefineConfig | None = None,
) -> list[list[Refinement]]:
    """Up to `n` distinct refinements per feedback item, in the items' order."""
    config = config or RefineConfig()
    unknown = sorted({item.kind for item in items} - {"text", "code"})
    if unknown:
        raise ValueError(f"unknown feedback kind(s) {unknown}; expected 'text' or 'code'")
    results: list[list[Refinement]] = [[] for _ in items]
    # Text and code items stop at different strings, so each kind is one batched call.
    for kind, stop in (("text", config.text_stop), ("code", config.code_stop)):
        indices = [i for i, item in enumerate(items) if item.kind == kind]
        if not indices:
            continue
        max_new_tokens = config.max_new_tokens
        if kind == "code" and config.code_max_new_tokens is not None:
            max_new_tokens = config.code_max_new_tokens
        generation = GenerationConfig(
            max_new_tokens=max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            n=n,
            seed=config.seed,
            stop=stop,
        )
        samples = backend.generate([refinement_prompt(items[i]) for i in indices], generation)
        for i, texts in zip(indices, samples, strict=True):
            results[i] = filter_refinements(texts, items[i], config)
    return results
