"""Select one refinement per feedback.

- `select_by_instruct_rm`: an instruction-following model is asked, with an ensemble of prompt
  templates, whether each refinement incorporates the feedback; a refinement's score is
  P(Yes) / (P(Yes) + P(No)) (or True/False, as the template asks) read from the next-token distribution (no sampling), averaged over the
  templates; the argmax wins. Every (item, candidate, template) question goes in one batched call.
- `select_by_unit_tests`: run the task's unit tests against each candidate in the sandbox; the first
  passing candidate wins (code tasks).
- `select_by_reward_model`: best-of-N by a reward model trained on raters' comparisons.
- `select_random` and `select_first`: baselines for ablations.

`select(method, ...)` dispatches by name and returns one `Selection` per item.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from feedback_loop.engine.prompts import (
    INSTRUCT_RM_TEMPLATES,
    NO_TOKEN,
    YES_TOKEN,
    instruct_rm_answers,
    instruct_rm_prompts,
)
from feedback_loop.engine.scoring import yes_probability
from feedback_loop.engine.types import FeedbackItem, ModelBackend, Refinement

METHODS = ("instruct_rm", "unit_tests", "reward_model", "random", "first")

Candidate = str | Refinement
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    index: int | None  # the chosen candidate, None when there is none (no candidates, none passed)
    scores: list[float]  # one per candidate, higher is better (what the method ranked by)
    method: str  # which method chose
    details: list[Any] = field(default_factory=list)  # per candidate, e.g. UnitTestResult for unit_tests
    # unit_tests: the task's tests did not load (a syntax error, an import the sandbox lacks), so no
    # candidate was really tested; index is None for that reason, not because every candidate failed
    tests_error: bool = False


def _text(candidate: Candidate) -> str:
    return candidate.text if isinstance(candidate, Refinement) else candidate


def _argmax(scores: Sequence[float]) -> int | None:
    """Index of the highest score, the earliest on ties; None for no candidates."""
    if not scores:
        return None
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def select_by_instruct_rm(
    backend: ModelBackend,
    items: Sequence[FeedbackItem],
    candidates: Sequence[Sequence[Candidate]],
    *,
    templates: Sequence[str] = INSTRUCT_RM_TEMPLATES,
    yes: str = YES_TOKEN,
    no: str = NO_TOKEN,
) -> list[Selection]:
    """The refinement that the ensemble of yes/no questions most believes incorporates the feedback."""
    if len(items) != len(candidates):
        raise ValueError("select_by_instruct_rm needs one list of candidates per item")
    templates = tuple(templates)
    prompts = [
        question
        for item, cands in zip(items, candidates, strict=True)
        for candidate in cands
        for question in instruct_rm_prompts(item, _text(candidate), templates)
    ]
    answers = [instruct_rm_answers(template, yes, no) for template in templates]
    tokens = list(dict.fromkeys(token for pair in answers for token in pair))  # each once, in order
    logprobs = iter(backend.next_token_logprobs(prompts, tokens) if prompts else [])
    selections = []
    for cands in candidates:
        scores = []
        for _ in cands:
            per_template = [
                yes_probability(lp[positive], lp[negative])
                for (positive, negative), lp in zip(answers, (next(logprobs) for _ in templates), strict=True)
            ]
            scores.append(sum(per_template) / len(per_template))
        selections.append(Selection(index=_argmax(scores), scores=scores, method="instruct_rm"))
    return selections


def select_by_unit_tests(
    candidates: Sequence[Candidate],
    tests: str,
    limits: Any = None,
    *,
    entry_point: str | None = None,
    max_workers: int | None = None,
) -> Selection:
    """Run `tests` against every candidate in the sandbox; keep the first that passes them all.

    A candidate's score is the share of tests it passed (0 when it did not load), so a researcher can
    see near misses; `details` holds each candidate's `UnitTestResult`.
    """
    from feedback_loop.engine.sandbox import SandboxLimits, run_unit_tests_many

    programs = [_text(c) for c in candidates]
    if not programs:
        return Selection(index=None, scores=[], method="unit_tests")
    results = run_unit_tests_many(
        programs, tests, limits=limits or SandboxLimits(), entry_point=entry_point, max_workers=max_workers
    )
    scores = [r.passed / (r.passed + r.failed) if r.passed + r.failed else 0.0 for r in results]
    passing = [i for i, r in enumerate(results) if r.status == "pass"]
    broken = any(r.status == "tests_error" for r in results)
    if broken:
        logger.warning("unit_tests selection: the tests do not load: %s", results[0].output[-300:])
    return Selection(
        index=passing[0] if passing else None,
        scores=scores,
        method="unit_tests",
        details=results,
        tests_error=broken,
    )


def select_by_reward_model(
    backend: ModelBackend, items: Sequence[FeedbackItem], candidates: Sequence[Sequence[Candidate]]
) -> list[Selection]:
    """Best-of-N by a reward model (`backend` runs the base model with the reward adapter)."""
    from feedback_loop.engine.reward_model import reward_scores

    selections = []
    for item, cands in zip(items, candidates, strict=True):
        scores = reward_scores(backend, item.prompt, [_text(c) for c in cands]) if cands else []
        selections.append(Selection(index=_argmax(scores), scores=scores, method="reward_model"))
    return selections


def select_random(candidates: Sequence[Sequence[Candidate]], *, seed: int = 0) -> list[Selection]:
    """A uniformly random candidate per item (seeded): the ablation baseline for any selector."""
    rng = random.Random(seed)
    selections = []
    for cands in candidates:
        index = rng.randrange(len(cands)) if cands else None
        scores = [1.0 if i == index else 0.0 for i in range(len(cands))]
        selections.append(Selection(index=index, scores=scores, method="random"))
    return selections


def select_first(candidates: Sequence[Sequence[Candidate]]) -> list[Selection]:
    """The first candidate per item: what training on unselected samples would do."""
    return [
        Selection(
            index=0 if cands else None,
            scores=[1.0] + [0.0] * (len(cands) - 1) if cands else [],
            method="first",
        )
        for cands in candidates
    ]


def select(
    method: str,
    items: Sequence[FeedbackItem],
    candidates: Sequence[Sequence[Candidate]],
    *,
    backend: ModelBackend | None = None,
    limits: Any = None,
    seed: int = 0,
) -> list[Selection]:
    """One `Selection` per item by `method` (see METHODS).

    instruct_rm needs `backend` (the instruction-following model); reward_model needs `backend`
    running the reward model; unit_tests reads each item's `tests` and `entry_point`.
    """
    if len(items) != len(candidates):
        raise ValueError("select needs one list of candidates per item")
    if method in ("instruct_rm", "reward_model") and backend is None:
        raise ValueError(f"selection by {method} needs a backend")
    if method == "instruct_rm":
        return select_by_instruct_rm(backend, items, candidates)
    if method == "reward_model":
        return select_by_reward_model(backend, items, candidates)
    if method == "unit_tests":
        untested = [i for i, item in enumerate(items) if not item.tests.strip()]
        if untested:
            raise ValueError(f"selection by unit_tests needs tests; items {untested} have none")
        return [
            select_by_unit_tests(cands, item.tests, limits, entry_point=item.entry_point)
            for item, cands in zip(items, candidates, strict=True)
        ]
    if method == "random":
        return select_random(candidates, seed=seed)
    if method == "first":
        return select_first(candidates)
    raise ValueError(f"unknown selection method {method!r}; expected one of {METHODS}")
