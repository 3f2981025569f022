"""(QA)² projects: the template, rating through the API, the dashboard panel, the export and the
loop's feedback rows."""

import csv
import io
import json
import re

import krippendorff
import pytest
from django.core.management import call_command
from django.test import Client
from rest_framework.test import APIClient
from sklearn.metrics import cohen_kappa_score

from annotation import exporting, quality, templates_qa2
from annotation.errors import ProjectTemplateError
from annotation.models import Answer, Judgment, Membership, Output, Project, Prompt, Task, TaskOutput
from annotation.questions import validate_questions_config
from annotation.services.projects import project_create_from_template
from feedback_loop import selectors as loop_selectors
from tests.factories import QUESTIONS

pytestmark = pytest.mark.django_db

FLAGGED_NOTE = "Marie Curie did not discover uranium."
EXPLANATION = "It answers as if the assumption held; it should say the premise is false."

# Two raters on six tasks (overlap 2): (flagged, acceptable) per task, rater one then rater two.
# Tasks 0-1: both flag (flagged group); 2-4: neither does (not flagged); 5: one does (split).
PLAN = [
    ((1, 1), (1, 1)),
    ((1, 0), (1, 1)),
    ((0, 1), (0, 1)),
    ((0, 1), (0, 0)),
    ((0, 0), (0, 0)),
    ((1, 0), (0, 1)),
]


def answers(*, flagged: bool, acceptable: bool) -> dict:
    given = {"acceptable": {"acceptable": 1 if acceptable else 0}}
    if flagged:
        given["assumption"] = {
            "flags": ["questionable_assumption"],
            "notes": {"questionable_assumption": FLAGGED_NOTE},
        }
    if not acceptable:
        given["explanation"] = EXPLANATION
    return given


@pytest.fixture
def qa2_project(alice, bob, charlie):
    project = project_create_from_template(name="Assumptions", template="qa2", overlap=2)
    Membership.objects.create(user=alice, project=project, role=Membership.Role.CURATOR)
    for rater in (bob, charlie):
        Membership.objects.create(user=rater, project=project, role=Membership.Role.RATER)
    return project


def add_questions(project, n: int) -> list[Task]:
    tasks = []
    for i in range(n):
        prompt = Prompt.objects.create(
            project=project, external_id=f"q{i}", text=f"When did Marie Curie discover uranium? ({i})"
        )
        output = Output.objects.create(prompt=prompt, text=f"In 1896. ({i})", model_name="seed")
        task = Task.objects.create(project=project, prompt=prompt, kind=Task.Kind.SINGLE)
        TaskOutput.objects.create(task=task, output=output, position=0)
        tasks.append(task)
    return tasks


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


def lease_and_submit(client, project, answers_of_task) -> dict:
    """Lease the rater's next task and submit the answers planned for it; the judgment's JSON."""
    leased = client.post(f"/api/v1/projects/{project.pk}/next-task/")
    assert leased.status_code == 200, leased.content
    lease = leased.json()
    submitted = client.post(
        f"/api/v1/leases/{lease['id']}/submit/",
        {"answers": answers_of_task(lease["task"]["id"]), "time_spent_ms": 4000},
        format="json",
    )
    assert submitted.status_code == 201, submitted.json()
    return submitted.json()


@pytest.fixture
def rated(qa2_project, bob, charlie):
    """PLAN submitted through the API by bob (rater one) and charlie (rater two)."""
    tasks = add_questions(qa2_project, len(PLAN))
    index = {task.pk: i for i, task in enumerate(tasks)}
    for which, rater in enumerate((bob, charlie)):
        client = api_client(rater)
        for _ in tasks:
            lease_and_submit(
                client,
                qa2_project,
                lambda task_id, which=which: answers(
                    flagged=bool(PLAN[index[task_id]][which][0]),
                    acceptable=bool(PLAN[index[task_id]][which][1]),
                ),
            )
        assert client.post(f"/api/v1/projects/{qa2_project.pk}/next-task/").status_code == 204
    return qa2_project, tasks


# ---------------------------------------------------------------- the template


def test_project_from_the_template_asks_its_questions_under_its_guidelines(qa2_project):
    qa2_project.full_clean()  # what the admin and the API check
    assert qa2_project.questions == validate_questions_config(templates_qa2.QUESTIONS)
    assert [q["name"] for q in qa2_project.questions] == ["assumption", "acceptable", "explanation"]
    assert [q["kind"] for q in qa2_project.questions] == ["rubric", "likert", "feedback"]
    assert qa2_project.guidelines == templates_qa2.GUIDELINES
    assert templates_qa2.is_qa2_project(qa2_project.questions)


def test_other_projects_are_not_taken_for_qa2_projects():
    # The default questions have a rubric flag named questionable_assumption too.
    assert not templates_qa2.is_qa2_project(QUESTIONS)
    three_point = [dict(q) for q in templates_qa2.QUESTIONS]
    three_point[1] = {**three_point[1], "scale": [0, 2]}
    assert not templates_qa2.is_qa2_project(three_point)


def test_create_project_command_makes_a_qa2_project(db):
    out = io.StringIO()
    call_command("create_project", "From the command line", "--template", "qa2", "--overlap", "3", stdout=out)
    project = Project.objects.get(name="From the command line")
    assert project.overlap == 3
    assert templates_qa2.is_qa2_project(project.questions)
    assert f"id {project.pk}" in out.getvalue()


def test_create_project_refuses_a_taken_name_and_writes_nothing(qa2_project):
    with pytest.raises(ProjectTemplateError, match="name"):
        project_create_from_template(name="Assumptions", template="qa2")
    assert Project.objects.filter(name="Assumptions").count() == 1


def test_admin_creates_a_project_from_the_template(admin_client):
    response = admin_client.post(
        "/admin/annotation/project/add/",
        {
            "name": "Admin QA2",
            "template": "qa2",
            "description": "",
            "kind": "text",
            "guidelines": "",
            "questions": "",
            "overlap": "2",
            "lease_seconds": "600",
            "max_pending_per_rater": "1",
            "gold_rate": "0",
            "max_fix_chars": "1000000",
            "base_model": "",
            "generation": "{}",
            "loop_settings": "{}",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
        },
    )
    assert response.status_code == 302, re.findall(
        r'class="errorlist[^"]*">(.*?)</ul>', response.content.decode()
    )
    project = Project.objects.get(name="Admin QA2")
    assert templates_qa2.is_qa2_project(project.questions)
    assert project.guidelines == templates_qa2.GUIDELINES


def test_admin_add_form_without_template_or_questions_is_refused(admin_client):
    response = admin_client.post(
        "/admin/annotation/project/add/",
        {"name": "Nothing asked", "template": "", "questions": "", "overlap": "1", "kind": "text"},
    )
    assert response.status_code == 200
    assert "Write the questions, or choose a template." in response.content.decode()
    assert not Project.objects.filter(name="Nothing asked").exists()


# ---------------------------------------------------------------- rating through the API


@pytest.mark.parametrize("flagged", [True, False])
@pytest.mark.parametrize("acceptable", [True, False])
def test_rater_submits_each_combination_through_the_api(qa2_project, bob, flagged, acceptable):
    add_questions(qa2_project, 1)
    judgment = lease_and_submit(
        api_client(bob), qa2_project, lambda _: answers(flagged=flagged, acceptable=acceptable)
    )
    stored = dict(Answer.objects.filter(judgment_id=judgment["id"]).values_list("question", "value"))
    assert stored["acceptable"] == {"acceptable": int(acceptable)}
    if flagged:
        assert stored["assumption"] == {
            "flags": ["questionable_assumption"],
            "notes": {"questionable_assumption": FLAGGED_NOTE},
        }
    else:
        assert "assumption" not in stored  # an unflagged rubric is not stored
    assert stored.get("explanation") == (None if acceptable else EXPLANATION)


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"acceptable": {"acceptable": 2}}, "answers.acceptable.acceptable"),
        ({}, "answers.acceptable"),
        (
            {"acceptable": 1, "assumption": {"flags": ["questionable_assumption"], "notes": {}}},
            "answers.assumption.notes.questionable_assumption",
        ),
    ],
)
def test_an_out_of_scale_score_or_an_unwritten_assumption_is_refused(qa2_project, bob, given, field):
    add_questions(qa2_project, 1)
    client = api_client(bob)
    lease = client.post(f"/api/v1/projects/{qa2_project.pk}/next-task/").json()
    response = client.post(f"/api/v1/leases/{lease['id']}/submit/", {"answers": given}, format="json")
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert not Judgment.objects.exists()


# ---------------------------------------------------------------- the dashboard


def test_acceptability_is_split_by_the_majoritys_view_of_the_assumption(rated):
    project, _ = rated
    summary = quality.qa2_summary(project)
    # flagged: tasks 0-1, acceptable 1+1+0+1; not flagged: tasks 2-4, 1+1+1+0+0+0; split: task 5, 0+1.
    assert (summary.flagged.tasks, summary.flagged.judgments, summary.flagged.acceptable) == (2, 4, 3)
    assert (summary.not_flagged.tasks, summary.not_flagged.judgments, summary.not_flagged.acceptable) == (
        3,
        6,
        3,
    )
    assert (summary.split.tasks, summary.split.judgments, summary.split.acceptable) == (1, 2, 1)
    assert summary.flagged.rate == pytest.approx(0.75)
    assert summary.not_flagged.rate == pytest.approx(0.5)


def test_detection_agreement_is_what_the_libraries_compute(rated):
    project, _ = rated
    detection = quality.qa2_summary(project).detection
    one = [plan[0][0] for plan in PLAN]
    two = [plan[1][0] for plan in PLAN]
    assert detection.alpha_nominal == pytest.approx(
        krippendorff.alpha(reliability_data=[one, two], level_of_measurement="nominal")
    )
    assert detection.alpha_nominal == pytest.approx(1 - (2 / 12) / (70 / 132))  # worked by hand: 0.686
    assert detection.mean_cohen == pytest.approx(cohen_kappa_score(one, two))
    assert detection.mean_cohen == pytest.approx(2 / 3)  # p_o 5/6, p_e 1/2
    assert detection.percent_agreement == pytest.approx(5 / 6)
    assert (detection.raters, detection.units) == (2, 6)


def test_rejected_judgments_leave_the_qa2_figures(rated, charlie):
    project, tasks = rated
    Judgment.objects.filter(rater=charlie, task=tasks[5]).update(status=Judgment.Status.REJECTED)
    summary = quality.qa2_summary(project)
    # Task 5 now has bob's flag alone: a majority of one.
    assert (summary.flagged.tasks, summary.flagged.judgments, summary.flagged.acceptable) == (3, 5, 3)
    assert summary.split.tasks == 0


def test_dashboard_shows_the_qa2_panel_with_its_numbers(rated, alice):
    project, _ = rated
    client = Client()
    client.force_login(alice)
    html = client.get(f"/projects/{project.pk}/dashboard/").content.decode()
    panel = html[html.index('id="qa2"') :]
    rows = re.findall(r"<tr>\s*<th scope=\"row\">([^<]+)</th>(.*?)</tr>", panel, re.S)
    shown = {label: dict(re.findall(r'data-stat="(\w+)">([^<]*)<', body)) for label, body in rows}
    assert shown["Assumption flagged by the majority"] == {
        "tasks": "2",
        "judgments": "4",
        "acceptable": "3",
        "rate": "75%",
    }
    assert shown["Assumption not flagged by the majority"]["rate"] == "50%"
    detection = panel[panel.index('id="qa2-detection"') :]
    assert 'data-stat="alpha_nominal">0.686<' in detection
    assert 'data-stat="mean_cohen">0.667' in detection
    assert f"/projects/{project.pk}/exports/qa2.jsonl" in html


def test_dashboard_of_other_projects_has_no_qa2_panel_nor_export(project, alice):
    client = Client()
    client.force_login(alice)
    html = client.get(f"/projects/{project.pk}/dashboard/").content.decode()
    assert 'id="qa2"' not in html
    assert '<span class="kind">qa2</span>' not in html
    assert client.get(f"/projects/{project.pk}/exports/qa2.jsonl").status_code == 404


# ---------------------------------------------------------------- the export


def test_qa2_export_has_the_qa2_columns_and_values(rated):
    project, tasks = rated
    rows = list(exporting.export_rows(project, kind="qa2"))
    assert len(rows) == 12
    assert tuple(rows[0]) == exporting.QA2_COLUMNS
    by_key = {(row["prompt_external_id"], row["rater"]): row for row in rows}
    flagged = by_key[("q1", "bob")]
    assert flagged["question"] == tasks[1].prompt.text
    assert flagged["answer"] == "In 1896. (1)"
    assert flagged["all_assumptions_valid"] == "has_invalid"
    assert flagged["questionable_assumption"] == FLAGGED_NOTE
    assert flagged["acceptable"] is False
    assert flagged["explanation"] == EXPLANATION
    assert flagged["status"] == "pending"
    plain = by_key[("q2", "charlie")]
    assert (
        plain["all_assumptions_valid"],
        plain["questionable_assumption"],
        plain["acceptable"],
        plain["explanation"],
    ) == (
        "all_valid",
        "",
        True,
        "",
    )


def test_qa2_export_header_is_the_released_data_sets_where_they_mean_the_same():
    # QAQA_evaluation_set_Dec2022.csv (Kim et al.) names `question`, `all_assumptions_valid` (read as
    # == "has_invalid") and `questionable_assumption` (the assumption's text, empty when none).
    assert exporting.QA2_COLUMNS == (
        "judgment_id",
        "prompt_external_id",
        "question",
        "answer",
        "all_assumptions_valid",
        "questionable_assumption",
        "acceptable",
        "explanation",
        "rater",
        "status",
        "round",
    )


def test_qa2_export_in_csv_and_parquet(rated, tmp_path):
    project, _ = rated
    stream = io.StringIO(newline="")
    assert exporting.write_csv(exporting.export_rows(project, kind="qa2"), stream, kind="qa2") == 12
    table = list(csv.DictReader(io.StringIO(stream.getvalue())))
    assert tuple(table[0]) == exporting.QA2_COLUMNS
    assert {row["all_assumptions_valid"] for row in table} == {"has_invalid", "all_valid"}
    assert {row["questionable_assumption"] for row in table} == {FLAGGED_NOTE, ""}

    import pyarrow.parquet as pq

    path = tmp_path / "qa2.parquet"
    assert exporting.write_parquet(exporting.export_rows(project, kind="qa2"), path, kind="qa2") == 12
    read = pq.read_table(path)
    assert tuple(read.column_names) == exporting.QA2_COLUMNS
    assert str(read.schema.field("questionable_assumption").type) == "string"
    assert str(read.schema.field("acceptable").type) == "bool"
    assert sum(read.column("acceptable").to_pylist()) == 7  # 3 of 4 + 3 of 6 + 1 of 2


def test_export_judgments_command_writes_qa2_rows(rated, tmp_path):
    project, _ = rated
    target = tmp_path / "qa2.jsonl"
    call_command("export_judgments", str(project.pk), "--kind", "qa2", "--output", str(target))
    lines = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(lines) == 12 and set(lines[0]) == set(exporting.QA2_COLUMNS)


def test_api_exports_qa2_rows_and_refuses_them_for_other_projects(rated, project, alice):
    qa2_project, _ = rated
    client = api_client(alice)
    response = client.get(f"/api/v1/projects/{qa2_project.pk}/export/", {"kind": "qa2", "format": "jsonl"})
    assert response.status_code == 200, response.content
    lines = b"".join(response.streaming_content).decode().splitlines()
    assert len(lines) == 12
    refused = client.get(f"/api/v1/projects/{project.pk}/export/", {"kind": "qa2", "format": "jsonl"})
    assert refused.status_code == 400


def test_rejected_judgments_are_not_exported_and_qa2_is_not_for_other_projects(rated, project, bob):
    qa2_project, _ = rated
    Judgment.objects.filter(rater=bob).update(status=Judgment.Status.REJECTED)
    assert len(list(exporting.export_rows(qa2_project, kind="qa2"))) == 6
    with pytest.raises(exporting.ExportError, match="qa2"):
        exporting.export_rows(project, kind="qa2")


# ---------------------------------------------------------------- the loop


def test_explanations_become_the_loops_feedback_rows(rated):
    project, tasks = rated
    judgments = list(loop_selectors.feedback_judgments(project, require_acceptance=False))
    # Every unacceptable answer carries an explanation; acceptable ones carry none.
    assert len(judgments) == sum(1 - plan[which][1] for plan in PLAN for which in (0, 1)) == 5
    rows = loop_selectors.feedback_rows([judgment.pk for judgment in judgments])
    assert {row.feedback for row in rows} == {EXPLANATION}
    row = next(row for row in rows if row.prompt_id == tasks[1].prompt_id)
    assert row.prompt == tasks[1].prompt.text
    assert row.output == "In 1896. (1)"
    assert loop_selectors.new_feedback_count(project) == 5


def test_a_likert_hint_must_be_text():
    from annotation.questions import QuestionsConfigError

    with pytest.raises(QuestionsConfigError, match="hint"):
        validate_questions_config([{"name": "acceptable", "kind": "likert", "scale": [0, 1], "hint": 3}])
