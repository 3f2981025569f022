"""Inverse-scaling evaluation (McKenzie et al., "Inverse Scaling: When Bigger Isn't Better").

Reads the Inverse Scaling Prize task files as published (CSV, or JSON lines with the same fields):

- `classification`: `prompt`, `classes` (a Python-literal list such as `[" Yes", " No"]`; in CSV it is
  a string, read with `ast.literal_eval`), `answer_index`. Loss per item =
  −log_softmax(Σ log p(class tokens | prompt))[answer]; accuracy = argmax is the answer.
- `sequence_prob`: `prompt`, `completion`. Loss per item = −Σ log p(completion tokens | prompt).
- `logodds`: `prompt`, `other_prompt`, `classes` (two), `answer_index`. The log-odds of class 0 over
  class 1 (normalised over the two) under each prompt; the item's value is
  logodds(prompt) − logodds(other_prompt), its sign flipped when the answer is class 1, so that a
  positive value means `prompt` pushes towards the answer more than `other_prompt` does. As in the
  prize's evaluation code, accuracy is read from `other_prompt`. (That code, `eval_pipeline/models.py`
  of the prize's pipeline, reads each class's last token from the next-token distribution, so it
  assumes one-token classes, as the published logodds tasks have; here a class's tokens are summed,
  which is the same for one-token classes and still defined for longer ones.)

Field names and losses are those of the prize's pipeline (`eval_pipeline/dataset.py`: `prompt`,
`classes` read with `ast.literal_eval`, `answer_index`, `completion`, `other_prompt`; classification
loss = −log_softmax over the classes' summed token log-probabilities at the answer).

A sweep runs one task over several models (sizes of one family, or a base and its adapters) and
plots loss against parameter count on a log axis, the paper's figure; a loss that rises with size
(a positive slope of loss against log10 parameters, i.e. performance falling) is flagged as
inverse scaling.
"""

from __future__ import annotations

import ast
import csv
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from feedback_loop.engine.evaluate import MultipleChoiceItem, multiple_choice, win_rate
from feedback_loop.engine.types import ModelBackend

TaskKind = Literal["classification", "sequence_prob", "logodds"]


@dataclass(frozen=True)
class InverseScalingItem:
    prompt: str
    classes: tuple[str, ...] = ()  # classification and logodds
    answer_index: int = 0  # classification and logodds
    completion: str = ""  # sequence_prob
    other_prompt: str = ""  # logodds


@dataclass(frozen=True)
class InverseScalingTask:
    name: str
    kind: TaskKind
    items: tuple[InverseScalingItem, ...]


def _classes(value: object, where: str) -> tuple[str, ...]:
    # Published CSVs hold the list as its Python repr: iterating the string would give one class per
    # character, so parse it as a literal.
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError) as error:
            raise ValueError(f"{where}: classes {value!r} is not a Python list literal") from error
    if not isinstance(value, list | tuple) or not all(isinstance(c, str) for c in value) or len(value) < 2:
        raise ValueError(f"{where}: classes must be a list of two or more strings")
    return tuple(value)


def _rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        return list(csv.DictReader(text.splitlines(keepends=True)))
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not JSON ({error})") from error
    return rows


def task_kind(columns: Sequence[str]) -> TaskKind:
    """Which published format a file's columns are."""
    columns = set(columns)
    if {"prompt", "other_prompt", "classes", "answer_index"} <= columns:
        return "logodds"
    if {"prompt", "classes", "answer_index"} <= columns:
        return "classification"
    if {"prompt", "completion"} <= columns:
        return "sequence_prob"
    raise ValueError(f"columns {sorted(columns)} are none of classification, sequence_prob, logodds")


def load_task(path: str | Path, *, kind: TaskKind | None = None) -> InverseScalingTask:
    """A task file (.csv, or JSON lines) in one of the three formats, detected from its columns."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise ValueError(f"{path}: no items")
    kind = kind or task_kind(list(rows[0]))
    items = []
    for number, row in enumerate(rows, start=1):
        where = f"{path}:{number}"
        try:
            if kind == "sequence_prob":
                items.append(InverseScalingItem(prompt=row["prompt"], completion=row["completion"]))
                continue
            classes = _classes(row["classes"], where)
            answer = int(row["answer_index"])
            if not 0 <= answer < len(classes):
                raise ValueError(f"{where}: answer_index {answer} is not a class position")
            if kind == "logodds" and len(classes) != 2:
                raise ValueError(f"{where}: a logodds item needs exactly two classes")
            items.append(
                InverseScalingItem(
                    prompt=row["prompt"],
                    classes=classes,
                    answer_index=answer,
                    other_prompt=row.get("other_prompt", "") if kind == "logodds" else "",
                )
            )
        except KeyError as error:
            raise ValueError(f"{where}: missing field {error}") from error
    return InverseScalingTask(name=path.stem, kind=kind, items=tuple(items))


@dataclass(frozen=True)
class TaskResult:
    task: str
    kind: TaskKind
    n: int
    loss: float  # mean per-item loss (logodds: mean log-odds difference)
    accuracy: float | None  # classification and logodds
    accuracy_low: float | None  # percentile bootstrap interval of the accuracy (95%)
    accuracy_high: float | None
    per_item: tuple[float, ...] = field(default=(), repr=False)  # per-item loss, in order

    def to_dict(self) -> dict:
        return asdict(self)


def _accuracy(correct: Sequence[bool], seed: int) -> tuple[float, float, float]:
    # A bootstrap of the mean of 0/1 outcomes: win_rate's percentile bootstrap does exactly that.
    result = win_rate([1.0 if c else 0.0 for c in correct], seed=seed)
    return result.rate, result.low, result.high


def evaluate_task(backend: ModelBackend, task: InverseScalingTask, *, seed: int = 0) -> TaskResult:
    """Loss and accuracy of one model on one task, as the prize's evaluation defines them."""
    items = task.items
    if task.kind == "sequence_prob":
        scores = backend.score([i.prompt for i in items], [i.completion for i in items])
        losses = tuple(-s.logprob for s in scores)
        return TaskResult(
            task.name, task.kind, len(items), sum(losses) / len(losses), None, None, None, losses
        )
    if task.kind == "classification":
        result = multiple_choice(
            backend, [MultipleChoiceItem(i.prompt, i.classes, i.answer_index) for i in items]
        )
        losses = tuple(s.loss for s in result.per_item)
        accuracy = _accuracy([s.correct for s in result.per_item], seed)
        return TaskResult(task.name, task.kind, len(items), result.loss, *accuracy, losses)
    # logodds: both prompts' classes in one batch
    scored = multiple_choice(
        backend,
        [MultipleChoiceItem(i.prompt, i.classes, i.answer_index) for i in items]
        + [MultipleChoiceItem(i.other_prompt, i.classes, i.answer_index) for i in items],
    ).per_item
    n = len(items)
    differences = []
    for k, item in enumerate(items):
        here, other = scored[k].log_softmax, scored[n + k].log_softmax
        difference = (here[0] - here[1]) - (other[0] - other[1])
        differences.append(-difference if item.answer_index == 1 else difference)
    accuracy = _accuracy([scored[n + k].correct for k in range(n)], seed)
    return TaskResult(task.name, task.kind, n, sum(differences) / n, *accuracy, tuple(differences))


# -- sweep over models --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepPoint:
    model: str  # as given: a model folder or name, "BASE::ADAPTER" for an adapter
    parameters: int  # parameter count (the x axis)
    result: TaskResult


@dataclass(frozen=True)
class Sweep:
    task: str
    kind: TaskKind
    points: tuple[SweepPoint, ...]
    loss_slope: float | None  # least-squares slope of loss against log10(parameters); None: < 2 sizes
    inverse_scaling: bool  # performance falls with size (see `performance_slope`)

    def to_dict(self) -> dict:
        return {
            "task": self.task,
            "kind": self.kind,
            "loss_slope": self.loss_slope,
            "inverse_scaling": self.inverse_scaling,
            "points": [
                {"model": p.model, "parameters": p.parameters, **p.result.to_dict()} for p in self.points
            ],
        }


def loss_slope(parameters: Sequence[int], losses: Sequence[float]) -> float | None:
    """Least-squares slope of loss against log10(parameter count); None with fewer than two sizes."""
    xs = [math.log10(p) for p in parameters]
    if len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / len(xs), sum(losses) / len(losses)
    return sum((x - mx) * (y - my) for x, y in zip(xs, losses, strict=True)) / sum((x - mx) ** 2 for x in xs)


def sweep(
    task: InverseScalingTask, models: Iterable[tuple[str, int, ModelBackend]], *, seed: int = 0
) -> Sweep:
    """Evaluate `task` on each (name, parameter count, backend), one after the other (a generator that
    loads each model in turn keeps one in memory at a time). Inverse scaling: performance falls
    with size, i.e. the loss rises (classification, sequence_prob) or the log-odds difference, where
    higher means the prompt pulls towards the answer, falls (logodds)."""
    points = tuple(SweepPoint(name, count, evaluate_task(b, task, seed=seed)) for name, count, b in models)
    slope = loss_slope([p.parameters for p in points], [p.result.loss for p in points])
    performance_slope = None if slope is None else (slope if task.kind == "logodds" else -slope)
    return Sweep(task.name, task.kind, points, slope, performance_slope is not None and performance_slope < 0)


def plot_sweep(result: Sweep, path: str | Path) -> Path:
    """Loss (and accuracy, where the task has it) against parameter count on a log axis, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = sorted(result.points, key=lambda p: p.parameters)
    xs = [p.parameters for p in points]
    has_accuracy = points and points[0].result.accuracy is not None
    figure, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 5, 4))
    axes = list(axes) if has_accuracy else [axes]
    label = "log-odds difference" if result.kind == "logodds" else "loss"
    axes[0].plot(xs, [p.result.loss for p in points], marker="o")
    axes[0].set_ylabel(label)
    if has_accuracy:
        accuracy = [p.result.accuracy for p in points]
        low = [a - p.result.accuracy_low for a, p in zip(accuracy, points, strict=True)]
        high = [p.result.accuracy_high - a for a, p in zip(accuracy, points, strict=True)]
        axes[1].errorbar(xs, accuracy, yerr=[low, high], marker="o", capsize=3)
        axes[1].set_ylabel("accuracy (95% bootstrap)")
        axes[1].set_ylim(-0.02, 1.02)
    for axis in axes:
        axis.set_xscale("log")
        axis.set_xlabel("parameters")
    flag = "INVERSE SCALING" if result.inverse_scaling else "no inverse scaling"
    figure.suptitle(f"{result.task} ({result.kind}): {flag}")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def parameter_count(backend: ModelBackend) -> int | None:
    """Parameters of a local model (adapter included); None when the backend does not hold weights."""
    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "parameters"):
        return None
    return sum(p.numel() for p in model.parameters())
