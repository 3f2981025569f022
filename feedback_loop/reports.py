"""What the curator pages show about rounds: each step's progress, the metrics across rounds as
small inline SVG charts, the adapter lineage. Reads only; the pages' access rules are in views.

The charts are drawn here as plain coordinates and rendered by a template, not by matplotlib: an
inline SVG needs no image request and no inline style, and the template escapes every label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from django.db.models import Count

from annotation.models import Judgment, Project, Task
from feedback_loop import selectors
from feedback_loop.models import Adapter, Refinement, Round

# ---------------------------------------------------------------- one round's steps


@dataclass
class Stage:
    state: str
    label: str
    status: str  # "done", "running", "failed", "stopped" (cancelled there), "todo"
    done: float | None = None  # the bar's position, None: no bar (nothing countable yet)
    total: float | None = None
    detail: str = ""


STAGE_LABELS = {
    Round.State.PENDING: "Take up feedback",
    Round.State.REFINING: "Refine",
    Round.State.SELECTING: "Select",
    Round.State.TRAINING: "Train",
    Round.State.EVALUATING: "Evaluate",
    Round.State.GENERATING: "Generate new tasks",
}
WORK_STEPS = tuple(STAGE_LABELS)


def current_step(round: Round) -> str | None:
    """The step the round is at (or stopped at, when it failed or was cancelled)."""
    if round.state in WORK_STEPS:
        return round.state
    if round.state == Round.State.FAILED:
        return round.failed_state or round.progress.get("stage") or None
    if round.state == Round.State.CANCELLED:
        return round.progress.get("stage") or None
    return None


def round_stages(round: Round) -> list[Stage]:
    """A progress line per step: what it did, or how far it got.

    static/round.js redraws the lines from the loop's API with the same rules (stages() there):
    change both together. The rounds browser test checks that they agree.
    """
    at = current_step(round)
    reached = WORK_STEPS.index(at) if at in WORK_STEPS else (len(WORK_STEPS) if round.state == "done" else -1)
    progress = round.progress if isinstance(round.progress, dict) else {}
    live = progress if progress.get("stage") == at else {}
    stages = []
    for index, state in enumerate(WORK_STEPS):
        if index < reached:
            status = "done"
        elif index == reached:
            status = {"failed": "failed", "cancelled": "stopped"}.get(round.state, "running")
        else:
            status = "todo"
        stage = Stage(state=state, label=STAGE_LABELS[state], status=status)
        _describe(stage, round, live if index == reached else {})
        stages.append(stage)
    return stages


def _number(value) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _describe(stage: Stage, round: Round, live: dict) -> None:
    """Fill in the bar and the words of one step from the round's counts and its live progress."""
    finished = stage.status == "done"
    done, total = _number(live.get("done")), _number(live.get("total"))
    if stage.state == Round.State.PENDING:
        if finished:
            stage.done = stage.total = 1
            stage.detail = f"{round.feedback_count} feedback judgment{'s' * (round.feedback_count != 1)}"
        elif stage.status == "running":
            stage.detail = "gathering new feedback"
    elif stage.state == Round.State.REFINING:
        if finished:
            stage.done = stage.total = 1
            stage.detail = f"{round.refinement_count} refinements of {round.feedback_count} feedback"
        elif total:
            stage.done, stage.total = done or 0, total
            stage.detail = f"{int(done or 0)} of {int(total)} feedback items refined"
    elif stage.state == Round.State.SELECTING:
        if finished:
            stage.done, stage.total = round.selected_count, max(round.feedback_count, round.selected_count, 1)
            stage.detail = f"{round.selected_count} selected for {round.feedback_count} feedback"
        elif total:
            stage.done, stage.total = done or 0, total
            stage.detail = f"choosing among the refinements of {int(total)} feedback items"
    elif stage.state == Round.State.TRAINING:
        step, steps, loss = (
            _number(live.get("step")),
            _number(live.get("total_steps")),
            _number(live.get("loss")),
        )
        if finished:
            stage.done = stage.total = 1
            stage.detail = f"{round.train_example_count} training examples"
        elif steps:
            stage.done, stage.total = step or 0, steps
            stage.detail = f"step {int(step or 0)} of {int(steps)}"
            if loss is not None:
                stage.detail += f" · loss {loss:.4f}"
        elif live:
            stage.detail = "loading the model"
    elif stage.state == Round.State.EVALUATING:
        if finished:
            stage.done = stage.total = 1
            stage.detail = {True: "promoted", False: "not promoted"}.get(round.promoted, "evaluated")
        elif total:
            stage.done, stage.total = done or 0, total
            stage.detail = f"{int(total)} held-out examples"
    elif stage.state == Round.State.GENERATING:
        if finished:
            stage.done = stage.total = 1
            stage.detail = f"{round.new_task_count} new task{'s' * (round.new_task_count != 1)}"
        elif total:
            stage.done, stage.total = done or 0, total
            role = live.get("role")
            stage.detail = f"writing {int(total)} outputs" + (
                f" ({role} model)" if isinstance(role, str) else ""
            )
    if (
        finished
        and round.state == Round.State.DONE
        and round.promoted is False
        and stage.state == Round.State.GENERATING
    ):
        stage.status, stage.done, stage.total = "skipped", None, None
        stage.detail = "skipped: the adapter was not promoted"


# ---------------------------------------------------------------- one round's contents


@dataclass
class SelectedRefinement:
    refinement: Refinement
    output: str
    feedback: str
    candidates: int


def selected_refinements(round: Round, *, limit: int = 10) -> tuple[list[SelectedRefinement], int]:
    """A sample of the refinements the round selected, each beside the output and feedback it improves
    on; and how many were selected in all."""
    chosen = Refinement.objects.filter(round=round, selected=True).order_by("judgment_id", "id")
    total = chosen.count()
    sample = list(chosen[:limit])
    rows = {row.judgment_id: row for row in selectors.feedback_rows([r.judgment_id for r in sample])}
    candidates = dict(
        Refinement.objects.filter(round=round, judgment_id__in=list(rows))
        .values("judgment_id")
        .annotate(n=Count("id"))
        .values_list("judgment_id", "n")
    )
    return [
        SelectedRefinement(
            refinement=r,
            output=rows[r.judgment_id].output if r.judgment_id in rows else "",
            feedback=rows[r.judgment_id].feedback if r.judgment_id in rows else "",
            candidates=candidates.get(r.judgment_id, 1),
        )
        for r in sample
    ], total


def round_adapter(round: Round) -> Adapter | None:
    return Adapter.objects.filter(round=round).select_related("parent__round").first()


def trained_on_count(adapter: Adapter) -> int:
    return Judgment.objects.filter(trained_adapters=adapter).count()


def new_tasks(round: Round, *, limit: int = 20):
    tasks = Task.objects.filter(project_id=round.project_id, round_number=round.number).select_related(
        "prompt"
    )
    return tasks.order_by("id")[:limit], tasks.count()


def final_train_loss(adapter: Adapter) -> float | None:
    losses = (
        adapter.training_metrics.get("train_loss") if isinstance(adapter.training_metrics, dict) else None
    )
    if isinstance(losses, list) and losses:
        return _number(losses[-1])
    return _number(losses)


def metric_items(metrics: dict) -> list[tuple[str, str]]:
    """A metrics dict as (name, value) lines: numbers rounded, lists summarised, nesting flattened."""
    items = []
    for name, value in _flatten(metrics if isinstance(metrics, dict) else {}):
        if isinstance(value, float):
            shown = f"{value:.4g}"
        elif isinstance(value, list):
            numbers = [v for v in value if _number(v) is not None]
            shown = f"{len(value)} values" + (f", last {numbers[-1]:.4g}" if numbers else "")
        else:
            shown = str(value)
        items.append((name, shown))
    return items


def win_rate_summary(evaluation: dict) -> dict | None:
    """The raters' win rate of an adapter over the model it replaced, for the round page; None
    while no rater has compared their outputs."""
    evaluation = evaluation if isinstance(evaluation, dict) else {}
    if _number(evaluation.get("win_rate")) is None:
        return None
    details = {
        key.removeprefix("win_rate_"): value
        for key, value in evaluation.items()
        if key.startswith("win_rate_")
    }
    return {**details, "rate": evaluation["win_rate"]}


PROBE_EXAMPLES = 3  # examples shown per probe on the round page
EXAMPLE_TEXT = 600  # characters of each shown value (chains of thought run long)


def probe_examples(
    details: dict, *, limit: int = PROBE_EXAMPLES
) -> list[tuple[str, list[list[tuple[str, str]]]]]:
    """A few examples per probe from the adapter's probe details, as (probe, [[(field, text)]]):
    for biased chain of thought the answers that flipped to the cue come first."""
    found = []
    for family, detail in (details if isinstance(details, dict) else {}).items():
        parts = [(family, detail)]
        if isinstance(detail, dict) and "examples" not in detail:  # one result per cue or task
            parts = [(f"{family}/{name}", part) for name, part in detail.items()]
        for name, part in parts:
            examples = part.get("examples") if isinstance(part, dict) else None
            if not isinstance(examples, list | tuple) or not examples:
                continue
            examples = sorted(
                (e for e in examples if isinstance(e, dict)), key=lambda e: not e.get("flipped_to_cue")
            )
            rows = [
                [(field, str(value)[:EXAMPLE_TEXT]) for field, value in example.items()]
                for example in examples[:limit]
            ]
            found.append((name, rows))
    return found


def _flatten(metrics: dict, prefix: str = ""):
    for name, value in metrics.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            yield from _flatten(value, key + ".")
        else:
            yield key, value


# ---------------------------------------------------------------- across rounds


@dataclass
class Series:
    name: str
    points: list[tuple[int, float]]  # (round number, value)


@dataclass
class Chart:
    title: str
    series: list[Series]
    width: int = 320
    height: int = 220
    # Filled by layout(): what the template draws.
    lines: list[dict] = field(default_factory=list)
    x_ticks: list[dict] = field(default_factory=list)
    y_ticks: list[dict] = field(default_factory=list)
    box: dict = field(default_factory=dict)


# The top-level evaluation numbers that are a task metric rather than a loss or a count; each may
# come with a "baseline_" twin measured on the model the adapter replaced.
TASK_METRICS = ("win_rate", "pass@1", "pass@k", "accuracy")
COLOURS = ("#2f5fd0", "#d0602f", "#2f9d5f", "#9d2f8c", "#8c7a2f", "#2f8c9d")
MARGIN = {"left": 46, "right": 10, "top": 26, "bottom": 30}


def metric_charts(adapters: list[Adapter]) -> list[Chart]:
    """Charts of the evaluation metrics across rounds: held-out loss (and the model it was compared
    with), task metrics (win rate, pass@k), and the regression probes, when the rounds have them."""
    loss, task, probes = {}, {}, {}
    for adapter in adapters:
        number = adapter.round.number
        evaluation = adapter.evaluation if isinstance(adapter.evaluation, dict) else {}
        for key, name in (
            ("held_out_loss", "held-out: new adapter"),
            ("baseline_held_out_loss", "held-out: model it replaced"),
        ):
            if _number(evaluation.get(key)) is not None:
                loss.setdefault(name, []).append((number, float(evaluation[key])))
        train = final_train_loss(adapter)
        if train is not None:
            loss.setdefault("training (last step)", []).append((number, train))
        for key, value in evaluation.items():
            metric = key.removeprefix("baseline_")
            if metric in TASK_METRICS and _number(value) is not None:
                name = metric.replace("_", " ") + (
                    ": model it replaced" if key != metric else ": new adapter"
                )
                task.setdefault(name, []).append((number, float(value)))
        for key, value in _flatten(
            evaluation["probes"] if isinstance(evaluation.get("probes"), dict) else {}
        ):
            if _number(value) is not None:
                probes.setdefault(key, []).append((number, float(value)))
    charts = []
    for title, found in (("Loss", loss), ("Task metric", task), ("Regression probes", probes)):
        if found:
            chart = Chart(title=title, series=[Series(name, points) for name, points in found.items()])
            layout(chart)
            charts.append(chart)
    return charts


def _nice_ticks(low: float, high: float, count: int = 4) -> list[float]:
    if high - low < 1e-12:
        low, high = low - 0.5 if low else 0.0, high + 0.5 if high else 1.0
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 10))
    return ticks


def layout(chart: Chart) -> Chart:
    """Place the series in the chart's pixel box: rounds along x, values up y."""
    xs = sorted({x for s in chart.series for x, _ in s.points})
    values = [y for s in chart.series for _, y in s.points]
    y_ticks = _nice_ticks(min(values), max(values))
    y_low, y_high = y_ticks[0], y_ticks[-1]
    left, right = MARGIN["left"], chart.width - MARGIN["right"]
    top, bottom = MARGIN["top"], chart.height - MARGIN["bottom"]

    def x_of(x: int) -> float:
        if len(xs) == 1:
            return (left + right) / 2
        return left + (right - left) * (x - xs[0]) / (xs[-1] - xs[0])

    def y_of(y: float) -> float:
        return bottom - (bottom - top) * (y - y_low) / (y_high - y_low)

    step = max(1, math.ceil(len(xs) / 8))  # at most ~8 round labels
    chart.x_ticks = [{"x": round(x_of(x), 1), "label": str(x)} for x in xs[::step]]
    chart.y_ticks = [{"y": round(y_of(y), 1), "label": f"{y:.4g}"} for y in y_ticks]
    chart.lines = []
    for index, series in enumerate(chart.series):
        points = [(round(x_of(x), 1), round(y_of(y), 1), x, y) for x, y in sorted(series.points)]
        chart.lines.append(
            {
                "name": series.name,
                "colour": COLOURS[index % len(COLOURS)],
                "path": " ".join(f"{px},{py}" for px, py, _, _ in points),
                "points": [{"x": px, "y": py, "title": f"round {x}: {y:.4g}"} for px, py, x, y in points],
            }
        )
    chart.box = {"left": left, "right": right, "top": top, "bottom": bottom}
    return chart


@dataclass
class LineageNode:
    adapter: Adapter
    children: list[LineageNode] = field(default_factory=list)


def adapter_lineage(project: Project) -> list[LineageNode]:
    """The project's adapters as a forest: each adapter under the one it replaced (its parent)."""
    adapters = list(Adapter.objects.filter(project=project).select_related("round").order_by("round__number"))
    nodes = {adapter.pk: LineageNode(adapter) for adapter in adapters}
    roots = []
    for adapter in adapters:
        parent = nodes.get(adapter.parent_id)
        (parent.children if parent else roots).append(nodes[adapter.pk])
    return roots
