"""Importing prompts: JSONL and CSV, field mappings, and all or nothing (a bad line writes nothing)."""

import io
import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from annotation.importing import ImportFileError, parse_prompt_file
from annotation.models import Output, Prompt, Task, TaskOutput
from annotation.services.prompts import prompts_import
from tests.factories import make_tasks

pytestmark = pytest.mark.django_db


def jsonl(*records) -> io.BytesIO:
    lines = [record if isinstance(record, str) else json.dumps(record) for record in records]
    return io.BytesIO(("\n".join(lines) + "\n").encode("utf-8"))


def written() -> dict:
    return {
        "prompts": Prompt.objects.count(),
        "outputs": Output.objects.count(),
        "tasks": Task.objects.count(),
        "task_outputs": TaskOutput.objects.count(),
    }


def import_file(project, source, **options):
    tasks = options.pop("tasks", None)
    return prompts_import(project=project, rows=parse_prompt_file(source, **options), make_tasks=tasks)


GOOD = [
    {"external_id": "p1", "text": "Summarise this.", "context": "A long post.", "split": "eval"},
    {"external_id": 2, "text": "Write a function.", "data": {"tests": "assert f() == 1", "entry_point": "f"}},
    {"external_id": "p3", "text": "Say hi.", "gold": ["hi"], "outputs": ["Hi!"]},
    {
        "external_id": "p4",
        "text": "Explain tides.",
        "model_name": "gpt2",
        "outputs": [
            "The moon pulls.",
            {
                "text": "Gravity.",
                "model_name": "llama",
                "adapter": "round-1",
                "source": "refinement",
                "generation": {"temperature": 0.7},
            },
        ],
    },
]


# ------------------------------------------------------------------ good files


def test_jsonl_import_writes_prompts_outputs_and_one_task_per_output(project):
    result = import_file(project, jsonl(*GOOD))

    assert (result.prompts, result.outputs, result.tasks) == (4, 3, 3)
    p1, p2, p3, p4 = Prompt.objects.filter(project=project).order_by("id")
    assert (p1.external_id, p1.context, p1.split) == ("p1", "A long post.", "eval")
    assert (p2.external_id, p2.split, p2.data) == (
        "2",
        "train",
        {"tests": "assert f() == 1", "entry_point": "f"},
    )
    assert p3.gold == ["hi"] and p1.gold is None
    first, second = p4.outputs.order_by("id")
    assert (first.text, first.model_name, first.source) == ("The moon pulls.", "gpt2", "model")
    assert (second.model_name, second.adapter, second.source) == ("llama", "round-1", "refinement")
    assert second.generation == {"temperature": 0.7}
    tasks = Task.objects.filter(project=project, prompt=p4).order_by("id")
    assert [task.kind for task in tasks] == ["single", "single"]
    assert [list(task.outputs.all()) for task in tasks] == [[first], [second]]
    assert not Task.objects.filter(prompt__in=[p1, p2]).exists()


def test_mbpp_and_humaneval_code_tasks_in_data_keep_their_tests_under_tests(project):
    mbpp = {"test_list": ["assert f(1) == 2"], "test_setup_code": "import math", "code": "def f(x): ..."}
    humaneval = {"prompt": "def g(x):\n", "test": "def check(candidate):\n    pass\n", "entry_point": "g"}
    import_file(
        project,
        jsonl(
            {"external_id": "mbpp/1", "text": "Add one.", "data": mbpp},
            {"external_id": "HumanEval/0", "text": "Return g.", "data": humaneval},
        ),
    )
    first, second = Prompt.objects.filter(project=project).order_by("id")
    assert first.data == {**mbpp, "tests": "import math\nassert f(1) == 2\n"}
    assert second.data == {**humaneval, "tests": humaneval["test"]}


def test_csv_import_with_mapping_reads_the_files_own_column_names(project):
    content = (
        "\ufeffid,post,instruction,summary,model,meta,set\r\n"
        'a1,"A post\nover two lines",Summarise it.,A summary.,gpt2,"{""tests"": ""t""}",test\r\n'
        "a2,,Just a prompt.,,,,\r\n"
    )
    mapping = {
        "external_id": "id",
        "context": "post",
        "text": "instruction",
        "output": "summary",
        "model_name": "model",
        "data": "meta",
        "split": "set",
    }

    result = import_file(project, io.BytesIO(content.encode("utf-8")), fmt="csv", mapping=mapping)

    assert (result.prompts, result.outputs, result.tasks) == (2, 1, 1)
    a1, a2 = Prompt.objects.filter(project=project).order_by("id")
    assert (a1.external_id, a1.context, a1.text) == ("a1", "A post\nover two lines", "Summarise it.")
    assert (a1.data, a1.split) == ({"tests": "t"}, "test")
    assert [(o.text, o.model_name) for o in a1.outputs.all()] == [("A summary.", "gpt2")]
    assert (a2.text, a2.context, a2.split, a2.data) == ("Just a prompt.", "", "train", {})
    assert not a2.outputs.exists()


def test_format_is_guessed_from_the_extension_then_the_content(tmp_path, project):
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("external_id,text\nc1,From CSV.\n", encoding="utf-8")
    jsonl_file = tmp_path / "prompts.data"
    jsonl_file.write_text('{"external_id": "j1", "text": "From JSONL."}\n', encoding="utf-8")

    assert [row.text for row in parse_prompt_file(csv_file)] == ["From CSV."]
    assert [row.text for row in parse_prompt_file(str(jsonl_file))] == ["From JSONL."]
    assert [row.text for row in parse_prompt_file(io.StringIO("external_id,text\nx,Text stream.\n"))] == [
        "Text stream."
    ]


def test_pairwise_import_makes_one_task_per_prompt_over_both_outputs(project):
    result = import_file(
        project,
        jsonl({"external_id": "q1", "text": "Q?", "outputs": ["left", "right"]}),
        tasks="pairwise",
    )

    assert (result.prompts, result.outputs, result.tasks) == (1, 2, 1)
    task = Task.objects.get(project=project)
    assert task.kind == "pairwise"
    shown = TaskOutput.objects.filter(task=task).order_by("position")
    assert [(t.position, t.output.text) for t in shown] == [(0, "left"), (1, "right")]


def test_ranking_import_makes_one_task_per_prompt_over_all_outputs(project):
    result = import_file(
        project,
        jsonl(
            {"external_id": "r1", "text": "Q1?", "outputs": ["a", "b", "c"]},
            {"external_id": "r2", "text": "Q2?", "outputs": ["d", "e"]},
        ),
        tasks="ranking",
    )

    assert (result.prompts, result.outputs, result.tasks) == (2, 5, 2)
    counts = sorted(task.outputs.count() for task in Task.objects.filter(project=project, kind="ranking"))
    assert counts == [2, 3]


def test_tasks_none_writes_outputs_without_tasks(project):
    result = import_file(project, jsonl({"external_id": "n1", "text": "Q?", "outputs": ["a"]}), tasks="none")
    assert (result.prompts, result.outputs, result.tasks) == (1, 1, 0)


def test_same_external_id_in_another_project_is_fine(project, other_project):
    make_tasks(other_project, 1, prefix="p")  # other_project has p0
    result = import_file(project, jsonl({"external_id": "p0", "text": "Mine too."}))
    assert result.prompts == 1


def test_large_import_is_written_with_a_bounded_number_of_queries(project, django_assert_max_num_queries):
    records = [
        {"external_id": f"big{i}", "text": f"Prompt {i}", "outputs": [f"Output {i}"]} for i in range(3000)
    ]
    rows = parse_prompt_file(jsonl(*records))

    # 12,000 rows in four tables; inserted in batches (smaller on SQLite, which caps query parameters).
    with django_assert_max_num_queries(200):
        result = prompts_import(project=project, rows=rows)

    assert (result.prompts, result.outputs, result.tasks) == (3000, 3000, 3000)
    assert TaskOutput.objects.filter(task__project=project).count() == 3000


# ------------------------------------------------------------------ bad files: the line, and nothing written


BAD_THIRD_LINE = {
    "missing text": ({"external_id": "x"}, "line 3: 'text' is missing"),
    "empty text": ({"external_id": "x", "text": "   "}, "line 3: 'text' is empty"),
    "missing external id": ({"text": "T"}, "line 3: 'external_id' is missing"),
    "external id too long": (
        {"external_id": "x" * 201, "text": "T"},
        "line 3: 'external_id' must be at most 200",
    ),
    "bad split": ({"external_id": "x", "text": "T", "split": "dev"}, "line 3: 'split' must be one of train"),
    "bad JSON": ('{"external_id": "x", "text": ', "line 3: is not valid JSON"),
    "not an object": ('["x", "T"]', "line 3: must be a JSON object, not a list"),
    "data not an object": (
        {"external_id": "x", "text": "T", "data": "tests"},
        "line 3: 'data' must be an object",
    ),
    "duplicate external id": (
        {"external_id": "ok1", "text": "T"},
        "line 3: external_id 'ok1' is already used on line 1",
    ),
    "bad output source": (
        {"external_id": "x", "text": "T", "outputs": [{"text": "o", "source": "robot"}]},
        "line 3: 'outputs'[0].source must be one of model",
    ),
    "unknown output key": (
        {"external_id": "x", "text": "T", "outputs": [{"txt": "o"}]},
        "line 3: 'outputs'[0] has an unknown key 'txt'",
    ),
}


@pytest.mark.parametrize("bad,expected", BAD_THIRD_LINE.values(), ids=BAD_THIRD_LINE.keys())
def test_one_bad_line_rejects_the_file_naming_the_line_and_writes_nothing(project, bad, expected):
    before = written()
    source = jsonl(
        {"external_id": "ok1", "text": "Fine.", "outputs": ["o"]},
        {"external_id": "ok2", "text": "Fine too."},
        bad,
        {"external_id": "ok4", "text": "Never read."},
    )

    with pytest.raises(ImportFileError) as caught:
        import_file(project, source)

    assert caught.value.line == 3
    assert str(caught.value).startswith(expected)
    assert written() == before


def test_external_id_already_in_the_project_rejects_the_file(project):
    make_tasks(project, 2, prefix="p")  # p0, p1
    before = written()

    with pytest.raises(ImportFileError) as caught:
        import_file(project, jsonl({"external_id": "new", "text": "A"}, {"external_id": "p1", "text": "B"}))

    assert caught.value.line == 2
    assert str(caught.value) == "line 2: external_id 'p1' is already in project 'Summaries'"
    assert written() == before


def test_pairwise_tasks_need_exactly_two_outputs_per_prompt(project):
    before = written()
    source = jsonl(
        {"external_id": "q1", "text": "Q?", "outputs": ["a", "b"]},
        {"external_id": "q2", "text": "Q?", "outputs": ["a", "b", "c"]},
    )

    with pytest.raises(ImportFileError, match=r"^line 2: pairwise tasks need exactly 2 outputs"):
        import_file(project, source, tasks="pairwise")
    assert written() == before


def test_csv_mapping_naming_a_column_not_in_the_header_is_rejected(project):
    source = io.BytesIO(b"id,body\n1,Text\n")

    with pytest.raises(ImportFileError) as caught:
        parse_prompt_file(source, fmt="csv", mapping={"external_id": "id", "text": "bodyy"})

    assert caught.value.line == 1 and caught.value.field == "mapping"
    assert "'bodyy', which is not in the header (columns: id, body)" in str(caught.value)


def test_jsonl_mapping_naming_a_field_no_line_has_is_rejected(project):
    source = jsonl({"id": "1", "text": "T", "ctx": "C"})

    with pytest.raises(ImportFileError, match="the mapping names 'contxt', which no line has") as caught:
        parse_prompt_file(source, mapping={"external_id": "id", "context": "contxt"})
    assert caught.value.field == "mapping"


def test_mapping_to_an_unknown_field_is_rejected():
    with pytest.raises(ImportFileError, match="the mapping names 'body', which is not a field"):
        parse_prompt_file(jsonl({"external_id": "1", "text": "T"}), mapping={"body": "text"})


def test_csv_line_numbers_count_physical_lines(project):
    content = 'external_id,text\nc1,"two\nlines"\nc2,\n'

    with pytest.raises(ImportFileError, match=r"^line 4: 'text' is missing"):
        parse_prompt_file(io.BytesIO(content.encode()), fmt="csv")


def test_csv_line_with_the_wrong_number_of_columns_is_rejected():
    with pytest.raises(ImportFileError, match=r"^line 3: has 3 columns, the header has 2"):
        parse_prompt_file(io.BytesIO(b"external_id,text\nc1,A\nc2,B,extra\n"), fmt="csv")


def test_non_utf8_file_is_rejected_with_its_line(project):
    source = io.BytesIO(b'{"external_id": "1", "text": "ok"}\n{"external_id": "2", "text": "caf\xe9"}\n')

    with pytest.raises(ImportFileError, match=r"^line 2: is not valid UTF-8 \(byte 0xe9") as caught:
        parse_prompt_file(source)
    assert caught.value.line == 2


def test_empty_file_is_rejected():
    with pytest.raises(ImportFileError, match="there are no prompts to import"):
        parse_prompt_file(io.BytesIO(b"\n\n"), fmt="jsonl")


def test_a_failure_while_writing_rolls_everything_back(project, monkeypatch):
    before = written()
    rows = parse_prompt_file(jsonl(*GOOD))

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    # Prompts and outputs are already inserted when the task outputs fail.
    monkeypatch.setattr(TaskOutput.objects, "bulk_create", fail)
    with pytest.raises(RuntimeError):
        prompts_import(project=project, rows=rows)
    assert written() == before


# ------------------------------------------------------------------ management command


def test_command_imports_a_file_by_project_name_and_prints_counts(tmp_path, project):
    path = tmp_path / "prompts.csv"
    path.write_text("id,question,answer\nk1,Why?,Because.\nk2,How?,Like so.\n", encoding="utf-8")
    out = io.StringIO()

    call_command(
        "import_prompts",
        "Summaries",
        str(path),
        "--map",
        "external_id=id",
        "--map",
        "text=question",
        "--map",
        "output=answer",
        stdout=out,
    )

    assert "Imported 2 prompts, 2 outputs and 2 tasks into project 'Summaries'." in out.getvalue()
    assert list(Prompt.objects.filter(project=project).values_list("text", flat=True)) == ["Why?", "How?"]


def test_command_takes_the_project_id_and_a_task_mode(tmp_path, project):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"external_id": "x", "text": "Q", "outputs": ["a", "b"]}) + "\n", encoding="utf-8"
    )

    call_command("import_prompts", str(project.pk), str(path), "--tasks", "pairwise", stdout=io.StringIO())

    assert Task.objects.get(project=project).kind == "pairwise"


def test_command_fails_on_a_bad_line_and_writes_nothing(tmp_path, project):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"external_id": "1", "text": "ok"}\n{"external_id": "2"}\n', encoding="utf-8")
    before = written()

    with pytest.raises(CommandError, match=r"line 2: 'text' is missing\. Nothing was imported\.") as caught:
        call_command("import_prompts", "Summaries", str(path), stdout=io.StringIO())

    assert caught.value.returncode != 0
    assert written() == before


@pytest.mark.parametrize(
    "args,message",
    [
        (["Nope", "f.jsonl"], "no project with id or name 'Nope'"),
        (["Summaries", "missing.jsonl"], "missing.jsonl: no such file"),
        (["Summaries", "f.jsonl", "--map", "text"], "write it as OURS=THEIRS"),
    ],
)
def test_command_explains_bad_arguments(project, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("import_prompts", *args, stdout=io.StringIO())


# ------------------------------------------------------------------ API


def url(project) -> str:
    return f"/api/v1/projects/{project.pk}/import/"


def client_for(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def upload(content: bytes, name="prompts.jsonl") -> SimpleUploadedFile:
    return SimpleUploadedFile(name, content, content_type="application/octet-stream")


def test_curator_uploads_a_file_with_a_mapping(project, alice):
    content = b"id,prompt,completion\nu1,Q1,A1\nu2,Q2,A2\n"
    data = {
        "file": upload(content, "prompts.csv"),
        "mapping": json.dumps({"external_id": "id", "text": "prompt", "output": "completion"}),
        "tasks": "single",
    }

    response = client_for(alice).post(url(project), data, format="multipart")

    assert response.status_code == 201, response.data
    assert response.data == {"prompts": 2, "outputs": 2, "tasks": 2}
    assert Prompt.objects.filter(project=project, external_id="u2", text="Q2").exists()


def test_curator_sends_rows_as_json(project, alice):
    body = {
        "rows": [{"id": "j1", "text": "Q", "outputs": ["a", "b"]}],
        "mapping": {"external_id": "id"},
        "tasks": "pairwise",
    }

    response = client_for(alice).post(url(project), body, format="json")

    assert response.status_code == 201, response.data
    assert response.data == {"prompts": 1, "outputs": 2, "tasks": 1}


def test_upload_with_a_bad_line_is_400_naming_the_line_and_writes_nothing(project, alice):
    content = (
        b'{"external_id": "1", "text": "ok"}\n{"external_id": "2", "text": "ok"}\n{"external_id": "3"}\n'
    )
    before = written()

    response = client_for(alice).post(url(project), {"file": upload(content)}, format="multipart")

    assert response.status_code == 400
    assert response.json() == {
        "detail": "line 3: 'text' is missing",
        "code": "invalid",
        "field": "file",
        "line": 3,
    }
    assert written() == before


def test_json_rows_with_a_bad_row_are_400_naming_the_row(project, alice):
    body = {"rows": [{"external_id": "1", "text": "ok"}, {"external_id": "1", "text": "again"}]}
    before = written()

    response = client_for(alice).post(url(project), body, format="json")

    assert response.status_code == 400
    assert response.json()["detail"] == "row 2: external_id '1' is already used on row 1"
    assert (response.json()["field"], response.json()["line"]) == ("rows", 2)
    assert written() == before


def test_upload_with_a_bad_mapping_is_400_on_the_mapping(project, alice):
    data = {"file": upload(b"id,text\n1,T\n", "p.csv"), "mapping": json.dumps({"external_id": "ident"})}

    response = client_for(alice).post(url(project), data, format="multipart")

    assert response.status_code == 400
    assert (response.json()["field"], response.json()["line"]) == ("mapping", 1)


def test_upload_without_a_file_is_400(project, alice):
    response = client_for(alice).post(url(project), {"tasks": "single"}, format="multipart")
    assert response.status_code == 400
    assert response.json()["field"] == "file"


def test_rater_cannot_import(project, bob):
    before = written()
    response = client_for(bob).post(url(project), {"file": upload(b'{"external_id": "1", "text": "T"}\n')})
    assert response.status_code == 403
    assert written() == before


@pytest.mark.parametrize("name", ["charlie", "dave"])
def test_people_without_access_to_the_project_get_404(project, other_project, users, name):
    response = client_for(users[name]).post(
        url(project), {"rows": [{"external_id": "1", "text": "T"}]}, format="json"
    )
    assert response.status_code == 404
    assert not Prompt.objects.exists()


def test_superuser_can_import_into_any_project(project, django_user_model):
    root = django_user_model.objects.create_superuser("erin", password="pw-erin-123")
    response = client_for(root).post(
        url(project), {"rows": [{"external_id": "1", "text": "T"}]}, format="json"
    )
    assert response.status_code == 201


def test_import_view_is_in_the_openapi_schema():
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/api/v1/projects/{project_id}/import/"]["post"]
    assert set(operation["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert set(operation["responses"]) >= {"201", "400", "403", "404"}
