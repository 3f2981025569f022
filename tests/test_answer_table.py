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


# ---------------------------------------------------------------- the background worker's kept tables


def same_table(a: quality.AnswerTable, b: quality.AnswerTable) -> None:
    """The same rows, whatever their order (NaN equal to NaN)."""
    first, second = np.argsort(a.ids), np.argsort(b.ids)
    for name in ("ids", "raters", "tasks", "statuses", "gold", "time_spent"):
        np.testing.assert_array_equal(getattr(a, name)[first], getattr(b, name)[second], err_msg=name)
    assert list(a.values) == list(b.values)
    for variable in a.values:
        np.testing.assert_array_equal(a.values[variable][first], b.values[variable][second], err_msg=variable)


@pytest.fixture
def reads(monkeypatch):
    """The `ids` of each answer_table reading (None: the whole project), the real reading still run."""
    calls = []
    real = quality.answer_table

    def recording(project, variables, *, ids=None):
        calls.append(None if ids is None else sorted(ids.tolist()))
        return real(project, variables, ids=ids)

    monkeypatch.setattr(quality, "answer_table", recording)
    return calls


def judge_more(project, django_user_model, n: int = 3) -> list[int]:
    """`n` new judgments on new tasks by a new rater, as a rater's submissions add them: their ids."""
    rater = django_user_model.objects.create_user(f"late{Judgment.objects.count()}")
    ids = []
    for task in make_tasks(project, n, kind="pairwise", prefix=f"late{rater.pk}-"):
        answers = {
            "quality": ("likert", {"helpful": 2, "accurate": 5}),
            "preference": ("pairwise", {"preferred": output_ids(task)[1]}),
        }
        ids.append(write_judgment(task, rater, answers, status="pending", time_spent_ms=700).pk)
    return ids


def test_a_kept_table_reads_only_the_judgments_added_since_and_equals_one_read_afresh(
    judged, reads, django_user_model
):
    first = quality.kept_answer_table(judged, 4)
    added = judge_more(judged, django_user_model)
    table = quality.kept_answer_table(judged, 4)
    assert reads == [None, added] and len(table.ids) == len(first.ids) + 3
    assert quality.kept_answer_table(judged, 4) is not None and reads[2:] == [[]]  # nothing new

    same_table(table, quality.answer_table(judged, quality.project_variables(judged)))
    assert quality.rater_figures(judged, table=table) == quality.rater_figures(judged)


def test_judgments_gone_since_are_dropped(judged, reads, django_user_model):
    quality.kept_answer_table(judged, 1)
    gone = Judgment.objects.filter(project=judged).order_by("pk").first()
    Judgment.objects.filter(pk=gone.pk).delete()
    added = judge_more(judged, django_user_model, 1)
    table = quality.kept_answer_table(judged, 1)
    assert reads == [None, added] and gone.pk not in table.ids
    same_table(table, quality.answer_table(judged, quality.project_variables(judged)))


def test_a_table_is_read_afresh_under_a_new_curated_version_and_when_old(judged, reads, settings):
    quality.kept_answer_table(judged, 1)
    quality.kept_answer_table(judged, 2)  # a curator's change: every row may differ
    assert reads == [None, None]
    settings.STATS_TABLE_MAX_AGE_SECONDS = 0
    quality.kept_answer_table(judged, 2)
    assert reads == [None, None, None]


def test_only_the_last_projects_tables_are_kept(judged, reads, settings, django_user_model):
    other = Project.objects.create(name="Other", questions=QUESTIONS, overlap=1)
    judge_more(other, django_user_model, 2)
    settings.STATS_TABLES_KEPT = 1
    quality.kept_answer_table(judged, 1)
    quality.kept_answer_table(other, 1)  # the first project's table is let go
    quality.kept_answer_table(judged, 1)
    assert reads == [None, None, None]
    settings.STATS_TABLES_KEPT = 0
    quality.kept_answer_table(judged, 1)
    quality.kept_answer_table(judged, 1)
    assert reads == [None] * 5 and not quality._kept


def test_new_judgments_are_read_in_parts_as_many_as_sqlite_takes_at_once(
    judged, django_user_model, monkeypatch
):
    quality.kept_answer_table(judged, 1)
    judge_more(judged, django_user_model, 5)
    monkeypatch.setattr(quality, "_CHUNK", 2)  # parameters per statement (SQLite), rows per fetch
    table = quality.kept_answer_table(judged, 1)
    same_table(table, quality.answer_table(judged, quality.project_variables(judged)))


def test_the_review_counts_and_progress_read_from_the_table_are_those_counted_by_the_database(judged):
    from annotation.selectors import project_progress

    table = quality.answer_table(judged, quality.project_variables(judged))
    assert quality.review_counts(judged, table=table) == quality.review_counts(judged)
    assert sum(quality.review_counts(judged).values()) == Judgment.objects.filter(project=judged).count()
    counted = int(np.count_nonzero(~table.gold))
    assert project_progress(judged, judgments=counted) == project_progress(judged)
