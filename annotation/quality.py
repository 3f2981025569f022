"""How much raters agree, and how good each rater is: the numbers behind the curator dashboard.

Everything here reads the judgments and lays them out; the statistics themselves are in
annotation.agreement (from maintained libraries, never hand-written formulas), and the dashboard's
pictures in annotation.plots.

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

The judgments' values are read in one query per page (`answer_table`: the database takes them out
of the answers' JSON, a row per judgment) into numpy arrays; annotation.agreement computes every
rater pair's figures at once.

The pages read these figures through `dashboard_figures` and `rater_stats`, cached in the "stats"
cache under the project's statistics versions (annotation.models.StatsVersion): a page view on a
project of a million judgments reads one row and the cache. A curator's change (a review, a gold
answer, new tasks, the questions) moves the curated version on and the next view recomputes; a
rater's new judgment moves the judged version on, and figures younger than
STATS_MAX_AGE_SECONDS are still shown, with their time and the number of judgments since.
Memberships and usernames are read live, never cached.

A big project's figures (more than STATS_INLINE_MAX_JUDGMENTS judgments) take seconds of CPU:
computed in the page view, they would hold the web process's interpreter and CPU while raters wait
for their next task. With a shared cache they are computed by a worker instead, at a lower CPU
priority (annotation.tasks.refresh_figures on REFINERY_BACKGROUND_QUEUE), and the page shows the
last figures meanwhile (see `cached_figures`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from celery import current_app
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import caches
from django.core.cache.backends.dummy import DummyCache
from django.core.cache.backends.locmem import LocMemCache
from django.core.paginator import Page, Paginator
from django.db import connection
from django.db.models import Count
from django.utils import timezone

from annotation.agreement import (
    TIE,
    ReliabilityData,
    Variable,
    VariableAgreement,
    as_reliability_data,
    gold_checks,
    pair_agreements,
    reliability_from_arrays,
    variable_agreement,
)
from annotation.models import (
    TRAINING_STATUSES,
    Answer,
    Judgment,
    Membership,
    Project,
    stats_judged_since,
    stats_version_counted,
)
from annotation.plots import distribution_plots
from annotation.questions import QuestionsConfigError, validate_questions_config
from annotation.selectors import project_progress
from annotation.templates_qa2 import (
    ACCEPTABLE_QUESTION,
    ASSUMPTION_FLAG,
    ASSUMPTION_QUESTION,
    is_qa2_project,
)

logger = logging.getLogger(__name__)

# Part of every cache key: changed when the cached figures change shape, so that a shared cache
# never hands one release's objects to another.
FIGURES_FORMAT = 4


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


@dataclass
class AnswerTable:
    """Every judgment of a project with its value of each variable: parallel arrays, a row per
    judgment (see `answer_table`)."""

    ids: np.ndarray  # int64: the judgments' ids
    raters: np.ndarray  # int64
    tasks: np.ndarray  # int64
    statuses: np.ndarray  # the judgments' review statuses (str objects, one per status)
    gold: np.ndarray  # bool: on a gold task
    time_spent: np.ndarray  # float: the judgments' time_spent_ms, NaN where not recorded
    values: dict[Variable, np.ndarray]  # float, NaN where the judgment gives the variable no value

    def columns(self) -> list[np.ndarray]:
        """The arrays in answer_table's column order (`_table` takes them back)."""
        return [
            self.ids,
            self.raters,
            self.tasks,
            self.statuses,
            self.gold,
            self.time_spent,
            *self.values.values(),
        ]

    def rows(self, chosen: np.ndarray) -> AnswerTable:
        """The table of the rows `chosen` (a boolean mask or indices)."""
        return _table(list(self.values), [column[chosen] for column in self.columns()])

    def __add__(self, other: AnswerTable) -> AnswerTable:
        """This table's rows, then `other`'s (the same variables)."""
        pairs = zip(self.columns(), other.columns(), strict=True)
        return _table(list(self.values), [np.concatenate(pair) for pair in pairs])

    def select(
        self, variable: Variable, *, statuses: Iterable[str] | None, gold: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Raters, tasks and values of the judgments giving `variable` a value."""
        values = self.values[variable]
        rows = (self.gold == gold) & ~np.isnan(values)
        if statuses is not None:
            rows &= np.isin(self.statuses, list(statuses))
        return self.raters[rows], self.tasks[rows], values[rows]


def _integer_sql(answer: str, key: str) -> tuple[str, list]:
    """SQL of the integer at `key` in an answer's value object: NULL when absent or not an integer
    (a JSON number written without a fraction or exponent, as Python's json reads an int)."""
    if connection.vendor == "postgresql":
        return (
            f"CASE WHEN jsonb_typeof({answer}.value -> %s) = 'number' AND {answer}.value ->> %s ~ '^-?[0-9]+$'"
            f" THEN ({answer}.value ->> %s)::bigint END",
            [key, key, key],
        )
    path = f'$."{key}"'
    return f"CASE WHEN json_type({answer}.value, %s) = 'integer' THEN json_extract({answer}.value, %s) END", [
        path,
        path,
    ]


def _absent_sql(answer: str, key: str) -> tuple[str, list]:
    """SQL: true where an answer's value has no `key`, or null there (or is not an object)."""
    if connection.vendor == "postgresql":
        return f"COALESCE(jsonb_typeof({answer}.value -> %s), 'null') = 'null'", [key]
    return f"COALESCE(json_type({answer}.value, %s), 'null') = 'null'", [f'$."{key}"']


_CHUNK = 20_000


def answer_table(
    project: Project, variables: list[Variable], *, ids: np.ndarray | None = None
) -> AnswerTable:
    """The project's judgments with each variable's value, in one query (values taken out of the
    answers' JSON by the database), read in chunks into numpy arrays; only the judgments `ids`
    where given.

    A likert criterion's value is its integer score; a pairwise question's is the preferred
    output's position in the task (TaskOutput.position), TIE for no preference, and no value for
    an output not in the task. An answer whose question changed kind since is not read.
    """
    questions = {variable.question: variable.kind for variable in variables}
    joins, join_params, columns, column_params = [], [], [], []
    for i, (question, kind) in enumerate(questions.items()):
        joins.append(
            f"LEFT JOIN annotation_answer a{i} ON a{i}.judgment_id = j.id AND a{i}.question = %s AND a{i}.kind = %s"
        )
        join_params += [question, kind]
        if kind == "pairwise":
            preferred, params = _integer_sql(f"a{i}", "preferred")
            joins.append(
                f"LEFT JOIN annotation_taskoutput o{i} ON o{i}.task_id = j.task_id AND o{i}.output_id = {preferred}"
            )
            join_params += params
    for variable in variables:
        i = list(questions).index(variable.question)
        if variable.kind == "likert":
            sql, params = _integer_sql(f"a{i}", variable.criterion)
        else:
            absent, params = _absent_sql(f"a{i}", "preferred")
            sql = f"CASE WHEN a{i}.id IS NULL THEN NULL WHEN {absent} THEN %s ELSE o{i}.position END"
            params = [*params, TIE]
        columns.append(sql)
        column_params += params
    where, where_params = "j.project_id = %s", [project.pk]
    if ids is not None:
        if connection.vendor != "postgresql" and len(ids) > _CHUNK:  # SQLite's limit on parameters
            parts = [
                answer_table(project, variables, ids=ids[i : i + _CHUNK]) for i in range(0, len(ids), _CHUNK)
            ]
            return sum(parts[1:], parts[0])
        if not len(ids):
            return _empty_table(variables)
        if connection.vendor == "postgresql":
            where, where_params = where + " AND j.id = ANY(%s)", [*where_params, [int(pk) for pk in ids]]
        else:
            where += " AND j.id IN (" + ", ".join(["%s"] * len(ids)) + ")"
            where_params += [int(pk) for pk in ids]
    sql = (
        "SELECT j.id, j.rater_id, j.task_id, j.status, t.is_gold, j.time_spent_ms"
        + "".join(f", {column}" for column in columns)
        + " FROM annotation_judgment j JOIN annotation_task t ON t.id = j.task_id "
        + " ".join(joins)
        + f" WHERE {where}"
    )
    chunks: list[list[np.ndarray]] = []
    with connection.cursor() as cursor:
        cursor.execute(sql, [*column_params, *join_params, *where_params])
        statuses: dict[str, str] = {}
        while rows := cursor.fetchmany(_CHUNK):
            fields = list(zip(*rows, strict=True))
            fields[3] = [statuses.setdefault(status, status) for status in fields[3]]  # one object each
            chunks.append(
                [
                    np.array(field, dtype=kind)
                    for field, kind in zip(fields, _COLUMN_KINDS + [float] * len(variables), strict=True)
                ]
            )
    if not chunks:
        return _empty_table(variables)
    return _table(variables, [np.concatenate([chunk[k] for chunk in chunks]) for k in range(len(chunks[0]))])


# The dtypes of answer_table's columns before the variables' (NaN: time not recorded).
_COLUMN_KINDS = [np.int64, np.int64, np.int64, object, bool, float]


def _table(variables: list[Variable], arrays: list[np.ndarray]) -> AnswerTable:
    ids, raters, tasks, statuses, gold, time_spent, *values = arrays
    return AnswerTable(
        ids, raters, tasks, statuses, gold, time_spent, dict(zip(variables, values, strict=True))
    )


def _empty_table(variables: list[Variable]) -> AnswerTable:
    return _table(variables, [np.zeros(0, dtype=kind) for kind in _COLUMN_KINDS + [float] * len(variables)])


@dataclass
class _Kept:
    curated: int
    variables: list[Variable]
    read_at: float  # time.monotonic() of the full reading
    table: AnswerTable


_kept: OrderedDict[int, _Kept] = OrderedDict()  # by project id, the most recently used last
_kept_lock = threading.Lock()


def judgment_ids(project: Project) -> np.ndarray:
    """The ids of the project's judgments, ascending."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM annotation_judgment WHERE project_id = %s ORDER BY id", [project.pk])
        return np.array([pk for (pk,) in cursor.fetchall()], dtype=np.int64)


def kept_answer_table(project: Project, curated: int) -> AnswerTable:
    """`answer_table`, read in full once per curated version, then only for the judgments added
    since: the background worker's way to a big project's figures.

    Under one curated version (annotation.models.StatsVersion) a project's judgments only grow:
    raters add judgments, with their answers, in one transaction; any other change to them (a
    review, an exclusion, a deletion, an edit, new questions) moves the version on. So the table
    read under a version, plus the rows of the judgments whose ids it lacks, is the table read
    afresh; judgments gone since (only with the version moved on, which reads afresh anyway) are
    dropped all the same. A table is read afresh after STATS_TABLE_MAX_AGE_SECONDS too: a change
    whose version increment was lost (annotation.models.stats_changed) is counted in time.

    The tables of the last STATS_TABLES_KEPT projects are kept in this process's memory (about 41
    bytes per judgment and 8 per variable); 0 reads afresh every time.
    """
    variables = project_variables(project)
    limit = settings.STATS_TABLES_KEPT
    with _kept_lock:
        kept = _kept.get(project.pk)
    fresh = (
        limit <= 0
        or kept is None
        or kept.curated != curated
        or kept.variables != variables
        or time.monotonic() - kept.read_at > settings.STATS_TABLE_MAX_AGE_SECONDS
    )
    if fresh:
        read_at, table = time.monotonic(), answer_table(project, variables)
    else:
        read_at, ids = kept.read_at, judgment_ids(project)
        known, table = kept.table.ids, kept.table
        still = np.isin(known, ids, assume_unique=True)
        if not still.all():
            table = table.rows(still)
        table = table + answer_table(project, variables, ids=np.setdiff1d(ids, known, assume_unique=True))
    with _kept_lock:
        _kept.pop(project.pk, None)
        if limit > 0:
            _kept[project.pk] = _Kept(curated=curated, variables=variables, read_at=read_at, table=table)
            while len(_kept) > limit:
                _kept.popitem(last=False)
    return table


def reliability_data(
    project: Project,
    variables: list[Variable] | None = None,
    *,
    statuses: Iterable[str] | None = None,
    table: AnswerTable | None = None,
) -> list[ReliabilityData]:
    """A raters × tasks matrix per variable (non-gold tasks; judgments in `statuses`, or all)."""
    variables = project_variables(project) if variables is None else variables
    table = answer_table(project, variables) if table is None else table
    return [
        reliability_from_arrays(variable, *table.select(variable, statuses=statuses))
        for variable in variables
    ]


def project_agreement(
    project: Project, *, statuses: Iterable[str] | None = TRAINING_STATUSES, table: AnswerTable | None = None
) -> list[VariableAgreement]:
    """Agreement per variable, over the judgments that would train (pending and accepted) by default."""
    return [variable_agreement(data) for data in _each_reliability_data(project, statuses, table)]


def _each_reliability_data(project: Project, statuses: Iterable[str] | None, table: AnswerTable | None):
    """`reliability_data`, one matrix at a time (a big project's are tens of megabytes each)."""
    variables = project_variables(project)
    table = answer_table(project, variables) if table is None else table
    for variable in variables:
        yield reliability_from_arrays(variable, *table.select(variable, statuses=statuses))


# ---------------------------------------------------------------- score distributions


def score_distributions(
    project: Project, *, statuses: Iterable[str] | None = TRAINING_STATUSES, table: AnswerTable | None = None
) -> list[tuple[Variable, dict[int, int]]]:
    """How often each value was given, per variable (gold tasks included), every value of the domain listed."""
    variables = project_variables(project)
    table = answer_table(project, variables) if table is None else table
    distributions = []
    for variable in variables:
        given = np.concatenate(
            [table.select(variable, statuses=statuses, gold=gold)[2] for gold in (False, True)]
        )
        counts = dict(zip(*np.unique(given, return_counts=True), strict=True))
        distributions.append((variable, {value: int(counts.get(value, 0)) for value in variable.domain}))
    return distributions


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
    # Cohen's kappa with each rater they share units with, as a sum and a count: a rater of a
    # project where everyone judges the same tasks has thousands, and the page shows their mean.
    kappa_sum: float = 0.0
    kappa_pairs: int = 0

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_passed / self.gold_checks if self.gold_checks else None

    @property
    def agreement(self) -> float | None:
        return self.matching_items / self.shared_items if self.shared_items else None

    @property
    def mean_kappa(self) -> float | None:
        return self.kappa_sum / self.kappa_pairs if self.kappa_pairs else None


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


def rater_figures(project: Project, *, table: AnswerTable | None = None) -> dict[int, RaterStats]:
    """{rater id: their figures} for every user who judged in the project (no names or roles);
    `table`: the project's answer table, if read already."""
    table = answer_table(project, project_variables(project)) if table is None else table
    order = np.lexsort((table.time_spent, table.raters))  # by rater, then time (NaN last)
    raters, times = table.raters[order], table.time_spent[order]
    ids, starts, counts = np.unique(raters, return_index=True, return_counts=True)
    stats: dict[int, RaterStats] = {}
    for rater_id, start, count in zip(ids.tolist(), starts, counts, strict=True):
        spent = times[start : start + count]
        spent = spent[~np.isnan(spent)]
        stats[rater_id] = RaterStats(
            user_id=rater_id,
            username="",
            judgments=int(count),
            median_seconds=float(np.median(spent)) / 1000 if len(spent) else None,
        )

    for rater_id, checks in _gold_results(project).items():
        if rater_id in stats:
            stats[rater_id].gold_checks = len(checks)
            stats[rater_id].gold_passed = sum(checks)

    for data in _each_reliability_data(project, None, table):
        for pair in pair_agreements(data):
            for rater_id in (pair.rater_a, pair.rater_b):
                row = stats[rater_id]
                row.shared_items += pair.shared
                row.matching_items += pair.matches
                if pair.kappa is not None:
                    row.kappa_sum += pair.kappa
                    row.kappa_pairs += 1
    return stats


def rater_stats(project: Project) -> list[RaterStats]:
    """A row per member of the project and per other user who judged in it, by username."""
    return rater_rows(project)[0]


def rater_rows(project: Project) -> tuple[list[RaterStats], Freshness]:
    """`rater_stats` and how current its figures are.

    The figures are cached (see the module's docstring); memberships and names are read live.
    """
    page, freshness = rater_page(project, number=1, per_page=None)
    return page.object_list, freshness


def rater_page(project: Project, *, number: Any, per_page: int | None) -> tuple[Page, Freshness]:
    """One page of `rater_stats` (`per_page` rows a page; None: all on one), with its figures'
    freshness. `number` is read as Paginator.get_page reads it (a bad one gives the first or last).

    The members are read and sorted as plain values, and rows made for the page's members only:
    a project of thousands of raters is shown a hundred at a time in a few milliseconds.
    """
    figures, freshness = cached_figures(project, "raters")
    figures = figures or {}  # none yet, while a worker computes them: the members are still listed
    username = f"user__{get_user_model().USERNAME_FIELD}"
    members = list(
        Membership.objects.filter(project=project).values_list("user_id", username, "role", "is_active")
    )
    listed = {member[0] for member in members}
    others = [rater_id for rater_id in figures if rater_id not in listed]
    if others:  # they judged here and are members no longer
        members += [
            (pk, name, None, None)
            for pk, name in get_user_model()
            .objects.filter(pk__in=others)
            .values_list("pk", get_user_model().USERNAME_FIELD)
        ]
    members.sort(key=lambda member: member[1].lower())  # usernames are strings
    page = Paginator(members, per_page or max(1, len(members))).get_page(number)
    rows = []
    for user_id, name, role, is_active in page.object_list:
        row = figures.get(user_id) or RaterStats(user_id=user_id, username="")
        row.username = name
        if role is not None:
            row.role, row.is_active = role, is_active
        rows.append(row)
    page.object_list = rows
    return page, freshness


def review_counts(project: Project, *, table: AnswerTable | None = None) -> dict[str, int]:
    """Judgments per review status (every status listed); from `table`, the project's answer
    table, if read already."""
    if table is None:
        counts = dict(
            Judgment.objects.filter(project=project).order_by().values_list("status").annotate(n=Count("id"))
        )
    else:
        statuses, n = np.unique(table.statuses.astype(str), return_counts=True)
        counts = dict(zip(statuses.tolist(), n.tolist(), strict=True))
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
    return as_reliability_data(Variable(ASSUMPTION_QUESTION, "flag", ASSUMPTION_FLAG), values)


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
    # Each unit's cells (its raters' flags): every judgment with an acceptability score has one.
    cells = detection.cells
    bounds = np.searchsorted(cells.units, np.arange(cells.n_units + 1)).tolist()
    for index, unit in enumerate(detection.units):
        start, stop = bounds[index], bounds[index + 1]
        raised = int(cells.values[start:stop].sum())
        if 2 * raised > stop - start:
            group = summary.flagged
        elif 2 * raised < stop - start:
            group = summary.not_flagged
        else:
            group = summary.split
        group.tasks += 1
        for row in cells.raters[start:stop].tolist():
            score = acceptable.get((detection.raters[row], unit))
            if score is not None:
                group.judgments += 1
                group.acceptable += score
    return summary


# ---------------------------------------------------------------- cached figures


@dataclass(frozen=True)
class Freshness:
    """How current the figures shown are."""

    as_of: datetime | None  # when the versions they were computed under were read; None: no figures yet
    judgments_since: int = 0  # raters' submissions since (0: nothing new)
    judgments: int = 0  # the project's judgments now (the judged version)
    recomputing: bool = False  # a worker is computing newer figures (annotation.tasks.refresh_figures)
    outdated: bool = False  # a page view would recompute them now (a curator's change, or past the max age)


@dataclass(frozen=True)
class _Entry:
    judged: int
    curated: int
    as_of: datetime
    value: Any


def _serves(entry: Any, judged: int, curated: int, now: datetime) -> bool:
    """Whether a cache entry may be shown now: computed under the current versions, or under the
    current curated version and an older judged one, less than STATS_MAX_AGE_SECONDS ago."""
    if not isinstance(entry, _Entry) or entry.curated != curated or entry.judged > judged:
        return False
    return entry.judged == judged or now - entry.as_of < timedelta(seconds=settings.STATS_MAX_AGE_SECONDS)


def _page_versions(project_id: int) -> tuple[int, int, bool]:
    """`stats_version`, as a page view reads it, and whether it was counted on from a shared count.

    Counting a big project's judgments is tens of milliseconds of the database's CPU at the
    raters' priority. So where a worker computes a project's figures, a full count (a page view's
    or the worker's) is shared through the statistics cache with the highest judgment id when it
    was taken, and for STATS_JUDGED_COUNT_SECONDS page views count on from it: the judgments with a
    higher id, read off the primary key, with the curated version in the same statement. A
    judgment whose id was taken before the full count and committed after it is missed until the
    next full count, which only delays "N judgments since" and an age-triggered recompute by as
    much: figures computed after reading a version count at least as many judgments as it does.
    A curator's change (a delete included) moves the curated version on, and the next view counts
    in full.
    """
    shared = None
    if settings.STATS_JUDGED_COUNT_SECONDS > 0:
        try:
            shared = caches["stats"].get(_judged_key(project_id))
        except Exception:  # e.g. Redis down: counted afresh
            shared = None
    if isinstance(shared, tuple) and len(shared) == 3:
        judged, last, curated_then = shared
        added, curated = stats_judged_since(project_id, last)
        if curated == curated_then:
            return judged + added, curated, True
    return *_versions_counted_in_full(project_id), False


def _judged_key(project_id: int) -> str:
    return f"stats:judged:{project_id}"


def _versions_counted_in_full(project_id: int) -> tuple[int, int]:
    """`stats_version`, its judgments counted in full; the count (with the highest judgment id it
    saw and the curated version) is shared with the page views of the next
    STATS_JUDGED_COUNT_SECONDS (`_page_versions`) where a worker computes the project's figures."""
    judged, last, curated = stats_version_counted(project_id)
    seconds = settings.STATS_JUDGED_COUNT_SECONDS
    if seconds > 0 and _computed_in_background(judged):
        try:
            caches["stats"].set(_judged_key(project_id), (judged, last, curated), seconds)
        except Exception:
            pass
    return judged, curated


def _figures_key(project_id: int, name: str) -> str:
    return f"stats:{FIGURES_FORMAT}:{project_id}:{name}"


PAGES = ("dashboard", "raters")


def figures_compute(project: Project, name: str, *, table: AnswerTable | None = None) -> Any:
    """The figures of one page ("dashboard" or "raters"), computed now; `table`: the project's
    answer table, if read already (both pages' figures are computed from it)."""
    if name == "dashboard":
        return dashboard_compute(project, table=table)
    if name == "raters":
        return rater_figures(project, table=table)
    raise ValueError(f"no figures named {name!r}")


def _computed_in_background(judged: int) -> bool:
    """Whether a project's figures are computed by a worker (settings.STATS_INLINE_MAX_JUDGMENTS).

    Only where the worker's result reaches the web processes: a per-process cache (no
    STATS_CACHE_URL) would keep it in the worker, so there the page computes.
    """
    return judged > settings.STATS_INLINE_MAX_JUDGMENTS and not isinstance(
        caches["stats"], LocMemCache | DummyCache
    )


REFRESH_TASK = "annotation.refresh_figures"  # annotation.tasks.refresh_figures: `figures_refresh`


def _refresh_requested(project_id: int, name: str) -> bool:
    """Send the recompute of these figures (annotation.tasks.refresh_figures) unless one was sent
    already; whether one is on its way.

    A lock in the cache, taken with an add (which only one of many concurrent views wins), marks
    the recompute as sent: two curators reloading queue one recompute, not two. The worker releases
    it when done; should the worker die or the message be lost, it expires after
    STATS_REFRESH_SECONDS and the next view sends again. A broker that cannot be reached is not an
    error page: the lock is released (the next view tries again) and the caller falls back.
    """
    cache, lock = caches["stats"], _figures_key(project_id, name) + ":refresh"
    try:
        if not cache.add(lock, True, settings.STATS_REFRESH_SECONDS):
            return True
    except Exception:
        logger.warning("statistics cache unwritable; %s of project %s not recomputed", name, project_id)
        return False
    try:
        # By name: readers do not import the tasks above them. No retries: a page view waits for
        # no broker.
        current_app.send_task(
            REFRESH_TASK, args=(project_id, name), queue=settings.REFINERY_BACKGROUND_QUEUE, retry=False
        )
    except Exception:
        logger.warning(
            "could not send the recompute of %s of project %s (broker unreachable?)",
            name,
            project_id,
            exc_info=True,
        )
        try:
            cache.delete(lock)
        except Exception:
            pass  # it expires
        return False
    return True


def cached_figures(project: Project, name: str) -> tuple[Any | None, Freshness]:
    """One page's figures (`figures_compute`) and how current they are, cached under the project's
    statistics versions; None for the figures while a worker computes the first ones.

    The versions are read first, in one query; they move on only after a change commits, so
    figures computed after reading them count every change up to them (and perhaps later ones:
    newer figures under an older version are harmless). Figures are recomputed when the curated
    version moved on, or when the judged one did and they are STATS_MAX_AGE_SECONDS old: while
    raters submit every second, a view recomputes at most that often, and says how old its
    figures are. A cache that cannot be reached is skipped (the figures are computed), never an
    error page.

    A big project's figures are recomputed by a worker (`_computed_in_background`): the view sends
    the recompute and shows the last figures, marked as being recomputed, or None when there are
    none yet. Should the recompute not be sent (the broker is down), it shows the last figures as
    they are, or computes the first ones itself: a page never without figures for good.
    """
    judged, curated, reused = _page_versions(project.pk)
    now = timezone.now()
    key = _figures_key(project.pk, name)
    cache = caches["stats"]
    try:
        entry = cache.get(key)
    except Exception:  # e.g. Redis down: the page still shows, computed
        logger.warning("statistics cache unreadable; computing %s of project %s", name, project.pk)
        return figures_compute(project, name), Freshness(as_of=now, judgments=judged)
    if reused and isinstance(entry, _Entry) and entry.curated == curated and entry.judged > judged:
        judged = entry.judged  # the worker counted after the count this view reused
    if _serves(entry, judged, curated, now):
        return entry.value, Freshness(
            as_of=entry.as_of, judgments_since=max(judged - entry.judged, 0), judgments=judged
        )
    last = entry if isinstance(entry, _Entry) else None
    if _computed_in_background(judged):
        recomputing = _refresh_requested(project.pk, name)
        if recomputing and last is None:
            return None, Freshness(as_of=None, judgments=judged, recomputing=True)
        if last is not None:
            return last.value, Freshness(
                as_of=last.as_of,
                judgments_since=max(judged - last.judged, 0),
                judgments=judged,
                recomputing=recomputing,
                outdated=True,
            )
    entry = _Entry(judged=judged, curated=curated, as_of=now, value=figures_compute(project, name))
    try:
        cache.set(key, entry, settings.STATS_CACHE_SECONDS)
    except Exception:
        logger.warning("statistics cache unwritable; %s of project %s not cached", name, project.pk)
    return entry.value, Freshness(as_of=now, judgments=judged)


def _refresh_due(cache, project_id: int, name: str, judged: int, curated: int, now: datetime) -> list[str]:
    """The pages whose figures a recompute of `name`'s computes: `name`'s, unless they may still be
    shown as they are; and the other page's, where they may not and a curator has shown them
    (they are cached) or asked for them (their recompute is on its way)."""
    due = []
    for page in PAGES:
        key = _figures_key(project_id, page)
        entry = cache.get(key)
        if _serves(entry, judged, curated, now):
            continue
        if page == name or entry is not None or cache.get(key + ":refresh") is not None:
            due.append(page)
    return due


def figures_refresh(*, project_id: int, name: str) -> None:
    """Compute one page's figures and cache them under the versions read first, as a page view
    would (annotation.tasks.refresh_figures); then release the lock the view that sent it took.

    Figures a page may still show as they are (another worker computed them since) are kept:
    a message delivered twice computes once. The other page's figures, if due (`_refresh_due`),
    are computed in the same run from the same answer table: reading it is most of the work on a
    big project, and curators go from one page to the other. Its own message, when it comes,
    finds them current.
    """
    cache, key = caches["stats"], _figures_key(project_id, name)
    try:
        project = Project.objects.filter(pk=project_id).first()
        if project is None:
            return  # deleted since
        judged, curated = _versions_counted_in_full(project_id)  # shared: counted at the worker's priority
        now = timezone.now()
        due = _refresh_due(cache, project_id, name, judged, curated, now)
        if not due:
            return
        table = kept_answer_table(project, curated)
        for page in due:
            entry = _Entry(
                judged=judged, curated=curated, as_of=now, value=figures_compute(project, page, table=table)
            )
            cache.set(_figures_key(project_id, page), entry, settings.STATS_CACHE_SECONDS)
    finally:
        cache.delete(key + ":refresh")


@dataclass
class DashboardFigures:
    progress: dict  # annotation.selectors.project_progress
    review_counts: dict[str, int]
    agreement: list[VariableAgreement]
    plots: list[tuple[Variable, str]]  # a PNG data URI per variable (annotation.plots)
    qa2: Qa2Summary | None  # only for projects asking the (QA)² template's questions


def dashboard_compute(project: Project, *, table: AnswerTable | None = None) -> DashboardFigures:
    if table is None:
        table = answer_table(project, project_variables(project))  # read once for both
    return DashboardFigures(
        progress=project_progress(project, judgments=int(np.count_nonzero(~table.gold))),
        review_counts=review_counts(project, table=table),
        agreement=project_agreement(project, table=table),
        plots=distribution_plots(score_distributions(project, table=table)),
        qa2=qa2_summary(project) if is_qa2_project(project.questions) else None,
    )


def dashboard_figures(project: Project) -> tuple[DashboardFigures | None, Freshness]:
    """The dashboard's progress, review counts, agreement, score distributions and (QA)² panel,
    cached, and how current they are (None while a worker computes the first ones)."""
    return cached_figures(project, "dashboard")
