"""Evaluate a model: held-out loss, pass@k, win rate with a confidence interval, multiple choice.

Step 6 of the ILF loop ("an adapter that regresses is not promoted") reads these numbers. Every
function takes a backend and plain items, or plain counts, and returns plain numbers or dataclasses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from feedback_loop.engine.types import GenerationConfig, ModelBackend, SFTExample


def held_out_loss(backend: ModelBackend, examples: Sequence[SFTExample]) -> float:
    """Mean negative log-likelihood per completion token (nats), over all examples' tokens.

    Token-weighted, like the training loss: long completions weigh more than short ones.
    """
    if not examples:
        raise ValueError("held_out_loss needs at least one example")
    scores = backend.score([e.prompt for e in examples], [e.completion for e in examples])
    n_tokens = sum(s.n_tokens for s in scores)
    if n_tokens == 0:
        raise ValueError("the completions have no tokens to score")
    return -sum(s.logprob for s in scores) / n_tokens


def missing_mentions(text: str, must_include: Sequence[str]) -> list[str]:
    """The required mentions `text` lacks (case-insensitive); empty when it passes the check."""
    lowered = text.lower()
    return [item for item in must_include if item.lower() not in lowered]


def mention_accuracy(
    backend: ModelBackend,
    prompts: Sequence[str],
    must_include: Sequence[Sequence[str]],
    config: GenerationConfig,
) -> float:
    """Share of prompts whose generated output (one sample each) mentions everything it must."""
    if not prompts:
        return float("nan")
    samples = backend.generate(list(prompts), replace(config, n=1))
    passed = [
        bool(texts) and not missing_mentions(texts[0], wanted)
        for texts, wanted in zip(samples, must_include, strict=True)
    ]
    return sum(passed) / len(passed)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al., 2021).

    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement from the n include
    a passing one, computed as a product so that it neither overflows nor loses precision.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0  # every draw of k samples holds a passing one
    # C(n-c, k) / C(n, k) = prod_{i=n-c+1}^{n} (1 - k / i)
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def mean_pass_at_k(passed: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over tasks; `passed[t]` says which of task t's samples passed its tests."""
    if not passed:
        raise ValueError("mean_pass_at_k needs at least one task")
    return sum(pass_at_k(len(samples), sum(map(bool, samples)), k) for samples in passed) / len(passed)


@dataclass(frozen=True)
class WinRate:
    rate: float  # mean outcome: wins count 1, ties 0.5, losses 0
    low: float  # lower end of the percentile bootstrap confidence interval
    high: float  # upper end of the interval
    n: int  # number of comparisons


def win_rate(
    outcomes: Sequence[float], *, n_boot: int = 2000, confidence: float = 0.95, seed: int = 0
) -> WinRate:
    """Win rate from pairwise judgments (1 win, 0.5 tie, 0 loss) with a percentile bootstrap CI.

    The interval resamples the comparisons with replacement `n_boot` times (seeded: the same
    outcomes always give the same interval) and takes the central `confidence` mass of the means.
    """
    import numpy as np

    values = np.asarray(outcomes, dtype=float)
    if values.size == 0:
        raise ValueError("win_rate needs at least one outcome")
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // values.size)  # resample in chunks: n_boot x n indices can be large
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        means[start : start + rows] = values[rng.integers(0, values.size, size=(rows, values.size))].mean(
            axis=1
        )
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return WinRate(rate=float(values.mean()), low=float(low), high=float(high), n=int(values.size))


@dataclass(frozen=True)
class TaskWinRate:
    rate: float  # mean outcome over all judgments: wins 1, ties 0.5, losses 0
    standard_error: float  # cluster-robust: judgments of one task are not independent of each other
    low: float  # lower end of the bootstrap interval, tasks resampled with replacement
    high: float  # upper end
    n: int  # judgments
    n_tasks: int  # tasks (the units the interval resamples)


def win_rate_by_task(
    judgments: Sequence[tuple[object, float]],
    *,
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> TaskWinRate:
    """Win rate of model A over model B from raters' pairwise judgments `(task, outcome)`.

    An outcome is 1 when a rater preferred A's output for that task, 0.5 for a tie, 0 for B. Several
    raters judging one task agree more with each other than with raters of other tasks, so the
    judgments are not independent draws: the standard error is the cluster-robust one over tasks and
    the percentile bootstrap resamples whole tasks (with all their judgments), not single judgments.
    """
    import numpy as np

    if not judgments:
        raise ValueError("win_rate_by_task needs at least one judgment")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    totals: dict[object, list[float]] = {}
    for task, outcome in judgments:
        if isinstance(outcome, bool) or outcome not in (0, 0.5, 1):
            raise ValueError("outcomes must be 1 (A wins), 0.5 (tie) or 0 (B wins)")
        totals.setdefault(task, []).append(float(outcome))
    sums = np.array([sum(v) for v in totals.values()])
    counts = np.array([len(v) for v in totals.values()], dtype=float)
    n, n_tasks = int(counts.sum()), len(totals)
    rate = float(sums.sum() / n)
    if n_tasks > 1:
        residuals = sums - rate * counts
        standard_error = float(math.sqrt(n_tasks / (n_tasks - 1) * (residuals**2).sum()) / n)
    else:
        standard_error = float("nan")  # one task: nothing to say how another task would go
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_tasks, size=(n_boot, n_tasks))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return TaskWinRate(rate, standard_error, float(low), float(high), n, n_tasks)


@dataclass(frozen=True)
class MultipleChoiceItem:
    prompt: str  # the question, up to where the answer starts
    classes: tuple[str, ...]  # the possible answers, each scored as a continuation of the prompt
    answer_index: int  # position of the right answer in `classes`

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        if len(self.classes) < 2:
            raise ValueError("a multiple-choice item needs at least two classes")
        if not 0 <= self.answer_index < len(self.classes):
            raise ValueError(f"answer_index {self.answer_index} is not a class position")


@dataclass(frozen=True)
class MultipleChoiceScore:
    logprobs: tuple[float, ...]  # sum of log p(class tokens | prompt), one per class
    log_softmax: tuple[float, ...]  # the same, normalised over the classes
    predicted: int  # argmax class (the first one on a tie)
    loss: float  # -log_softmax[answer_index]
    correct: bool  # predicted == answer_index


@dataclass(frozen=True)
class MultipleChoiceResult:
    accuracy: float  # fraction of items whose argmax class is the answer
    loss: float  # mean classification loss, -log_softmax(sum log p(class | prompt))[answer]
    per_item: tuple[MultipleChoiceScore, ...]  # one per item, in order


def multiple_choice(backend: ModelBackend, items: Sequence[MultipleChoiceItem]) -> MultipleChoiceResult:
    """Score every class of every item in one batched `backend.score` call; accuracy and loss."""
    if not items:
        raise ValueError("multiple_choice needs at least one item")
    prompts = [item.prompt for item in items for _ in item.classes]
    continuations = [cls for item in items for cls in item.classes]
    scores = iter(backend.score(prompts, continuations))
    per_item = []
    for item in items:
        logprobs = tuple(next(scores).logprob for _ in item.classes)
        normalised = _log_softmax(logprobs)
        predicted = max(range(len(logprobs)), key=lambda i: (logprobs[i], -i))
        per_item.append(
            MultipleChoiceScore(
                logprobs=logprobs,
                log_softmax=normalised,
                predicted=predicted,
                loss=-normalised[item.answer_index],
                correct=predicted == item.answer_index,
            )
        )
    return MultipleChoiceResult(
        accuracy=sum(s.correct for s in per_item) / len(per_item),
        loss=sum(s.loss for s in per_item) / len(per_item),
        per_item=tuple(per_item),
    )


def _log_softmax(values: Sequence[float]) -> tuple[float, ...]:
    top = max(values)
    if top == -math.inf:
        return tuple(-math.log(len(values)) for _ in values)  # nothing to choose between: uniform
    log_total = top + math.log(sum(math.exp(v - top) for v in values))
    return tuple(v - log_total for v in values)
