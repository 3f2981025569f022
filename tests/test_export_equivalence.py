"""Every export kind, read with a few ordered queries of plain values (annotation.exporting), gives
the same rows, and the same JSONL, CSV and parquet bytes, as the plain ORM reading of the same
judgments (tests/export_reference.py), on a project that holds every shape an export meets."""

import io
import itertools
import json
import threading

import pyarrow.parquet as pq
import pytest
from django.db.models import JSONField

from annotation import exporting, templates_qa2
from annotation.models import Judgment, Output, Prompt, Task, TaskOutput
from annotation.services.projects import project_create_from_template
from tests import export_reference as reference
from tests.factories import make_tasks, output_ids
from tests.factories import write_judgment as judge

pytestmark = pytest.mark.django_db

TRAINING_FILTERS = [
    (None, None),
    (["accepted"], None),
    (["pending", "accepted"], 1),
    (None, 2),
]
ALL_FILTERS = [*TRAINING_FILTERS, (["rejected", "excluded"], None), (["excluded"], 1)]


def _fix(text):
    return ("fix", text)


def _feedback(text):
    return ("feedback", text)


@pytest.fixture
def rich(project, other_project, users, django_user_model):
    """Judgments of every kind of task, answer and status; rater by rater, so a task's judgments
    are spread among the others' ids."""
    bob, alice, dave = users["bob"], users["alice"], users["dave"]
    erin = django_user_model.objects.create_user("érin ☃", password="pw-erin-123")
    raters = [bob, alice, dave, erin]
    singles = make_tasks(project, 4, kind="single", prefix="s")
    twos = make_tasks(project, 1, kind="single", outputs_per_task=2, prefix="s2-")
    pairs = make_tasks(project, 3, kind="pairwise", prefix="pw")
    ranks = make_tasks(project, 2, kind="ranking", prefix="rk")
    gold = make_tasks(project, 1, kind="single", gold=True, prefix="g")
    # A task that has lost its outputs, one with outputs of other sources and model names, prompts
    # with context, code data, formulas and text that is not ASCII.
    bare_prompt = Prompt.objects.create(project=project, external_id="bare", text="No outputs left.")
    bare = Task.objects.create(project=project, prompt=bare_prompt, kind="single")
    Output.objects.filter(tasks=pairs[1]).update(model_name="=cmd|' /C calc'!A0", source="human")
    Output.objects.filter(tasks=ranks[0]).update(text='naïve café ✓\n"quoted", comma')
    Prompt.objects.filter(pk=singles[1].prompt_id).update(context="The post: rent is due Friday.")
    Prompt.objects.filter(pk=singles[2].prompt_id).update(
        text="Add two numbers.",
        data={"tests": "assert add(1, 2) == 3\n", "entry_point": "add", "prompt": "def add(a, b):\n"},
    )
    Prompt.objects.filter(pk=singles[3].prompt_id).update(data={"tests": "   ", "entry_point": "f"})
    Prompt.objects.filter(pk=twos[0].prompt_id).update(data=["not", "a", "dict"], text="+SUM(A1)")
    # An output shown first by position but created last: position, not id, orders outputs.
    late_output = Output.objects.create(prompt=singles[0].prompt, text="Shown first, made last.")
    TaskOutput.objects.filter(task=singles[0]).update(position=5)
    TaskOutput.objects.create(task=singles[0], output=late_output, position=0)

    statuses = ["pending", "accepted", "rejected", "excluded"]
    rounds = [None, 1, 2]
    counter = itertools.count()

    def fields():
        n = next(counter)
        return {
            "status": statuses[(n + n // 12) % 4],  # shifted rater by rater
            "round_number": rounds[n % 3],
            "time_spent_ms": None if n % 5 == 0 else 1000 + n,
            "late": n % 7 == 0,
        }

    for rater in raters:
        for task in (*singles, *twos, gold[0]):
            n = raters.index(rater)
            answers = {
                "quality": ("likert", {"helpful": n + 1, "accurate": 7 - n}),
                "feedback": _feedback(["Too long.", "   ", '=HYPERLINK("x")', "Fine ✓"][n]),
                "fix": _fix(["Fixed by bob.", "", {"not": "text"}, "-1 is wrong\nline two"][n]),
            }
            if n == 3:
                answers["assumptions"] = ("rubric", {"flags": ["off_topic"], "notes": {}})
                del answers["quality"]
            if task is singles[3] and n == 0:
                answers["second_fix"] = _fix("A second fix, written later.")
                answers["second_feedback"] = _feedback("Second feedback.")
            order = output_ids(task)
            display = [order, list(reversed(order)), [], [999_999]][n]
            judge(task, rater, answers, display_order=display, **fields())
        judge(bare, rater, {"fix": _fix("Fix of a bare task."), "feedback": _feedback("Bare.")}, **fields())
        for task in pairs:
            left, right = output_ids(task)
            preferred = [left, right, None, 424242][raters.index(rater)]
            answers = {"preference": ("pairwise", {"preferred": preferred, "strength": "better"})}
            if rater is alice:
                answers["notes"] = _feedback("Left is shorter.")
                answers["fix"] = _fix("A fix on a comparison.")
            judge(task, rater, answers, display_order=[right, left], **fields())
        for task in ranks:
            a, b, c = output_ids(task)
            value = [
                {"ranking": [[c], [a], [b]]},
                {"ranking": [[a, b], [c]]},
                [b, [a, c]],
                {"ranking": [a, 31337, b]},
            ][raters.index(rater)]
            judge(task, rater, {"order": ("ranking", value)}, display_order=[c, b, a], **fields())
    (theirs,) = make_tasks(other_project, 1, prefix="o")
    judge(theirs, dave, {"fix": _fix("Someone else's."), "feedback": _feedback("Theirs.")})
    return project


@pytest.fixture
def qa2(users, django_user_model):
    project = project_create_from_template(name="Assumptions", template="qa2", overlap=2)
    raters = [users["bob"], users["alice"], users["dave"], users["charlie"]]
    singles = make_tasks(project, 3, kind="single", prefix="q")
    gold = make_tasks(project, 1, kind="single", gold=True, prefix="qg")
    pairs = make_tasks(project, 1, kind="pairwise", prefix="qp")
    bare_prompt = Prompt.objects.create(project=project, external_id="qbare", text="Bare question?")
    bare = Task.objects.create(project=project, prompt=bare_prompt, kind="single")
    flag, acceptable, explanation = (
        templates_qa2.ASSUMPTION_FLAG,
        templates_qa2.ACCEPTABLE_QUESTION,
        templates_qa2.EXPLANATION_QUESTION,
    )
    answer_sets = [
        {
            "assumption": ("rubric", {"flags": [flag], "notes": {flag: "Paris is not in Spain."}}),
            acceptable: ("likert", {acceptable: 0}),
            explanation: ("feedback", "It should say Paris is in France."),
        },
        {"assumption": ("rubric", {"flags": [], "notes": {}}), acceptable: ("likert", {acceptable: 1})},
        {"assumption": ("rubric", {"flags": [flag]}), explanation: ("feedback", {"odd": "value"})},
        {"assumption": ("rubric", "not a dict"), acceptable: ("likert", 1)},
    ]
    statuses = ["pending", "accepted", "rejected", "accepted"]
    for n, rater in enumerate(raters):
        for task in (*singles, *gold, *pairs, bare):
            judge(task, rater, answer_sets[n], status=statuses[n], round_number=[None, 1, 1, 2][n])
    return project


def _rows(module, project, kind, statuses, round_number, chunk_size):
    return list(
        module.export_rows(
            project, kind=kind, statuses=statuses, round_number=round_number, chunk_size=chunk_size
        )
    )


def _files(rows, kind):
    jsonl = io.StringIO()
    exporting.write_jsonl(rows, jsonl)
    csv = io.StringIO(newline="")
    exporting.write_csv(rows, csv, kind=kind)
    parquet = io.BytesIO()
    exporting.write_parquet(rows, parquet, kind=kind, batch_size=4)
    streamed = b"".join(exporting.parquet_chunks(rows, kind=kind, batch_size=4))
    table = pq.read_table(io.BytesIO(parquet.getvalue())).to_pylist()
    assert pq.read_table(io.BytesIO(streamed)).to_pylist() == table
    as_json = exporting.JSON_COLUMNS[kind]
    assert table == [
        {**row, **{name: json.dumps(row[name], ensure_ascii=False) for name in as_json}} for row in rows
    ]
    return jsonl.getvalue(), csv.getvalue(), table


@pytest.mark.parametrize("chunk_size", [1, 3, 500])
@pytest.mark.parametrize("kind", ["judgments", "sft", "preference", "refiner"])
def test_every_kind_reads_the_same_rows_as_the_orm(rich, kind, chunk_size):
    filters = ALL_FILTERS if kind == "judgments" else TRAINING_FILTERS
    total = 0
    for statuses, round_number in filters:
        expected = _rows(reference, rich, kind, statuses, round_number, chunk_size)
        got = _rows(exporting, rich, kind, statuses, round_number, chunk_size)
        assert got == expected, (statuses, round_number)
        assert _files(got, kind) == _files(expected, kind)
        total += len(got)
    assert total > 0  # the fixture gives every kind rows to compare


@pytest.mark.parametrize("chunk_size", [1, 500])
def test_qa2_reads_the_same_rows_as_the_orm(qa2, chunk_size):
    for statuses, round_number in [*TRAINING_FILTERS, (["accepted"], 2)]:
        expected = _rows(reference, qa2, "qa2", statuses, round_number, chunk_size)
        got = _rows(exporting, qa2, "qa2", statuses, round_number, chunk_size)
        assert got == expected, (statuses, round_number)
        assert _files(got, "qa2") == _files(expected, "qa2")
    assert _rows(exporting, qa2, "qa2", None, None, 500)


def test_the_fixture_holds_the_shapes_each_kind_meets(rich):
    """The comparison above means something only if the fixture has these."""
    rows = _rows(reference, rich, "judgments", None, None, 500)
    assert any(row["outputs"] == [] for row in rows)  # a task without outputs
    assert any(len(row["outputs"]) == 3 for row in rows)
    refiner = _rows(reference, rich, "refiner", None, None, 500)
    assert {row["kind"] for row in refiner} == {"text", "code"}
    preference = _rows(reference, rich, "preference", None, None, 500)
    assert len(preference) > 10
    assert len(_rows(reference, rich, "sft", None, None, 500)) > 5


def test_an_export_left_half_read_stops_its_readers_and_leaves_the_connection_usable(rich):
    threads = threading.active_count()
    rows = exporting.export_rows(rich, kind="judgments", chunk_size=2)
    first = next(rows)
    rows.close()

    assert threading.active_count() == threads  # no read-ahead thread left behind
    assert Judgment.objects.get(pk=first["judgment_id"]).project_id == rich.pk
    assert len(list(exporting.export_rows(rich, kind="judgments", chunk_size=2))) > 1


VALUES = [
    None,
    True,
    0,
    -12,
    2**70,
    1.5,
    1e100,
    -0.0,
    "",
    'naïve café ✓ \u2028 \x00 \x1f \\ " / \t\n',
    [],
    {},
    {"b": [1, {"a": None}], "a": "=1+1", "ü": [[3], [1, 2]]},
]


@pytest.mark.parametrize("value", VALUES)
def test_json_text_is_json_dumps(value):
    assert exporting.json_text(value) == json.dumps(value, ensure_ascii=False)


@pytest.mark.parametrize(
    "text", [*(json.dumps(value) for value in VALUES), " 1", "1 ", "[1] [2]", "not json", "", "{", "NaN"]
)
def test_json_value_reads_json_text_as_the_json_field_does(text):
    assert repr(exporting.json_value(text)) == repr(JSONField().from_db_value(text, None, None))
