"""The API answers as its OpenAPI schema says: examples generated from the schema (schemathesis),
sent in-process to the WSGI app as a curator with a token, must get no 5xx, only documented
status codes and media types, and bodies that match the documented schemas."""

import pytest
import schemathesis
from django.core import signals
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from annotation.models import Answer, Membership, Project, Task
from annotation.services.leases import lease_acquire
from config.wsgi import application
from tests.factories import QUESTIONS, make_tasks, write_judgment

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]

schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)


@pytest.fixture
def keep_connection():
    """The WSGI app closes the database connection after each request, as a server should; here
    the requests run inside the test's transaction, so it must stay open (as Django's test client
    arranges)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def curator_token(keep_connection, project, other_project, alice, bob):
    """alice curates project A (tasks, a judgment, her own lease) and project "Second"; bob rates A."""
    make_tasks(project, 3)
    make_tasks(project, 1, kind="pairwise", prefix="pw")
    second = Project.objects.create(name="Second", questions=QUESTIONS, overlap=1)
    Membership.objects.create(user=alice, project=second, role=Membership.Role.CURATOR)
    return Token.objects.create(user=alice).key


@pytest.fixture
def existing(curator_token, project, alice, bob):
    """Ids of rows alice may reach, by the path's collection: half the examples use them, so that
    the operations are exercised on real rows and not only answer 404."""
    tasks = list(Task.objects.filter(project=project).order_by("id"))
    judgment = write_judgment(tasks[0], bob, {"feedback": (Answer.Kind.FEEDBACK, "Shorter, please.")})
    lease = lease_acquire(project=project, rater=alice)
    return {
        "projects": project.pk,
        "prompts": tasks[0].prompt_id,
        "outputs": tasks[0].task_outputs.first().output_id,
        "tasks": tasks[0].pk,
        "judgments": judgment.pk,
        "leases": lease.pk,
    }


@pytest.mark.slow
@pytest.mark.django_db
@schema.parametrize()
@settings(
    max_examples=20,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_schema(case, curator_token, existing):
    collection = case.path.split("/")[3]
    for name, value in (case.path_parameters or {}).items():
        if isinstance(value, int) and value % 2 == 0 and collection in existing:
            case.path_parameters[name] = existing[collection]
    case.call_and_validate(headers={"Authorization": f"Token {curator_token}"}, checks=CHECKS)


@pytest.mark.django_db
def test_a_body_that_is_not_json_gets_the_documented_error(curator_token, project):
    """Every API error is {detail, code} and, where a field is at fault, `field`: a body that does
    not parse names none."""
    operation = schema["/api/v1/projects/{project_id}/import/"]["POST"]
    case = operation.Case(
        path_parameters={"project_id": project.pk}, body=b'{"rows": "\x83"}', media_type="application/json"
    )
    response = case.call(headers={"Authorization": f"Token {curator_token}"})
    assert response.status_code == 400 and response.json()["code"] == "parse_error"
    assert "field" not in response.json()
    case.validate_response(response, checks=CHECKS)
