"""The answers' values as the database takes them out of the JSON (annotation.quality.answer_table)
against reading every answer in Python, as the figures were first computed: random judgments,
with values a rater's answers can hold after questions change (strings, booleans, fractions,
missing keys, outputs not in the task, a question that changed kind)."""

import random
from collections import defaultdict

import numpy as np
import pytest

from annotation import quality
from annotation.agreement import TIE, as_reliability_data, variable_agreement
from annotation.models import TRAINING_STATUSES, Answer, Judgment, Project, TaskOutput
from tests.factories import make_tasks, output_ids, write_judgment

QUESTIONS = [
    {"name": "quality", "kind": "likert", "scale": [1, 5], "criteria": ["helpful", "accurate"]},
    {"name": "preference", "kind": "pairwise", "allow_ties": True},
]
ODD_SCORES = ["4", True, 2.0, 2.5, None, -1, 12]


def python_values(project, variables, *, statuses, gold):
    """{variable: {(rater id, task id): value}}, every answer read and decoded in Python."""
    by_question = defaultdict(list)
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
    positions = {
        (t, o): p
        for t, o, p in TaskOutput.objects.filter(task__project=project).values_list(
            "task_id", "output_id", "position"
        )
    }
    values = {variable: {} for variable in variables}
    for rater_id, task_id, question, kind, value in rows:
        for variable in by_question[question]:
            if variable.kind != kind:
                continue
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


@pytest.fixture
def judged(db, django_user_model):
    rng = random.Random(3)
    project = Project.objects.create(name="Mixed answers", questions=QUESTIONS, overlap=3)
    raters = [django_user_model.objects.create_user(f"r{i}") for i in range(6)]
    tasks = make_tasks(project, 25, kind="pairwise") + make_tasks(
        project, 12, kind="pairwise", gold=True, prefix="g"
    )
    for task in tasks:
        outputs = output_ids(task)
        for rater in rng.sample(raters, rng.randint(1, 4)):
            likert = {"helpful": rng.randint(1, 5), "accurate": rng.randint(1, 5)}
            if rng.random() < 0.3:
                likert[rng.choice(["helpful", "accurate"])] = rng.choice(ODD_SCORES)
            if rng.random() < 0.1:
                likert.pop("accurate")
            preferred = rng.choice([*outputs, None, None])
            pairwise = {"preferred": preferred, "strength": 2}
            if rng.random() < 0.2:
                pairwise = rng.choice([{}, {"preferred": 999_999}, {"preferred": "x"}, [1], 3])
            answers = {"preference": ("pairwise", pairwise)}
            roll = rng.random()
            if roll < 0.8:
                answers["quality"] = ("likert", likert if roll < 0.75 else 4)
            else:
                answers["quality"] = ("rubric", {"flags": ["x"]})  # the question changed kind
            status = rng.choice(Judgment.Status.values)
            write_judgment(
                task, rater, answers, status=status, time_spent_ms=rng.choice([None, rng.randint(1, 9000)])
            )
    return project


@pytest.mark.parametrize("statuses", [None, TRAINING_STATUSES])
@pytest.mark.parametrize("gold", [False, True])
def test_the_table_holds_the_values_python_reads(judged, statuses, gold):
    variables = quality.project_variables(judged)
    table = quality.answer_table(judged, variables)
    expected = python_values(judged, variables, statuses=statuses, gold=gold)
    assert sum(len(v) for v in expected.values()) > 5
    for variable in variables:
        raters, tasks, values = table.select(variable, statuses=statuses, gold=gold)
        got = dict(zip(zip(raters.tolist(), tasks.tolist(), strict=True), values.tolist(), strict=True))
        assert got == expected[variable], variable


def test_the_figures_are_those_of_the_python_values(judged):
    variables = quality.project_variables(judged)
    expected = python_values(judged, variables, statuses=TRAINING_STATUSES, gold=False)
    for got, variable in zip(quality.project_agreement(judged), variables, strict=True):
        want = variable_agreement(as_reliability_data(variable, expected[variable]))
        for name, value in vars(want).items():
            shown = getattr(got, name)
            assert (
                shown == pytest.approx(value, abs=1e-9, rel=0) if isinstance(value, float) else shown == value
            ), name
    gold = python_values(judged, variables, statuses=TRAINING_STATUSES, gold=True)
    for variable, counts in quality.score_distributions(judged):
        given = [*expected[variable].values(), *gold[variable].values()]
        assert counts == {value: given.count(value) for value in variable.domain}


def test_rater_figures_count_and_time_every_judgment(judged):
    figures = quality.rater_figures(judged)
    for rater_id, row in figures.items():
        spent = [
            t
            for t in Judgment.objects.filter(project=judged, rater_id=rater_id).values_list(
                "time_spent_ms", flat=True
            )
        ]
        assert row.judgments == len(spent)
        recorded = [t for t in spent if t is not None]
        assert row.median_seconds == (float(np.median(recorded)) / 1000 if recorded else None)
