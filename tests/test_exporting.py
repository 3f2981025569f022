"""Exporting judgments: plain rows, SFT and preference data for TRL, JSONL and parquet, streamed."""

import io
import json
import threading

import pyarrow.parquet as pq
import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.http import StreamingHttpResponse
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from annotation import exporting
from annotation.exporting import (
    ExportError,
    export_rows,
    iter_judgment_rows,
    iter_preference_rows,
    iter_refiner_rows,
    iter_sft_rows,
    write_jsonl,
    write_parquet,
)
from annotation.models import Judgment, Prompt
from tests.factories import make_tasks, output_ids
from tests.factories import write_judgment as judge

pytestmark = pytest.mark.django_db


def texts(task) -> list[str]:
    return [shown.output.text for shown in task.task_outputs.order_by("position")]


@pytest.fixture
def singles(project):
    return make_tasks(project, 3, kind="single", prefix="s")


@pytest.fixture
def pair(project):
    return make_tasks(project, 1, kind="pairwise", prefix="pw")[0]


@pytest.fixture
def ranked(project):
    return make_tasks(project, 1, kind="ranking", prefix="rk")[0]


# ------------------------------------------------------------------ SFT


def test_sft_rows_are_the_prompt_and_each_raters_fix(singles, bob, alice):
    judge(singles[0], bob, {"fix": ("fix", "Fixed 0 by bob."), "feedback": ("feedback", "Too long.")})
    judge(singles[0], alice, {"fix": ("fix", "Fixed 0 by alice.")}, status="accepted")
    judge(singles[1], bob, {"feedback": ("feedback", "Fine as it is.")})  # no fix: no row
    judge(singles[2], bob, {"fix": ("fix", "Fixed 2.")})

    assert list(iter_sft_rows(singles[0].project)) == [
        {"prompt": "Summarise post 0.", "completion": "Fixed 0 by bob."},
        {"prompt": "Summarise post 0.", "completion": "Fixed 0 by alice."},
        {"prompt": "Summarise post 2.", "completion": "Fixed 2."},
    ]


def test_sft_prompt_puts_the_context_before_the_prompt_text(singles, bob):
    Prompt.objects.filter(pk=singles[0].prompt_id).update(context="The post: rent is due Friday.")
    judge(singles[0], bob, {"fix": ("fix", "Rent is due Friday.")})

    assert list(iter_sft_rows(singles[0].project)) == [
        {"prompt": "The post: rent is due Friday.\n\nSummarise post 0.", "completion": "Rent is due Friday."}
    ]


# ------------------------------------------------------------------ refiner


def test_refiner_rows_pair_each_fix_with_the_feedback_and_the_output_it_is_about(singles, bob, alice):
    judge(singles[0], bob, {"fix": ("fix", "Fixed 0."), "feedback": ("feedback", "Too long.")})
    judge(singles[1], bob, {"fix": ("fix", "Fixed 1 without feedback.")})  # no feedback: no row
    judge(singles[2], alice, {"feedback": ("feedback", "Fine.")})  # no fix: no row
    judge(
        singles[2], bob, {"fix": ("fix", "Fixed 2."), "feedback": ("feedback", "Say why.")}, status="rejected"
    )

    assert list(iter_refiner_rows(singles[0].project)) == [
        {
            "kind": "text",
            "prompt": "Summarise post 0.",
            "text": "Summarise post 0.",
            "test": "",
            "entry_point": None,
            "output": "Output 0 for post 0.",
            "feedback": "Too long.",
            "refinement": "Fixed 0.",
        }
    ]


def test_refiner_rows_of_a_code_prompt_take_the_code_task_shape(singles, bob):
    data = {"tests": "assert add(1, 2) == 3\n", "entry_point": "add"}
    Prompt.objects.filter(pk=singles[0].prompt_id).update(text="Add two numbers.", data=data)
    judge(
        singles[0],
        bob,
        {"fix": ("fix", "def add(a, b):\n    return a + b\n"), "feedback": ("feedback", "Add.")},
    )

    [row] = export_rows(singles[0].project, kind="refiner")
    assert (row["kind"], row["prompt"], row["text"]) == ("code", "", "Add two numbers.")
    assert (row["test"], row["entry_point"]) == ("assert add(1, 2) == 3\n", "add")


# ------------------------------------------------------------------ preference


def test_pairwise_preferences_become_chosen_and_rejected_and_ties_are_skipped(pair, bob, alice, dave):
    left, right = output_ids(pair)
    left_text, right_text = texts(pair)
    judge(pair, bob, {"preference": ("pairwise", {"preferred": right, "strength": "better"})})
    judge(pair, alice, {"preference": ("pairwise", {"preferred": None, "strength": "about_the_same"})})
    judge(pair, dave, {"preference": ("pairwise", {"preferred": left, "strength": "much_better"})})

    assert list(iter_preference_rows(pair.project)) == [
        {"prompt": "Summarise post 0.", "chosen": right_text, "rejected": left_text},
        {"prompt": "Summarise post 0.", "chosen": left_text, "rejected": right_text},
    ]


def test_a_ranking_gives_every_pair_of_outputs_in_different_rank_groups(ranked, bob, alice):
    a, b, c = output_ids(ranked)
    text = dict(zip([a, b, c], texts(ranked), strict=True))
    judge(ranked, bob, {"order": ("ranking", {"ranking": [[c], [a], [b]]})})
    judge(ranked, alice, {"order": ("ranking", {"ranking": [[a, b], [c]]})})  # a tie between a and b

    rows = list(iter_preference_rows(ranked.project))

    pairs = [(row["chosen"], row["rejected"]) for row in rows]
    assert pairs == [
        (text[c], text[a]),
        (text[c], text[b]),
        (text[a], text[b]),
        (text[a], text[c]),
        (text[b], text[c]),
    ]
    assert {row["prompt"] for row in rows} == {"Summarise post 0."}


# ------------------------------------------------------------------ curation: what goes into training


def test_a_rejected_judgment_disappears_from_the_training_exports(singles, pair, bob):
    fix = judge(singles[0], bob, {"fix": ("fix", "Better.")})
    comparison = judge(
        pair, bob, {"preference": ("pairwise", {"preferred": output_ids(pair)[0], "strength": "better"})}
    )
    project = singles[0].project
    assert len(list(iter_sft_rows(project))) == 1
    assert len(list(iter_preference_rows(project))) == 1

    Judgment.objects.filter(pk=fix.pk).update(status=Judgment.Status.REJECTED)
    Judgment.objects.filter(pk=comparison.pk).update(status=Judgment.Status.EXCLUDED)

    assert list(iter_sft_rows(project)) == []
    assert list(iter_preference_rows(project)) == []
    # The plain judgments export still has both, with their status.
    assert [row["status"] for row in iter_judgment_rows(project)] == ["rejected", "excluded"]


@pytest.mark.parametrize("kind", ["sft", "preference"])
@pytest.mark.parametrize("status", ["rejected", "excluded"])
def test_training_exports_refuse_rejected_or_excluded_judgments(project, kind, status):
    with pytest.raises(ExportError, match="training data"):
        export_rows(project, kind=kind, statuses=[status])


def test_training_exports_can_be_limited_to_accepted_judgments_and_one_round(singles, bob):
    judge(singles[0], bob, {"fix": ("fix", "Pending, round 1.")}, round_number=1)
    judge(singles[1], bob, {"fix": ("fix", "Accepted, round 1.")}, status="accepted", round_number=1)
    judge(singles[2], bob, {"fix": ("fix", "Accepted, round 2.")}, status="accepted", round_number=2)
    project = singles[0].project

    rows = export_rows(project, kind="sft", statuses=["accepted"], round_number=1)

    assert [row["completion"] for row in rows] == ["Accepted, round 1."]


# ------------------------------------------------------------------ plain judgments


def test_judgment_rows_carry_outputs_in_display_order_and_answers_by_question(pair, singles, bob, alice):
    left, right = output_ids(pair)
    comparison = judge(
        pair,
        bob,
        {
            "preference": ("pairwise", {"preferred": left, "strength": "slightly_better"}),
            "notes": ("feedback", "Left is shorter."),
        },
        display_order=[right, left],
        time_spent_ms=4200,
        late=True,
        round_number=3,
    )
    judge(singles[0], alice, {"quality": ("likert", {"helpful": 5, "accurate": 6})}, status="accepted")

    rows = list(iter_judgment_rows(pair.project))

    assert len(rows) == 2
    row = rows[0]
    assert row == {
        "judgment_id": comparison.pk,
        "task_id": pair.pk,
        "task_kind": "pairwise",
        "prompt_external_id": "pw0",
        "prompt_text": "Summarise post 0.",
        "outputs": [
            {"id": right, "text": "Output 1 for post 0.", "model_name": "", "source": "model"},
            {"id": left, "text": "Output 0 for post 0.", "model_name": "", "source": "model"},
        ],
        "rater": "bob",
        "answers": {
            "preference": {"preferred": left, "strength": "slightly_better"},
            "notes": "Left is shorter.",
        },
        "time_spent_ms": 4200,
        "late": True,
        "status": "pending",
        "round": 3,
        "created_at": comparison.created_at.isoformat(),
    }
    assert [r["rater"] for r in iter_judgment_rows(pair.project, statuses=["accepted"])] == ["alice"]
    assert [r["judgment_id"] for r in iter_judgment_rows(pair.project, round_number=3)] == [comparison.pk]


def test_judgments_of_other_projects_are_not_exported(project, other_project, singles, dave, bob):
    (theirs,) = make_tasks(other_project, 1, prefix="o")
    judge(theirs, dave, {"fix": ("fix", "Someone else's.")})
    judge(singles[0], bob, {"fix": ("fix", "Ours.")})

    assert [row["completion"] for row in iter_sft_rows(project)] == ["Ours."]
    assert [row["rater"] for row in iter_judgment_rows(project)] == ["bob"]


@pytest.mark.parametrize("kind", ["judgments", "sft", "preference", "refiner"])
def test_an_export_reads_a_fixed_number_of_queries_however_many_judgments(project, bob, alice, kind):
    """Judgments, answers and outputs each come from one ordered query, read chunk by chunk through
    a cursor: no query per judgment or per chunk, and so no model instances or prefetches."""

    def queries(n):
        for task in make_tasks(project, n, kind="pairwise", prefix=f"c{n}-"):
            left = output_ids(task)[0]
            for rater in (bob, alice):
                judge(
                    task,
                    rater,
                    {
                        "fix": ("fix", f"Fix {task.pk}"),
                        "feedback": ("feedback", "Shorter."),
                        "preference": ("pairwise", {"preferred": left, "strength": "better"}),
                    },
                )
        with CaptureQueriesContext(connection) as context:
            rows = list(export_rows(project, kind=kind, chunk_size=2))
        return len(rows), len(context.captured_queries)

    few_rows, few_queries = queries(2)
    many_rows, many_queries = queries(10)

    assert many_rows == 6 * few_rows > 0
    assert many_queries == few_queries <= 6


# ------------------------------------------------------------------ writers


def test_jsonl_and_parquet_hold_the_same_rows(tmp_path, pair, singles, bob):
    judge(pair, bob, {"preference": ("pairwise", {"preferred": output_ids(pair)[1], "strength": "better"})})
    judge(singles[0], bob, {"fix": ("fix", "Fixed: naïve café ✓"), "quality": ("likert", {"helpful": 2})})
    project = pair.project
    rows = list(iter_judgment_rows(project))

    stream = io.StringIO()
    assert write_jsonl(iter_judgment_rows(project), stream) == 2
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == rows

    target = tmp_path / "judgments.parquet"
    assert write_parquet(iter_judgment_rows(project), target, kind="judgments") == 2
    table = pq.read_table(target).to_pylist()
    assert [{**row, "answers": json.loads(row["answers"])} for row in table] == rows


@pytest.mark.parametrize(
    "kind,columns",
    [
        ("sft", ["prompt", "completion"]),
        ("preference", ["prompt", "chosen", "rejected"]),
        (
            "judgments",
            [
                "judgment_id",
                "task_id",
                "task_kind",
                "prompt_external_id",
                "prompt_text",
                "outputs",
                "rater",
                "answers",
                "time_spent_ms",
                "late",
                "status",
                "round",
                "created_at",
            ],
        ),
    ],
)
def test_an_empty_parquet_export_still_has_the_kinds_columns(tmp_path, kind, columns):
    target = tmp_path / f"{kind}.parquet"
    assert write_parquet(iter([]), target, kind=kind) == 0
    table = pq.read_table(target)
    assert table.num_rows == 0 and table.column_names == columns


def test_parquet_is_written_a_batch_at_a_time(tmp_path):
    rows = ({"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5))
    target = tmp_path / "sft.parquet"

    assert write_parquet(rows, target, kind="sft", batch_size=2) == 5

    parquet = pq.ParquetFile(target)
    assert parquet.metadata.num_rows == 5
    assert parquet.metadata.num_row_groups == 3  # 2 + 2 + 1: each batch flushed as it came


# ------------------------------------------------------------------ management command


def test_command_writes_sft_jsonl_to_standard_output(singles, bob):
    judge(singles[0], bob, {"fix": ("fix", "Fixed.")})
    out, err = io.StringIO(), io.StringIO()

    call_command("export_judgments", "Summaries", "--kind", "sft", stdout=out, stderr=err)

    assert [json.loads(line) for line in out.getvalue().splitlines()] == [
        {"prompt": "Summarise post 0.", "completion": "Fixed."}
    ]
    assert "Wrote 1 sft rows" in err.getvalue()


def test_command_writes_preference_parquet_to_a_file(tmp_path, pair, bob):
    left, _ = output_ids(pair)
    judge(pair, bob, {"preference": ("pairwise", {"preferred": left, "strength": "better"})})
    target = tmp_path / "prefs.parquet"

    call_command(
        "export_judgments",
        str(pair.project.pk),
        "--kind",
        "preference",
        "--format",
        "parquet",
        "--output",
        str(target),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )

    assert pq.read_table(target).to_pylist() == [
        {"prompt": "Summarise post 0.", "chosen": "Output 0 for post 0.", "rejected": "Output 1 for post 0."}
    ]
    assert not (tmp_path / "prefs.parquet.partial").exists()


def test_command_filters_judgments_by_status_and_round(tmp_path, singles, bob):
    judge(singles[0], bob, {}, status="accepted", round_number=1)
    judge(singles[1], bob, {}, status="rejected", round_number=1)
    judge(singles[2], bob, {}, status="rejected", round_number=2)
    target = tmp_path / "j.jsonl"

    call_command(
        "export_judgments",
        "Summaries",
        "--status",
        "accepted,rejected",
        "--round",
        "1",
        "-o",
        str(target),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )

    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert [(row["status"], row["round"]) for row in lines] == [("accepted", 1), ("rejected", 1)]


@pytest.mark.parametrize(
    "args,message",
    [
        (["Summaries", "--format", "parquet"], "--format parquet needs --output FILE"),
        (["Summaries", "--kind", "sft", "--status", "rejected"], "training data"),
        (["Summaries", "--status", "maybe"], "status must be among"),
        (["Nope"], "no project with id or name 'Nope'"),
    ],
)
def test_command_explains_bad_arguments(project, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("export_judgments", *args, stdout=io.StringIO(), stderr=io.StringIO())


# ------------------------------------------------------------------ API


def url(project) -> str:
    return f"/api/v1/projects/{project.pk}/export/"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def test_jsonl_export_is_streamed_as_an_attachment(singles, alice, bob):
    judge(singles[0], bob, {"fix": ("fix", "Fixed.")})
    judge(singles[1], bob, {"fix": ("fix", "Fixed again.")})

    response = client_for(alice).get(url(singles[0].project), {"kind": "sft", "format": "jsonl"})

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"] == 'attachment; filename="summaries-sft.jsonl"'
    chunks = iter(response.streaming_content)
    first = next(chunks)  # one line at a time, as the rows are read
    assert json.loads(first) == {"prompt": "Summarise post 0.", "completion": "Fixed."}
    assert [json.loads(line) for line in b"".join(chunks).splitlines()] == [
        {"prompt": "Summarise post 1.", "completion": "Fixed again."}
    ]


def test_parquet_export_is_streamed_and_reads_back_whole(pair, alice, bob):
    judge(pair, bob, {"preference": ("pairwise", {"preferred": output_ids(pair)[1], "strength": "better"})})

    response = client_for(alice).get(
        url(pair.project), {"kind": "preference", "format": "parquet", "round": 0}
    )

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    assert response["Content-Disposition"] == 'attachment; filename="summaries-preference-round0.parquet"'
    empty = pq.read_table(io.BytesIO(b"".join(response.streaming_content)))  # round 0 has none
    assert empty.num_rows == 0 and empty.column_names == ["prompt", "chosen", "rejected"]

    response = client_for(alice).get(url(pair.project), {"kind": "preference", "format": "parquet"})
    assert isinstance(response, StreamingHttpResponse)
    assert pq.read_table(io.BytesIO(b"".join(response.streaming_content))).to_pylist() == [
        {"prompt": "Summarise post 0.", "chosen": "Output 1 for post 0.", "rejected": "Output 0 for post 0."}
    ]


def test_parquet_download_sends_its_first_bytes_before_the_last_row_is_read(project, alice, bob, monkeypatch):
    tasks = make_tasks(project, 7, prefix="st")
    for task in tasks:
        judge(task, bob, {"fix": ("fix", f"Fixed {task.prompt.external_id}.")})
    read = []
    export_rows = exporting.export_rows

    def counted(*args, **kwargs):
        for row in export_rows(*args, **kwargs):
            read.append(row)
            yield row

    monkeypatch.setattr(exporting, "export_rows", counted)
    monkeypatch.setattr(exporting, "PARQUET_BATCH_ROWS", 2)

    response = client_for(alice).get(url(project), {"kind": "sft", "format": "parquet"})
    chunks = iter(response.streaming_content)
    first = next(chunks)

    assert first.startswith(b"PAR1")  # the file's opening magic and its first row group
    assert len(read) == 2  # one row group's rows read, the other five not yet
    body = first + b"".join(chunks)
    assert len(read) == 7
    parquet = pq.ParquetFile(io.BytesIO(body))
    assert parquet.metadata.num_row_groups == 4  # 2 + 2 + 2 + 1
    assert parquet.read().to_pylist() == [
        {"prompt": f"Summarise post {i}.", "completion": f"Fixed st{i}."} for i in range(7)
    ]


def test_judgments_export_is_the_default(singles, alice, bob):
    judge(singles[0], bob, {"feedback": ("feedback", "Good.")}, status="rejected")

    response = client_for(alice).get(url(singles[0].project), {"status": "rejected"})

    rows = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    assert [(row["rater"], row["answers"]) for row in rows] == [("bob", {"feedback": "Good."})]


@pytest.mark.parametrize(
    "query,field",
    [
        ({"kind": "everything"}, "kind"),
        ({"format": "xml"}, "format"),
        ({"kind": "sft", "status": "rejected"}, "status"),
        ({"kind": "qa2"}, "kind"),
    ],
)
def test_bad_export_parameters_are_400(project, alice, query, field):
    response = client_for(alice).get(url(project), query)
    assert response.status_code == 400
    assert response.json()["field"] == field


def test_rater_cannot_export(project, bob):
    assert client_for(bob).get(url(project)).status_code == 403


@pytest.mark.parametrize("name", ["charlie", "dave"])
def test_people_without_access_to_the_project_get_404(project, other_project, users, name):
    assert client_for(users[name]).get(url(project), {"format": "parquet"}).status_code == 404


def test_export_view_is_in_the_openapi_schema():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/v1/projects/{project_id}/export/"]["get"]
    assert {"kind", "format", "round", "status"} <= {p["name"] for p in operation["parameters"]}
    assert set(operation["responses"]["200"]["content"]) == {
        "application/x-ndjson",
        "text/csv",
        "application/vnd.apache.parquet",
    }


# ------------------------------------------------------------------ CSV for spreadsheets

FORMULAS = ['=HYPERLINK("http://evil","x")', "+1+1", "-2+3", "@SUM(A1)", "\tindent", "\rreturn"]


@pytest.fixture
def formula_judgments(project, bob):
    tasks = make_tasks(project, len(FORMULAS), prefix="f")
    for task, formula in zip(tasks, FORMULAS, strict=True):
        Prompt.objects.filter(pk=task.prompt_id).update(text=formula)
        judge(task, bob, {"fix": ("fix", formula), "feedback": ("feedback", "plain text")})
    return project


def _csv_rows(text: str) -> list[dict]:
    import csv

    return list(csv.DictReader(io.StringIO(text, newline="")))


def test_csv_export_escapes_formula_cells_and_keeps_other_text(formula_judgments):
    from annotation.exporting import write_csv

    out = io.StringIO(newline="")
    assert write_csv(export_rows(formula_judgments, kind="judgments"), out, kind="judgments") == 6
    rows = _csv_rows(out.getvalue())
    assert [row["prompt_text"] for row in rows] == ["'" + formula for formula in FORMULAS]
    assert json.loads(rows[0]["answers"]) == {"fix": FORMULAS[0], "feedback": "plain text"}
    assert rows[0]["rater"] == "bob" and rows[0]["status"] == "pending"

    out = io.StringIO(newline="")
    write_csv(export_rows(formula_judgments, kind="sft"), out, kind="sft")
    assert [row["completion"] for row in _csv_rows(out.getvalue())] == ["'" + f for f in FORMULAS]


def test_jsonl_keeps_formula_text_verbatim(formula_judgments):
    out = io.StringIO()
    write_jsonl(export_rows(formula_judgments, kind="sft"), out)
    assert [json.loads(line)["completion"] for line in out.getvalue().splitlines()] == FORMULAS


def test_csv_export_over_the_api_command_and_dashboard(formula_judgments, alice, tmp_path):
    client = APIClient()
    client.force_authenticate(alice)
    response = client.get(f"/api/v1/projects/{formula_judgments.pk}/export/?format=csv&kind=sft")
    assert response.status_code == 200 and response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].endswith('-sft.csv"')
    body = b"".join(response.streaming_content).decode()
    assert [row["prompt"] for row in _csv_rows(body)] == ["'" + f for f in FORMULAS]

    target = tmp_path / "judgments.csv"
    call_command("export_judgments", "Summaries", "--format", "csv", "-o", str(target), stderr=io.StringIO())
    assert _csv_rows(target.open(newline="").read())[2]["prompt_text"] == "'-2+3"
    out = io.StringIO()
    call_command("export_judgments", "Summaries", "--format", "csv", stdout=out, stderr=io.StringIO())
    assert _csv_rows(out.getvalue())[3]["prompt_text"] == "'@SUM(A1)"

    from django.test import Client

    browser = Client()
    browser.force_login(alice)
    page = browser.get(f"/projects/{formula_judgments.pk}/dashboard/").content.decode()
    assert f"/projects/{formula_judgments.pk}/exports/judgments.csv" in page
    download = browser.get(f"/projects/{formula_judgments.pk}/exports/judgments.csv")
    assert download.status_code == 200
    assert _csv_rows(b"".join(download.streaming_content).decode())[0]["prompt_text"].startswith("'=")


@pytest.mark.django_db(transaction=True)
def test_an_export_under_way_does_not_hold_raters_writes_back(singles, bob, alice):
    """An export reads one snapshot for its whole run; a rater's submission meanwhile must not
    wait for it (on SQLite: the export's transaction must not take the write lock)."""
    for task in singles:
        judge(task, bob, {"fix": ("fix", f"Fixed {task.pk}.")})
    rows = iter_judgment_rows(singles[0].project, chunk_size=1)
    first = next(rows)  # the export is under way: its snapshot is open

    def write() -> None:
        from django.db import connection as own

        with own.cursor() as cursor:
            # Fail fast instead of waiting for a lock (SQLite's timeout is otherwise 20 s).
            cursor.execute(
                "PRAGMA busy_timeout = 200" if own.vendor == "sqlite" else "SET lock_timeout = 200"
            )
        try:
            judge(singles[1], alice, {"fix": ("fix", "Written during the export.")})
        finally:
            own.close()

    errors = []
    thread = threading.Thread(target=lambda: _capture(write, errors))
    thread.start()
    thread.join()
    assert errors == []
    # The export still reads its own snapshot: the judgment written meanwhile is not in it.
    assert [first["judgment_id"], *(row["judgment_id"] for row in rows)] == sorted(
        Judgment.objects.filter(rater=bob).values_list("id", flat=True)
    )
    assert Judgment.objects.filter(rater=alice).count() == 1


def _capture(function, errors: list) -> None:
    try:
        function()
    except Exception as error:  # reported by the test's thread
        errors.append(error)
