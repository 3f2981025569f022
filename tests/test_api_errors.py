"""Bad input is a 400 in the API's JSON error shape, with nothing written; access is checked
before validation, and the browsable API shows nobody another project's rows."""

import json
import re

import pytest
from rest_framework.test import APIClient

from annotation.api import views
from annotation.models import Answer, AuditEvent, Judgment, Lease, Output, Project, Prompt, Task
from tests.factories import make_tasks

pytestmark = pytest.mark.django_db

TABLES = (Project, Prompt, Output, Task, Lease, Judgment, Answer, AuditEvent)


def client_for(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


def snapshot():
    return {
        model.__name__: sorted(map(str, model.objects.values_list("pk", flat=True))) for model in TABLES
    } | {"project_settings": list(Project.objects.order_by("pk").values_list("generation", "questions"))}


def nested(depth):
    return '{"answers": {"feedback": ' + "[" * depth + "]" * depth + "}}"


def _lease(project, bob):
    make_tasks(project, 1)
    return client_for(bob).post(f"/api/v1/projects/{project.pk}/next-task/").json()["id"]


# Each case: (who, method, url, body, body format). `{project}`, `{prompt}`, `{lease}` are filled in.
CASES = {
    "lease id not an integer (skip)": ("bob", "post", "/api/v1/leases/abc/skip/", None, None),
    "lease id not an integer (submit)": (
        "bob",
        "post",
        "/api/v1/leases/abc/submit/",
        {"answers": {}},
        "json",
    ),
    "multipart null project generation": (
        "alice",
        "patch",
        "/api/v1/projects/{project}/",
        {"generation": "null"},
        "multipart",
    ),
    "multipart null prompt data": (
        "alice",
        "post",
        "/api/v1/prompts/",
        {"project": "{project}", "external_id": "n1", "text": "t", "data": "null"},
        "multipart",
    ),
    "multipart null output generation": (
        "alice",
        "post",
        "/api/v1/outputs/",
        {"prompt": "{prompt}", "text": "t", "generation": "null"},
        "multipart",
    ),
    "NUL in rater filter": ("alice", "get", "/api/v1/judgments/?rater=a%00b", None, None),
    "NUL in task status filter": ("alice", "get", "/api/v1/tasks/?status=a%00b", None, None),
    "limit beyond 64 bits": ("alice", "get", f"/api/v1/prompts/?limit={2**64 + 1}", None, None),
    "offset beyond 64 bits": ("alice", "get", f"/api/v1/judgments/?offset={2**70}", None, None),
    "project filter beyond 64 bits": ("alice", "get", f"/api/v1/tasks/?project={2**64}", None, None),
    "NUL in prompt data": (
        "alice",
        "post",
        "/api/v1/prompts/",
        {"project": "{project}", "external_id": "n2", "text": "t", "data": {"k": "a\u0000b"}},
        "json",
    ),
    "NUL in prompt gold": (
        "alice",
        "post",
        "/api/v1/prompts/",
        {"project": "{project}", "external_id": "n3", "text": "t", "gold": ["a\u0000"]},
        "json",
    ),
    "NUL in output generation": (
        "alice",
        "post",
        "/api/v1/outputs/",
        {"prompt": "{prompt}", "text": "t", "generation": {"\u0000": 1}},
        "json",
    ),
    "NUL in project generation": (
        "alice",
        "patch",
        "/api/v1/projects/{project}/",
        {"generation": {"stop": "\u0000"}},
        "json",
    ),
    "NUL in a question label": (
        "alice",
        "patch",
        "/api/v1/projects/{project}/",
        {"questions": [{"name": "feedback", "kind": "feedback", "label": "Say\u0000"}]},
        "json",
    ),
    "NUL in task gold answers": (
        "alice",
        "post",
        "/api/v1/tasks/",
        {
            "project": "{project}",
            "prompt": "{prompt}",
            "outputs": ["{output}"],
            "gold_answers": {"x": "\u0000"},
        },
        "json",
    ),
    "NUL in a submitted answer": (
        "bob",
        "post",
        "/api/v1/leases/{lease}/submit/",
        {"answers": {"feedback": "Fine\u0000"}},
        "json",
    ),
    "submit nested 5000 deep": ("bob", "post", "/api/v1/leases/{lease}/submit/", nested(5000), "raw"),
    "submit nested 200 deep": ("bob", "post", "/api/v1/leases/{lease}/submit/", nested(200), "raw"),
    "judgment status not a status": ("alice", "get", "/api/v1/judgments/?status=AAA", None, None),
}


def _fill(value, names):
    if isinstance(value, str):
        return value.format(**names) if "{" in value and "}" in value and '"' not in value else value
    if isinstance(value, dict):
        return {key: _fill(item, names) for key, item in value.items()}
    if isinstance(value, list):
        return [_fill(item, names) for item in value]
    return value


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_json_400_and_writes_nothing(case, project, users):
    who, method, url, body, body_format = CASES[case]
    prompt = Prompt.objects.create(project=project, external_id="existing", text="x")
    output = Output.objects.create(prompt=prompt, text="y")
    names = {
        "project": project.pk,
        "prompt": prompt.pk,
        "output": output.pk,
        "lease": _lease(project, users["bob"]),
    }
    url, body = url.format(**names), _fill(body, names)
    before = snapshot()
    client = client_for(users[who])
    if body_format == "raw":
        response = getattr(client, method)(url, body, content_type="application/json")
    elif body_format is None:
        response = getattr(client, method)(url)
    else:
        response = getattr(client, method)(url, body, format=body_format)
    assert response.status_code == 400, (response.status_code, response.content[:300])
    assert response["Content-Type"].startswith("application/json")
    error = response.json()
    assert error["detail"] and error["code"], error
    assert snapshot() == before


def test_judgment_status_filter_names_the_allowed_values(project, alice):
    error = client_for(alice).get("/api/v1/judgments/?status=AAA").json()
    assert error["field"] == "status" and "pending" in json.dumps(error["errors"])


def test_form_over_the_size_limit_answers_json_413(project, alice, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client_for(alice).patch(
        f"/api/v1/projects/{project.pk}/", {"description": "x" * 5000}, format="multipart"
    )
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    response = client_for(alice).patch(
        f"/api/v1/projects/{project.pk}/",
        json.dumps({"description": "x" * 5000}),
        content_type="application/json",
    )
    assert response.status_code == 413 and response.json()["code"] == "too_large"
    assert Project.objects.get().description == ""


def test_form_with_too_many_fields_answers_json_400(project, alice, settings):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 5
    body = "&".join(f"f{i}=1" for i in range(20))
    response = client_for(alice).patch(
        f"/api/v1/projects/{project.pk}/", body, content_type="application/x-www-form-urlencoded"
    )
    assert response.status_code == 400 and response.json()["code"] == "too_many_fields"


def test_not_found_and_forbidden_carry_the_error_shape(project, bob, charlie):
    assert client_for(charlie).get(f"/api/v1/projects/{project.pk}/").json() == {
        "detail": "No Project matches the given query.",
        "code": "not_found",
    }
    forbidden = client_for(bob).delete(f"/api/v1/projects/{project.pk}/")
    assert forbidden.status_code == 403 and forbidden.json()["code"] == "permission_denied"


# ---------------------------------------------------------------- permission before validation


def _answer(client, url, body):
    response = client.post(url, body, format="json")
    return response.status_code, response.json()


@pytest.mark.parametrize("who", ["charlie", "dave"])
def test_a_project_you_cannot_see_answers_as_one_that_does_not_exist(who, project, users):
    Prompt.objects.create(project=project, external_id="P1-ext-0", text="x")
    client = client_for(users[who])
    taken = _answer(
        client, "/api/v1/prompts/", [{"project": project.pk, "external_id": "P1-ext-0", "text": "y"}]
    )
    free = _answer(client, "/api/v1/prompts/", [{"project": project.pk, "external_id": "new", "text": "y"}])
    missing = _answer(
        client, "/api/v1/prompts/", [{"project": 987654, "external_id": "P1-ext-0", "text": "y"}]
    )
    assert taken == free == missing
    assert taken[0] == 400 and "P1-ext-0" not in json.dumps(taken[1])
    assert Prompt.objects.count() == 1


def test_a_rater_is_refused_before_the_body_is_checked(project, bob):
    Prompt.objects.create(project=project, external_id="P1-ext-0", text="x")
    client = client_for(bob)
    taken = _answer(
        client, "/api/v1/prompts/", [{"project": project.pk, "external_id": "P1-ext-0", "text": "y"}]
    )
    free = _answer(client, "/api/v1/prompts/", [{"project": project.pk, "external_id": "new", "text": "y"}])
    assert taken == free and taken[0] == 403


def test_outputs_and_tasks_of_unseen_prompts_answer_as_missing_ones(project, other_project, dave, alice):
    (task,) = make_tasks(project, 1)
    client = client_for(dave)
    hidden = _answer(client, "/api/v1/outputs/", {"prompt": task.prompt_id, "text": "t"})
    missing = _answer(client, "/api/v1/outputs/", {"prompt": 987654, "text": "t"})
    assert hidden == missing and hidden[0] == 400
    body = {"project": project.pk, "prompt": task.prompt_id, "outputs": [1]}
    hidden = _answer(client, "/api/v1/tasks/", body)
    missing = _answer(client, "/api/v1/tasks/", {**body, "project": 987654, "prompt": 987654})
    assert hidden == missing and hidden[0] == 400


def test_project_names_are_not_checked_for_those_who_may_not_write(project, other_project, bob, charlie):
    taken = client_for(bob).patch(f"/api/v1/projects/{project.pk}/", {"name": "Other"}, format="json")
    free = client_for(bob).patch(f"/api/v1/projects/{project.pk}/", {"name": "Fresh"}, format="json")
    assert taken.status_code == free.status_code == 403 and taken.json() == free.json()
    taken = client_for(charlie).post("/api/v1/projects/", {"name": "Other"}, format="json")
    free = client_for(charlie).post("/api/v1/projects/", {"name": "Fresh"}, format="json")
    assert taken.status_code == free.status_code == 403 and taken.json() == free.json()
    assert sorted(Project.objects.values_list("name", flat=True)) == ["Other", "Summaries"]


# ---------------------------------------------------------------- the browsable API


def test_the_browsable_api_is_off_unless_debugging(project, alice):
    response = client_for(alice).get("/api/v1/outputs/", HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert response["Content-Type"] == "application/json"


def test_browsable_forms_offer_only_the_projects_and_prompts_you_may_see(
    project, other_project, alice, charlie, monkeypatch
):
    from rest_framework.renderers import BrowsableAPIRenderer, JSONRenderer

    for viewset in (views.OutputViewSet, views.PromptViewSet):
        monkeypatch.setattr(viewset, "renderer_classes", [BrowsableAPIRenderer, JSONRenderer])
    Prompt.objects.create(project=project, external_id="P1-ext-0", text="x")
    Prompt.objects.create(project=other_project, external_id="B-ext-0", text="x")

    def page(user, url):
        response = client_for(user).get(url, HTTP_ACCEPT="text/html")
        assert response.status_code == 200 and response["Content-Type"].startswith("text/html")
        return response.content.decode()

    assert "P1-ext-0" not in page(charlie, "/api/v1/outputs/")
    assert not re.search(r">\s*Summaries\s*</option>", page(charlie, "/api/v1/prompts/"))
    own = page(alice, "/api/v1/outputs/")
    assert "P1-ext-0" in own and "B-ext-0" not in own
    own = page(alice, "/api/v1/prompts/")
    assert re.search(r">\s*Summaries\s*</option>", own) and not re.search(r">\s*Other\s*</option>", own)


# ---------------------------------------------------------------- the schema says what the server does


@pytest.fixture
def openapi():
    from drf_spectacular.generators import SchemaGenerator

    return SchemaGenerator().get_schema(request=None, public=True)


def test_every_operation_documents_its_error_answers(openapi):
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            expected = {"400", "401", "403"} | ({"404"} if "{" in path else set())
            assert expected <= set(responses), (method, path)
            for code in expected:
                assert "application/json" in responses[code]["content"], (method, path, code)


def test_submit_takes_json_only(openapi, project, bob):
    body = openapi["paths"]["/api/v1/leases/{id}/submit/"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json"}
    lease = _lease(project, bob)
    response = client_for(bob).post(
        f"/api/v1/leases/{lease}/submit/", {"answers": "feedback"}, format="multipart"
    )
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"


def test_an_empty_import_is_refused_as_the_schema_says(openapi, project, alice):
    rows = openapi["components"]["schemas"]["ImportRowsRequest"]["properties"]["rows"]
    assert rows["minItems"] == 1
    response = client_for(alice).post(f"/api/v1/projects/{project.pk}/import/", {"rows": []}, format="json")
    assert response.status_code == 400 and response.json()["detail"]


def test_training_export_of_rejected_judgments_is_a_documented_400(openapi, project, alice):
    export = openapi["paths"]["/api/v1/projects/{project_id}/export/"]["get"]["responses"]
    assert "application/json" in export["400"]["content"]
    response = client_for(alice).get(f"/api/v1/projects/{project.pk}/export/?kind=sft&status=rejected")
    assert response.status_code == 400 and "pending and accepted" in response.json()["detail"]


def test_paths_that_are_no_endpoint_answer_json_404(alice):
    for method, url in [("get", "/api/v1/projects/0.5/"), ("post", "/api/v1/leases/1.5/skip/")]:
        response = getattr(client_for(alice), method)(url)
        assert response.status_code == 404 and response.json()["code"] == "not_found"
