"""How much raters agree, and how good each rater is: the numbers behind the curator dashboard.

Everything here reads; the statistics come from maintained libraries, never hand-written formulas:
Krippendorff's alpha from `krippendorff`, Fleiss' kappa from statsmodels, Cohen's kappa from
scikit-learn. This module only lays the judgments out the way they expect.

What is measured, per *variable*: each criterion of a likert question (scores on its scale) and
each pairwise question (the preferred output's position in the task, 0 or 1, or TIE). Positions
are the task's own (TaskOutput.position), never the side a rater saw: sides are shuffled per lease.

- Reliability data is a raters × units matrix (units are tasks; NaN where a rater did not judge
  the task), rows in rater id order, columns in task id order. Gold tasks are left out (they are
  judged by many raters outside the overlap, and are scored against their known answers instead).
- Krippendorff's alpha: ordinal and interval for likert criteria, nominal for preferences. Units
  judged by a single rater carry no information about agreement and drop out.
- Fleiss' kappa treats values as categories. It needs the same number of ratings per unit, so it
  takes the units judged by the most common number (≥ 2) of raters; `fleiss_units` says how many.
- Cohen's kappa between two raters on the tasks both judged (at least MIN_SHARED), linearly
  weighted on the likert scale, unweighted for preferences. The project figure is the mean over
  rater pairs.

Per rater (see `rater_stats`):
- judgments: all their judgments in the project, any review status.
- median seconds per task: median of the submitted judgments' time_spent_ms.
- gold accuracy: on gold tasks with `gold_answers` ({question name: expected answer}, shaped like
  an answer), the share of checks passed. A likert question is one check per criterion, passed
  when the score is within GOLD_LIKERT_TOLERANCE (±1) of the expected one; a pairwise question
  passes when the preferred output id is the expected one (null for a tie; strength is not
  checked); a rubric question when the raised flags are exactly the expected ones (no answer =
  no flags); a ranking question when the order is exactly the expected one. Written feedback and
  fixes are not checked. A gold question left unanswered fails.
- agreement with others: over every (task, variable) the rater shares with another rater, the
  share where both gave the same value; and the mean Cohen's kappa over the other raters and
  variables where it is defined.

(QA)² projects (annotation.templates_qa2) also get `qa2_summary`: acceptability by the raters'
majority view of each question's assumption, and agreement on flagging it, a nominal variable.
"""

from __future__ import annotations

import base64
import io
import statistics
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from django.db.models import Count

from annotation.models import Answer, Judgment, Membership, Project, TaskOutput
from annotation.questions import QuestionsConfigError, validate_questions_config
from annotation.templates_qa2 import ACCEPTABLE_QUESTION, ASSUMPTION_FLAG, ASSUMPTION_QUESTION

TIE = -1  # the value of a pairwise answer that prefers neither output
MIN_SHARED = 2  # tasks two raters must share before their Cohen's kappa is worth computing
GOLD_LIKERT_TOLERANCE = 1
TRAINING_STATUSES = (Judgment.Status.PENDING, Judgment.Status.ACCEPTED)


@dataclass(frozen=True)
class Variable:
    """One thing raters give a value for: a likert criterion, or a pairwise preference."""

    question: str
    kind: str  # "likert", "pairwise", or "flag" (a rubric flag raised or not: 1 or 0)
    criterion: str | None = None
    scale: tuple[int, int] | None = None

    @property
    def label(self) -> str:
        return f"{self.question} · {self.criterion}" if self.criterion else self.question

    @property
    def domain(self) -> list[int]:
        """Every value the variable can take, in order."""
        if self.kind == "likert":
            low, high = self.scale
            return list(range(low, high + 1))
        if self.kind == "flag":
            return [0, 1]
        return [0, 1, TIE]

    def value_name(self, value: int) -> str:
        if self.kind == "likert":
            return str(value)
        if self.kind == "flag":
            return {0: "not raised", 1: "raised"}[value]
        return {0: "first", 1: "second", TIE: "tie"}[value]


@dataclass
class ReliabilityData:
    variable: Variable
    raters: list[int]  # user ids, ascending: the matrix's rows
    units: list[int]  # task ids, ascending: the matrix's columns
    matrix: np.ndarray  # float, raters × units, NaN where the rater did not judge the unit

    def column(self, unit: int) -> list[float]:
        values = self.matrix[:, self.units.index(unit)]
        return [float(v) for v in values if not np.isnan(v)]


def project_variables(project: Project) -> list[Variable]:
    try:
        questions = validate_questions_config(project.questions)
    except QuestionsConfigError:
        return []
    variables = []
    for question in questions:
        if question["kind"] == "likert":
            variables.extend(
                Variable(question["name"], "likert", criterion, tuple(question["scale"]))
                for criterion in question["criteria"]
            )
        elif question["kind"] == "pairwise":
            variables.append(Variable(question["name"], "pairwise"))
    return variables


def _positions(project: Project, task_ids: Iterable[int]) -> dict[tuple[int, int], int]:
    """(task id, output id) → the output's position in that task."""
    rows = TaskOutput.objects.filter(task__project=project, task_id__in=list(task_ids)).values_list(
        "task_id", "output_id", "position"
    )
    return {(task_id, output_id): position for task_id, output_id, position in rows}


def _values(
    project: Project, variables: list[Variable], *, statuses: Iterable[str] | None, gold: bool = False
) -> dict[Variable, dict[tuple[int, int], int]]:
    """{variable: {(rater id, task id): value}} from the project's answers."""
    by_question: dict[str, list[Variable]] = defaultdict(list)
    for variable in variables:
        by_question[variable.question].append(variable)
    answers = Answer.objects.filter(
        judgment__project=project,
        judgment__task__is_gold=gold,
        question__in=list(by_question),
        kind__in=[Answer.Kind.LIKERT, Answer.Kind.PAIRWISE],
    )
    if statuses is not None:
        answers = answers.filter(judgment__status__in=list(statuses))
    rows = list(answers.values_list("judgment__rater_id", "judgment__task_id", "question", "kind", "value"))
    positions = _positions(project, {task_id for _, task_id, _, kind, _ in rows if kind == "pairwise"})
    values: dict[Variable, dict[tuple[int, int], int]] = {variable: {} for variable in variables}
    for rater_id, task_id, question, kind, value in rows:
        for variable in by_question[question]:
            if variable.kind != kind:
                continue  # the question changed kind since; its old answers are not comparable
            if kind == "likert":
                score = value.get(variable.criterion) if isinstance(value, dict) else None
                if isinstance(score, int) and not isinstance(score, bool):
                    values[variable][(rater_id, task_id)] = score
            else:
                preferred = value.get("preferred") if isinstance(value, dict) else None
                if preferred is None:
                    values[variable][(rater_id, task_id)] = TIE
                elif (task_id, preferred) in positions:
                    values[variable][(rater_id, task_id)] = positions[(task_id, preferred)]
    return values


def _as_reliability_data(variable: Variable, values: dict[tuple[int, int], int]) -> ReliabilityData:
    raters = sorted({rater for rater, _ in values})
    units = sorted({unit for _, unit in values})
    row, column = {r: i for i, r in enumerate(raters)}, {u: j for j, u in enumerate(units)}
    matrix = np.full((len(raters), len(units)), np.nan)
    for (rater, unit), value in values.items():
        matrix[row[rater], column[unit]] = value
    return ReliabilityData(variable=variable, raters=raters, units=units, matrix=matrix)


def reliability_data(
    project: Project, variables: list[Variable] | None = None, *, statuses: Iterable[str] | None = None
) -> list[ReliabilityData]:
    """A raters × tasks matrix per variable (non-gold tasks; judgments in `statuses`, or all)."""
    variables = project_variables(project) if variables is None else variables
    values = _values(project, variables, statuses=statuses)
    return [_as_reliability_data(variable, values[variable]) for variable in variables]


# ---------------------------------------------------------------- statistics


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def krippendorff_alpha(matrix: Any, level: str, *, value_domain: list | None = None) -> float | None:
    """Krippendorff's alpha of a raters × units matrix (NaN = missing); None when undefined
    (no unit judged twice, or a single value in the data: there is no disagreement to expect)."""
    import krippendorff

    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        return None
    judged = (~np.isnan(matrix)).sum(axis=0)
    pairable = matrix[:, judged >= 2]
    if pairable.size == 0 or len(np.unique(pairable[~np.isnan(pairable)])) < 2:
        return None
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            return _finite(
                krippendorff.alpha(
                    reliability_data=matrix, level_of_measurement=level, value_domain=value_domain
                )
            )
        except ValueError:
            return None


def fleiss_table(matrix: Any) -> tuple[np.ndarray | None, int]:
    """Fleiss' units × categories count table, from the units judged by the modal number (≥ 2) of
    raters, and that number of units."""
    from statsmodels.stats.inter_rater import aggregate_raters

    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.size == 0:
        return None, 0
    columns = [matrix[:, j][~np.isnan(matrix[:, j])] for j in range(matrix.shape[1])]
    counts = Counter(len(column) for column in columns if len(column) >= 2)
    if not counts:
        return None, 0
    # Most units first, then the larger number of raters.
    raters, _ = max(counts.items(), key=lambda item: (item[1], item[0]))
    subjects = np.array([column for column in columns if len(column) == raters])
    table, _categories = aggregate_raters(subjects)
    return table, len(subjects)


def fleiss_kappa(matrix: Any) -> tuple[float | None, int]:
    """Fleiss' kappa (statsmodels) of a raters × units matrix, and how many units it used."""
    from statsmodels.stats.inter_rater import fleiss_kappa as statsmodels_fleiss_kappa

    table, units = fleiss_table(matrix)
    if table is None or table.shape[1] < 2:
        return None, units
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _finite(statsmodels_fleiss_kappa(table, method="fleiss")), units


def cohen_kappa(
    first: Iterable[Any], second: Iterable[Any], *, labels: list | None = None, weights: str | None = None
) -> float | None:
    """Cohen's kappa (scikit-learn) of two raters' values on the same units; None when undefined."""
    from sklearn.metrics import cohen_kappa_score

    first, second = list(first), list(second)
    if len(first) < 1 or len(first) != len(second):
        return None
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _finite(cohen_kappa_score(first, second, labels=labels, weights=weights))


@dataclass
class PairAgreement:
    variable: Variable
    rater_a: int
    rater_b: int
    shared: int  # units both judged
    matches: int  # of those, units where they gave the same value
    kappa: float | None  # None below MIN_SHARED shared units, or when undefined


def pair_agreements(data: ReliabilityData) -> list[PairAgreement]:
    """Every pair of raters who judged a unit in common, with their Cohen's kappa on those units."""
    variable = data.variable
    weights = "linear" if variable.kind == "likert" else None
    present = ~np.isnan(data.matrix)
    pairs = []
    for a, b in combinations(range(len(data.raters)), 2):
        shared = present[a] & present[b]
        n = int(shared.sum())
        if n == 0:
            continue
        first, second = data.matrix[a, shared].astype(int), data.matrix[b, shared].astype(int)
        kappa = (
            cohen_kappa(first, second, labels=variable.domain, weights=weights) if n >= MIN_SHARED else None
        )
        pairs.append(
            PairAgreement(
                variable=variable,
                rater_a=data.raters[a],
                rater_b=data.raters[b],
                shared=n,
                matches=int((first == second).sum()),
                kappa=kappa,
            )
        )
    return pairs


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


@dataclass
class VariableAgreement:
    variable: Variable
    raters: int
    units: int  # units judged by at least two raters
    alpha_nominal: float | None = None
    alpha_ordinal: float | None = None
    alpha_interval: float | None = None
    fleiss: float | None = None
    fleiss_units: int = 0
    mean_cohen: float | None = None
    cohen_pairs: int = 0  # rater pairs with a defined kappa
    percent_agreement: float | None = None  # over every pair of ratings of a unit


def variable_agreement(data: ReliabilityData) -> VariableAgreement:
    variable, matrix = data.variable, data.matrix
    judged = (~np.isnan(matrix)).sum(axis=0) if matrix.size else np.zeros(0)
    result = VariableAgreement(variable=variable, raters=len(data.raters), units=int((judged >= 2).sum()))
    if variable.kind == "likert":
        result.alpha_ordinal = krippendorff_alpha(matrix, "ordinal", value_domain=variable.domain)
        result.alpha_interval = krippendorff_alpha(matrix, "interval", value_domain=variable.domain)
    else:
        result.alpha_nominal = krippendorff_alpha(matrix, "nominal", value_domain=variable.domain)
    result.fleiss, result.fleiss_units = fleiss_kappa(matrix)
    pairs = pair_agreements(data)
    kappas = [pair.kappa for pair in pairs if pair.kappa is not None]
    result.mean_cohen, result.cohen_pairs = _mean(kappas), len(kappas)
    shared = sum(pair.shared for pair in pairs)
    result.percent_agreement = sum(pair.matches for pair in pairs) / shared if shared else None
    return result


def project_agreement(
    project: Project, *, statuses: Iterable[str] | None = TRAINING_STATUSES
) -> list[VariableAgreement]:
    """Agreement per variable, over the judgments that would train (pending and accepted) by default."""
    return [variable_agreement(data) for data in reliability_data(project, statuses=statuses)]


# ---------------------------------------------------------------- score distributions


def score_distributions(
    project: Project, *, statuses: Iterable[str] | None = TRAINING_STATUSES
) -> list[tuple[Variable, dict[int, int]]]:
    """How often each value was given, per variable (gold tasks included), every value of the domain listed."""
    variables = project_variables(project)
    counts = {variable: Counter() for variable in variables}
    for gold in (False, True):
        for variable, values in _values(project, variables, statuses=statuses, gold=gold).items():
            counts[variable].update(values.values())
    return [(v, {value: counts[v][value] for value in v.domain}) for v in variables]


def distribution_plots(distributions: list[tuple[Variable, dict[int, int]]]) -> list[tuple[Variable, str]]:
    """A bar chart per variable as a PNG data URI (small images wrap on narrow screens);
    none when nothing has been rated yet."""
    if not any(sum(counts.values()) for _, counts in distributions):
        return []
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    plots = []
    for variable, counts in distributions:
        # Figure, not pyplot: no global state, safe in a threaded web server.
        figure = Figure(figsize=(3.4, 2.4), dpi=100, layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        axes.bar([variable.value_name(value) for value in counts], list(counts.values()), color="#2f5fd0")
        axes.set_title(variable.label, fontsize=10)
        axes.set_ylabel("answers", fontsize=8)
        axes.tick_params(labelsize=8)
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts
        axes.spines[["top", "right"]].set_visible(False)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plots.append(
            (variable, "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
        )
    return plots


# ---------------------------------------------------------------- raters


@dataclass
class RaterStats:
    user_id: int
    username: str
    role: str = ""
    is_active: bool = False
    judgments: int = 0
    median_seconds: float | None = None
    gold_checks: int = 0
    gold_passed: int = 0
    shared_items: int = 0
    matching_items: int = 0
    kappas: list[float] = field(default_factory=list)

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_passed / self.gold_checks if self.gold_checks else None

    @property
    def agreement(self) -> float | None:
        return self.matching_items / self.shared_items if self.shared_items else None

    @property
    def mean_kappa(self) -> float | None:
        return _mean(self.kappas)


def gold_checks(
    kind: str, answer: Any, expected: Any, *, scale_criteria: list[str] | None = None
) -> list[bool]:
    """Pass/fail of each check of one answer against its gold answer (see the module docstring)."""
    if kind == "likert":
        criteria = scale_criteria or []
        if not isinstance(expected, dict):
            expected = {criteria[0]: expected} if len(criteria) == 1 else {}
        given = answer if isinstance(answer, dict) else {}
        checks = []
        for criterion, score in expected.items():
            value = given.get(criterion)
            checks.append(
                isinstance(value, int)
                and isinstance(score, int | float)
                and abs(value - score) <= GOLD_LIKERT_TOLERANCE
            )
        return checks
    if kind == "pairwise":
        expected = expected.get("preferred") if isinstance(expected, dict) else expected
        if not isinstance(answer, dict):
            return [False]
        return [answer.get("preferred") == expected]
    if kind == "rubric":
        expected = expected.get("flags", []) if isinstance(expected, dict) else expected or []
        given = answer.get("flags", []) if isinstance(answer, dict) else []
        return [set(given) == set(expected)]
    if kind == "ranking":
        expected = expected.get("ranking") if isinstance(expected, dict) else expected
        given = answer.get("ranking") if isinstance(answer, dict) else None

        def groups(ranking):
            return [sorted(g) if isinstance(g, list) else [g] for g in ranking or []]

        return [given is not None and groups(given) == groups(expected)]
    return []  # feedback and fixes have no right answer


def _gold_results(project: Project) -> dict[int, list[bool]]:
    """{rater id: [pass/fail of every gold check]}."""
    try:
        questions = {q["name"]: q for q in validate_questions_config(project.questions)}
    except QuestionsConfigError:
        return {}
    judgments = list(
        Judgment.objects.filter(project=project, task__is_gold=True, task__gold_answers__isnull=False)
        .exclude(task__gold_answers={})
        .values_list("pk", "rater_id", "task__gold_answers")
    )
    answers: dict[int, dict[str, Any]] = defaultdict(dict)
    for judgment_id, question, value in Answer.objects.filter(
        judgment_id__in=[pk for pk, _, _ in judgments]
    ).values_list("judgment_id", "question", "value"):
        answers[judgment_id][question] = value
    results: dict[int, list[bool]] = defaultdict(list)
    for judgment_id, rater_id, expected in judgments:
        if not isinstance(expected, dict):
            continue
        for name, gold in expected.items():
            question = questions.get(name)
            if question is None:
                continue
            answer = answers[judgment_id].get(name)
            if answer is None and question["kind"] == "rubric":
                answer = {"flags": []}  # an unflagged rubric is not stored
            results[rater_id].extend(
                gold_checks(question["kind"], answer, gold, scale_criteria=question.get("criteria"))
            )
    return results


def rater_stats(project: Project) -> list[RaterStats]:
    """A row per member of the project and per other user who judged in it, by username."""
    stats: dict[int, RaterStats] = {}
    for membership in Membership.objects.filter(project=project).select_related("user"):
        stats[membership.user_id] = RaterStats(
            user_id=membership.user_id,
            username=membership.user.get_username(),
            role=membership.role,
            is_active=membership.is_active,
        )
    times: dict[int, list[int]] = defaultdict(list)
    for rater_id, username, time_spent in Judgment.objects.filter(project=project).values_list(
        "rater_id", "rater__username", "time_spent_ms"
    ):
        row = stats.setdefault(rater_id, RaterStats(user_id=rater_id, username=username))
        row.judgments += 1
        if time_spent is not None:
            times[rater_id].append(time_spent)
    for rater_id, values in times.items():
        stats[rater_id].median_seconds = statistics.median(values) / 1000

    for rater_id, checks in _gold_results(project).items():
        if rater_id in stats:
            stats[rater_id].gold_checks = len(checks)
            stats[rater_id].gold_passed = sum(checks)

    for data in reliability_data(project, statuses=None):
        for pair in pair_agreements(data):
            for rater_id in (pair.rater_a, pair.rater_b):
                row = stats[rater_id]
                row.shared_items += pair.shared
                row.matching_items += pair.matches
                if pair.kappa is not None:
                    row.kappas.append(pair.kappa)
    return sorted(stats.values(), key=lambda row: row.username.lower())


def review_counts(project: Project) -> dict[str, int]:
    """Judgments per review status (every status listed)."""
    counts = dict(
        Judgment.objects.filter(project=project).order_by().values_list("status").annotate(n=Count("id"))
    )
    return {status: counts.get(status, 0) for status in Judgment.Status.values}


# ---------------------------------------------------------------- (QA)² projects


@dataclass
class Qa2Group:
    """Tasks grouped by how their raters judged the question's assumption, and how acceptable
    the answers were judged in them."""

    label: str
    tasks: int = 0
    judgments: int = 0
    acceptable: int = 0  # judgments that found the answer acceptable

    @property
    def rate(self) -> float | None:
        return self.acceptable / self.judgments if self.judgments else None


@dataclass
class Qa2Summary:
    flagged: Qa2Group  # a majority of the task's raters flagged a questionable assumption
    not_flagged: Qa2Group  # a majority did not
    split: Qa2Group  # as many did as did not
    detection: VariableAgreement  # agreement on whether the question holds a questionable assumption

    @property
    def groups(self) -> list[Qa2Group]:
        return [self.flagged, self.not_flagged, self.split]


def qa2_detection_data(
    project: Project, *, statuses: Iterable[str] | None = TRAINING_STATUSES
) -> ReliabilityData:
    """Raters × tasks: 1 where the rater flagged a questionable assumption, 0 where they did not.

    Every judgment with an acceptability score counts: an unflagged rubric is not stored, so a
    judgment without an `assumption` answer is a 0, not a missing value.
    """
    judgments = Judgment.objects.filter(project=project, task__is_gold=False)
    if statuses is not None:
        judgments = judgments.filter(status__in=list(statuses))
    answers = Answer.objects.filter(
        judgment__in=judgments, question__in=[ASSUMPTION_QUESTION, ACCEPTABLE_QUESTION]
    ).values_list("judgment__rater_id", "judgment__task_id", "question", "kind", "value")
    values: dict[tuple[int, int], int] = {}
    for rater_id, task_id, question, kind, value in answers:
        key = (rater_id, task_id)
        if question == ASSUMPTION_QUESTION and kind == Answer.Kind.RUBRIC:
            flags = value.get("flags", []) if isinstance(value, dict) else []
            if ASSUMPTION_FLAG in flags:
                values[key] = 1
            else:
                values.setdefault(key, 0)
        elif question == ACCEPTABLE_QUESTION and kind == Answer.Kind.LIKERT:
            values.setdefault(key, 0)
    return _as_reliability_data(Variable(ASSUMPTION_QUESTION, "flag", ASSUMPTION_FLAG), values)


def _acceptability(project: Project, statuses: Iterable[str] | None) -> dict[tuple[int, int], int]:
    """{(rater id, task id): 1 if the rater found the answer acceptable, else 0}."""
    answers = Answer.objects.filter(
        judgment__project=project,
        judgment__task__is_gold=False,
        question=ACCEPTABLE_QUESTION,
        kind=Answer.Kind.LIKERT,
    )
    if statuses is not None:
        answers = answers.filter(judgment__status__in=list(statuses))
    scores = {}
    for rater_id, task_id, value in answers.values_list("judgment__rater_id", "judgment__task_id", "value"):
        score = value.get(ACCEPTABLE_QUESTION) if isinstance(value, dict) else None
        if score in (0, 1) and not isinstance(score, bool):
            scores[(rater_id, task_id)] = score
    return scores


def qa2_summary(project: Project, *, statuses: Iterable[str] | None = TRAINING_STATUSES) -> Qa2Summary:
    """Acceptability split by the raters' majority view of each question's assumption, and their
    agreement on detecting it (pending and accepted judgments of non-gold tasks, by default).

    A task's group is decided by its own raters: flagged when more than half of them flagged a
    questionable assumption, not flagged when fewer than half did, split otherwise. Acceptability
    counts every judgment in the group's tasks.
    """
    detection = qa2_detection_data(project, statuses=statuses)
    acceptable = _acceptability(project, statuses)
    summary = Qa2Summary(
        flagged=Qa2Group("Assumption flagged by the majority"),
        not_flagged=Qa2Group("Assumption not flagged by the majority"),
        split=Qa2Group("Raters split evenly"),
        detection=variable_agreement(detection),
    )
    for unit in detection.units:
        flags = detection.column(unit)
        raised = sum(flags)
        if 2 * raised > len(flags):
            group = summary.flagged
        elif 2 * raised < len(flags):
            group = summary.not_flagged
        else:
            group = summary.split
        group.tasks += 1
        for rater in detection.raters:
            score = acceptable.get((rater, unit))
            if score is not None:
                group.judgments += 1
                group.acceptable += score
    return summary
