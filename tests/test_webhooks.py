"""Webhooks: signed deliveries to a real receiver on loopback, retries with backoff, nothing sent
for a rolled-back write, private addresses refused, curators-only API and admin."""

import hashlib
import hmac
import json
import socket
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.contrib.auth.models import Permission
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from annotation import webhooks
from annotation.models import Judgment, Project, Webhook, WebhookDelivery
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire
from annotation.tasks import deliver_webhook
from config.celery import app as celery_app
from tests.factories import make_tasks, single_answers

pytestmark = pytest.mark.django_db


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers the given statuses."""

    def __init__(self, statuses=(200,)):
        self.statuses = list(statuses)
        self.requests: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append(
                    {"path": self.path, "headers": dict(self.headers), "body": body, "at": time.monotonic()}
                )
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "http://127.0.0.1:1/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hooks/refinery"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture(autouse=True)
def webhook_settings(settings):
    settings.REFINERY_WEBHOOKS_ALLOW_PRIVATE = True  # receivers listen on loopback
    settings.REFINERY_WEBHOOKS_BACKOFF_SECONDS = 0  # retries at once in eager mode
    settings.REFINERY_WEBHOOKS_MAX_ATTEMPTS = 5
    settings.REFINERY_WEBHOOKS_TIMEOUT_SECONDS = 5
    return settings


@pytest.fixture
def eager():
    """Celery runs tasks in the calling thread, as CELERY_TASK_ALWAYS_EAGER=True does."""
    conf = celery_app.conf
    before = conf.task_always_eager, conf.task_eager_propagates
    conf.task_always_eager, conf.task_eager_propagates = True, True
    yield
    conf.task_always_eager, conf.task_eager_propagates = before


def hook(project, url, events=("judgment.submitted",), **fields):
    return Webhook.objects.create(project=project, url=url, events=list(events), **fields)


def submit(project, rater):
    lease = lease_acquire(project=project, rater=rater)
    return judgment_submit(lease_id=lease.pk, rater=rater, answers=single_answers(), time_spent_ms=1200)


def api(user):
    client = APIClient()
    client.force_authenticate(user)
    return client


# ---------------------------------------------------------------- what a receiver gets


def test_receiver_gets_a_signed_judgment_submitted_event(
    project, bob, receiver, eager, django_capture_on_commit_callbacks
):
    webhook = hook(project, receiver.url)
    make_tasks(project, 1)
    with django_capture_on_commit_callbacks(execute=True):
        submission = submit(project, bob)

    [request] = receiver.requests
    headers, body = request["headers"], request["body"]
    assert request["path"] == "/hooks/refinery"
    expected = hmac.new(
        webhook.secret.encode(), headers["X-Refinery-Timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert hmac.compare_digest(headers["X-Refinery-Signature"], f"sha256={expected}")
    assert headers["X-Refinery-Event"] == "judgment.submitted"
    assert headers["Content-Type"] == "application/json"
    event = json.loads(body)
    delivery = WebhookDelivery.objects.get()
    assert headers["X-Refinery-Delivery"] == event["id"] == str(delivery.event_id)
    assert event["event"] == "judgment.submitted" and event["project"] == project.pk
    assert event["data"]["judgment"] == submission.judgment.pk
    assert event["data"]["rater"] == {"id": bob.pk, "username": "bob"}
    assert event["data"]["answers"]["quality"] == {"helpful": 5, "accurate": 6}
    assert event["data"]["time_spent_ms"] == 1200
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)


def test_a_wrong_secret_does_not_verify(project, bob, receiver, eager, django_capture_on_commit_callbacks):
    hook(project, receiver.url)
    make_tasks(project, 1)
    with django_capture_on_commit_callbacks(execute=True):
        submit(project, bob)
    [request] = receiver.requests
    forged = webhooks.signature(
        secret="not-the-secret", timestamp=request["headers"]["X-Refinery-Timestamp"], body=request["body"]
    )
    assert forged != request["headers"]["X-Refinery-Signature"]


def test_only_active_webhooks_that_want_the_event_get_it(
    project, other_project, bob, receiver, eager, django_capture_on_commit_callbacks
):
    hook(project, receiver.url + "?wants", events=["judgment.submitted", "adapter.promoted"])
    hook(project, receiver.url + "?other-event", events=["round.state_changed"])
    hook(project, receiver.url + "?inactive", active=False)
    hook(other_project, receiver.url + "?other-project")
    make_tasks(project, 1)
    with django_capture_on_commit_callbacks(execute=True):
        submit(project, bob)
    assert [request["path"] for request in receiver.requests] == ["/hooks/refinery?wants"]


def test_rater_submission_through_the_api_sends_judgment_submitted(
    project, bob, receiver, eager, django_capture_on_commit_callbacks
):
    hook(project, receiver.url)
    make_tasks(project, 1)
    client = api(bob)
    lease = client.post(f"/api/v1/projects/{project.pk}/next-task/").json()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json"
        )
    assert response.status_code == 201
    [request] = receiver.requests
    assert request["headers"]["X-Refinery-Event"] == "judgment.submitted"
    assert json.loads(request["body"])["data"]["judgment"] == response.json()["id"]
    # A retried request (200, same judgment) is not a new event.
    with django_capture_on_commit_callbacks(execute=True):
        again = client.post(
            f"/api/v1/leases/{lease['id']}/submit/", {"answers": single_answers()}, format="json"
        )
    assert again.status_code == 200 and len(receiver.requests) == 1
    assert WebhookDelivery.objects.count() == 1


def test_nothing_is_sent_when_the_submit_transaction_rolls_back(
    project, bob, receiver, eager, django_capture_on_commit_callbacks
):
    hook(project, receiver.url)
    make_tasks(project, 1)
    lease = lease_acquire(project=project, rater=bob)
    with (
        django_capture_on_commit_callbacks(execute=True) as callbacks,
        pytest.raises(RuntimeError),
        transaction.atomic(),
    ):
        judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
        assert WebhookDelivery.objects.count() == 1  # recorded in the transaction ...
        raise RuntimeError("a later step fails")
    assert callbacks == [] and receiver.requests == []  # ... and gone with it, never sent
    assert not WebhookDelivery.objects.exists() and not Judgment.objects.exists()


def test_a_project_without_webhooks_costs_the_submission_one_query(
    project, bob, django_assert_num_queries, django_capture_on_commit_callbacks
):
    make_tasks(project, 2)
    lease = lease_acquire(project=project, rater=bob)
    with django_capture_on_commit_callbacks() as callbacks:
        webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    assert callbacks == []
    with django_assert_num_queries(1):
        webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    judgment_submit(lease_id=lease.pk, rater=bob, answers=single_answers())
    assert not WebhookDelivery.objects.exists()


# ---------------------------------------------------------------- retries, backoff, failure


def test_two_failures_then_success_is_delivered_exactly_once(
    project, bob, eager, django_capture_on_commit_callbacks
):
    flaky = Receiver(statuses=[500, 500, 200])
    try:
        hook(project, flaky.url)
        make_tasks(project, 1)
        with django_capture_on_commit_callbacks(execute=True):
            submit(project, bob)
    finally:
        flaky.close()
    assert len(flaky.requests) == 3
    assert len({request["headers"]["X-Refinery-Delivery"] for request in flaky.requests}) == 1
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert delivery.last_error == "" and delivery.delivered_at is not None
    # Running the task again sends nothing more.
    deliver_webhook.delay(delivery.pk)
    assert len(flaky.requests) == 3


def test_retries_wait_their_backoff_when_run_eagerly(
    project, bob, eager, settings, monkeypatch, django_capture_on_commit_callbacks
):
    settings.REFINERY_WEBHOOKS_BACKOFF_SECONDS = 0.2
    calls = []

    def attempt(**kwargs):
        calls.append(kwargs)
        return webhooks.webhook_delivery_attempt(**kwargs)

    monkeypatch.setattr("annotation.tasks.webhook_delivery_attempt", attempt)
    flaky = Receiver(statuses=[500, 500, 200])
    try:
        hook(project, flaky.url)
        make_tasks(project, 1)
        with django_capture_on_commit_callbacks(execute=True):
            submit(project, bob)
    finally:
        flaky.close()
    first, second, third = (request["at"] for request in flaky.requests)
    assert second - first >= 0.2 and third - second >= 0.4
    assert len(calls) == 3  # slept until each attempt was due, not asked again and again
    assert WebhookDelivery.objects.get().status == "delivered"


def test_a_broker_that_is_down_does_not_fail_the_submission(
    project, bob, monkeypatch, django_capture_on_commit_callbacks
):
    def broker_down(*args, **kwargs):
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(deliver_webhook, "delay", broker_down)
    hook(project, "http://127.0.0.1:9/")
    make_tasks(project, 1)
    with django_capture_on_commit_callbacks(execute=True):
        submission = submit(project, bob)
    assert submission.created and Judgment.objects.count() == 1
    assert WebhookDelivery.objects.get().status == "pending"  # overdue: a redelivery sends it


def test_a_receiver_that_keeps_failing_ends_failed_after_the_max_attempts(
    project, bob, eager, settings, django_capture_on_commit_callbacks
):
    settings.REFINERY_WEBHOOKS_MAX_ATTEMPTS = 3
    broken = Receiver(statuses=[503])
    try:
        hook(project, broken.url)
        make_tasks(project, 1)
        with django_capture_on_commit_callbacks(execute=True):
            submit(project, bob)
    finally:
        broken.close()
    assert len(broken.requests) == 3
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("failed", 3, 503)
    assert delivery.last_error == "HTTP 503" and delivery.next_attempt_at is None


def test_failed_attempts_wait_longer_each_time_up_to_the_cap(project, settings):
    settings.REFINERY_WEBHOOKS_BACKOFF_SECONDS = 1
    settings.REFINERY_WEBHOOKS_BACKOFF_MAX_SECONDS = 10
    assert [webhooks.backoff_seconds(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]
    # Nothing listens on port 9 of loopback: the attempt fails and the next one is 1 s away.
    webhook = hook(project, "http://127.0.0.1:9/")
    [delivery] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    assert webhooks.webhook_delivery_attempt(delivery_id=delivery.pk) == 1
    delivery.refresh_from_db()
    assert delivery.status == "pending" and delivery.attempts == 1 and delivery.last_status_code is None
    assert delivery.last_error.startswith("ConnectError")
    # A message that arrives early sends nothing and says how long to wait.
    early = webhooks.webhook_delivery_attempt(delivery_id=delivery.pk)
    assert 0 < early <= 1
    delivery.refresh_from_db()
    assert delivery.attempts == 1
    assert webhook.deliveries.count() == 1


def test_redirects_are_not_followed(project, bob, eager, settings, django_capture_on_commit_callbacks):
    settings.REFINERY_WEBHOOKS_MAX_ATTEMPTS = 1
    redirecting = Receiver(statuses=[302])
    try:
        hook(project, redirecting.url)
        make_tasks(project, 1)
        with django_capture_on_commit_callbacks(execute=True):
            submit(project, bob)
    finally:
        redirecting.close()
    delivery = WebhookDelivery.objects.get()
    assert (delivery.status, delivery.last_status_code) == ("failed", 302)
    assert "not followed" in delivery.last_error and len(redirecting.requests) == 1


def test_a_claimed_delivery_is_not_sent_twice(project, receiver):
    hook(project, receiver.url)
    [delivery] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    assert webhooks.webhook_delivery_attempt(delivery_id=delivery.pk) is None
    assert webhooks.webhook_delivery_attempt(delivery_id=delivery.pk) is None
    assert len(receiver.requests) == 1


def test_unknown_events_are_a_programming_error(project):
    with pytest.raises(ValueError, match="unknown webhook event"):
        webhooks.webhook_event_emit(project=project, event="judgment.eaten", payload={})


# ---------------------------------------------------------------- where webhooks may send


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://10.0.0.5/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:192.168.1.1]/hook",
        "http://localhost:8000/hook",
        "ftp://example.com/hook",
        "http://user:pw@example.com/hook",
    ],
)
def test_private_or_non_http_urls_are_refused_without_allow_private(project, alice, settings, url):
    settings.DEBUG = False
    settings.REFINERY_WEBHOOKS_ALLOW_PRIVATE = False
    response = api(alice).post(
        f"/api/v1/projects/{project.pk}/webhooks/",
        {"url": url, "events": ["judgment.submitted"]},
        format="json",
    )
    assert response.status_code == 400, response.json()
    assert response.json()["field"] == "url"
    assert not Webhook.objects.exists()


def test_delivery_to_a_name_resolving_to_a_private_address_is_refused(
    project, receiver, settings, monkeypatch
):
    """Checked when sending, on every address the name has: DNS may change after the URL was saved."""
    settings.REFINERY_WEBHOOKS_ALLOW_PRIVATE = False
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host == "hooks.example.com":  # a public address first, then a private one
            return [
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            ]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hook(project, f"http://hooks.example.com:{receiver.port}/hook")
    [delivery] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    assert webhooks.webhook_delivery_attempt(delivery_id=delivery.pk) is None
    delivery.refresh_from_db()
    assert delivery.status == "failed" and delivery.attempts == 1
    assert "private address (127.0.0.1)" in delivery.last_error
    assert receiver.requests == []


def test_delivery_connects_to_the_address_it_checked(project, receiver, monkeypatch):
    """The name is resolved once, by the check; the request keeps the URL's host in its Host header."""
    real_getaddrinfo = socket.getaddrinfo
    lookups = []

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        if host == "receiver.refinery.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real_getaddrinfo(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    hook(project, f"http://receiver.refinery.test:{receiver.port}/hook")
    [delivery] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    webhooks.webhook_delivery_attempt(delivery_id=delivery.pk)
    [request] = receiver.requests
    assert request["headers"]["Host"] == f"receiver.refinery.test:{receiver.port}"
    assert lookups.count("receiver.refinery.test") == 1
    delivery.refresh_from_db()
    assert delivery.status == "delivered"


# ---------------------------------------------------------------- the API: curators only


def test_curator_creates_a_webhook_and_sees_its_secret_only_then(project, alice, receiver):
    client = api(alice)
    created = client.post(
        f"/api/v1/projects/{project.pk}/webhooks/",
        {"url": receiver.url, "events": ["judgment.submitted", "adapter.promoted"]},
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    webhook = Webhook.objects.get()
    assert body["secret"] == webhook.secret and len(webhook.secret) >= 40
    assert body["created_by"] == "alice" and body["events"] == ["adapter.promoted", "judgment.submitted"]
    listed = client.get(f"/api/v1/projects/{project.pk}/webhooks/")
    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()] == [webhook.pk]
    assert "secret" not in listed.json()[0] and webhook.secret not in listed.content.decode()


def test_each_webhook_gets_its_own_secret(project, alice, receiver):
    for _ in range(2):
        api(alice).post(
            f"/api/v1/projects/{project.pk}/webhooks/",
            {"url": receiver.url, "events": ["judgment.submitted"]},
            format="json",
        )
    assert len(set(Webhook.objects.values_list("secret", flat=True))) == 2


@pytest.mark.parametrize("events", [[], ["judgment.eaten"], "judgment.submitted"])
def test_webhooks_need_known_events(project, alice, receiver, events):
    response = api(alice).post(
        f"/api/v1/projects/{project.pk}/webhooks/", {"url": receiver.url, "events": events}, format="json"
    )
    assert response.status_code == 400 and response.json()["field"].startswith("events")


def test_rater_cannot_list_or_create_webhooks(project, bob, receiver):
    hook(project, receiver.url)
    client = api(bob)
    assert client.get(f"/api/v1/projects/{project.pk}/webhooks/").status_code == 403
    response = client.post(
        f"/api/v1/projects/{project.pk}/webhooks/",
        {"url": receiver.url, "events": ["judgment.submitted"]},
        format="json",
    )
    assert response.status_code == 403
    assert Webhook.objects.count() == 1


def test_user_without_access_does_not_learn_the_project_or_its_webhooks_exist(project, charlie, receiver):
    webhook = hook(project, receiver.url)
    client = api(charlie)
    assert client.get(f"/api/v1/projects/{project.pk}/webhooks/").status_code == 404
    assert (
        client.post(
            f"/api/v1/projects/{project.pk}/webhooks/",
            {"url": receiver.url, "events": ["judgment.submitted"]},
            format="json",
        ).status_code
        == 404
    )
    assert client.delete(f"/api/v1/webhooks/{webhook.pk}/").status_code == 404
    assert Webhook.objects.count() == 1


def test_only_curators_delete_webhooks(project, alice, bob, receiver):
    webhook = hook(project, receiver.url)
    assert api(bob).delete(f"/api/v1/webhooks/{webhook.pk}/").status_code == 403
    assert Webhook.objects.filter(pk=webhook.pk).exists()
    assert api(alice).delete(f"/api/v1/webhooks/{webhook.pk}/").status_code == 204
    assert not Webhook.objects.exists()


def test_webhook_endpoints_are_in_the_schema(alice):
    schema = api(alice).get("/api/schema/", {"format": "json"}).json()
    assert set(schema["paths"]["/api/v1/projects/{project_id}/webhooks/"]) >= {"get", "post"}
    assert "delete" in schema["paths"]["/api/v1/webhooks/{webhook_id}/"]


# ---------------------------------------------------------------- the admin


@pytest.fixture
def curator(alice):
    alice.is_staff = True
    alice.save()
    alice.user_permissions.set(Permission.objects.filter(content_type__app_label="annotation"))
    return alice


def admin_client(user):
    client = Client()
    client.force_login(user)
    return client


def test_curator_sees_only_their_projects_webhooks_and_deliveries_in_the_admin(
    project, other_project, curator
):
    mine = hook(project, "http://127.0.0.1:9/mine")
    hook(other_project, "http://127.0.0.1:9/secret-of-b")
    webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    webhooks.webhook_event_emit(project=other_project, event="judgment.submitted", payload={})
    client = admin_client(curator)
    for model in ("webhook", "webhookdelivery"):
        response = client.get(reverse(f"admin:annotation_{model}_changelist"))
        assert response.status_code == 200
        assert "secret-of-b" not in response.content.decode()
        rows = list(response.context["cl"].queryset)
        assert len(rows) == 1 and getattr(rows[0], "webhook", rows[0]) == mine


def test_admin_shows_the_secret_once_when_a_webhook_is_added(project, curator, receiver):
    client = admin_client(curator)
    response = client.post(
        reverse("admin:annotation_webhook_add"),
        {"project": project.pk, "url": receiver.url, "events": ["judgment.submitted"], "active": "on"},
        follow=True,
    )
    webhook = Webhook.objects.get()
    assert webhook.created_by == curator and webhook.events == ["judgment.submitted"]
    assert webhook.secret in response.content.decode()
    page = client.get(reverse("admin:annotation_webhook_change", args=[webhook.pk])).content.decode()
    assert webhook.secret not in page


def test_admin_refuses_another_projects_webhook_for_a_curator(project, other_project, curator, receiver):
    response = admin_client(curator).post(
        reverse("admin:annotation_webhook_add"),
        {"project": other_project.pk, "url": receiver.url, "events": ["judgment.submitted"]},
    )
    assert response.status_code == 200 and "project" in response.context["adminform"].form.errors
    assert not Webhook.objects.exists()


def test_admin_redeliver_sends_a_failed_delivery_again(
    project, curator, eager, django_capture_on_commit_callbacks
):
    receiver_ok = Receiver(statuses=[200])
    try:
        webhook = hook(project, receiver_ok.url)
        [delivery] = webhooks.webhook_event_emit(
            project=project, event="judgment.submitted", payload={"n": 1}
        )
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            status="failed", attempts=5, last_status_code=500, last_error="HTTP 500"
        )
        with django_capture_on_commit_callbacks(execute=True):
            response = admin_client(curator).post(
                reverse("admin:annotation_webhookdelivery_changelist"),
                {"action": "redeliver", "_selected_action": [delivery.pk]},
                follow=True,
            )
        assert "1 delivery sent again" in response.content.decode()
    finally:
        receiver_ok.close()
    [request] = receiver_ok.requests
    assert request["headers"]["X-Refinery-Delivery"] == str(delivery.event_id)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempts, delivery.last_status_code) == ("delivered", 1, 200)
    assert webhook.deliveries.count() == 1


def test_redeliver_sends_an_overdue_pending_delivery_and_leaves_one_in_flight(
    project, receiver, eager, django_capture_on_commit_callbacks
):
    """A web process that dies between its commit and the broker leaves an overdue pending row."""
    hook(project, receiver.url)
    [overdue] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={"n": 1})
    [in_flight] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={"n": 2})
    WebhookDelivery.objects.filter(pk=in_flight.pk).update(
        attempts=1, next_attempt_at=timezone.now() + timedelta(seconds=60)
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert webhooks.webhook_deliveries_redeliver(deliveries=[overdue.pk, in_flight.pk]) == 1
    assert [json.loads(request["body"])["data"] for request in receiver.requests] == [{"n": 1}]
    overdue.refresh_from_db()
    in_flight.refresh_from_db()
    assert (overdue.status, overdue.attempts) == ("delivered", 1)
    assert (in_flight.status, in_flight.attempts) == ("pending", 1)


def test_delivery_log_cannot_be_edited_in_the_admin(project, curator):
    hook(project, "http://127.0.0.1:9/")
    [delivery] = webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    client = admin_client(curator)
    url = reverse("admin:annotation_webhookdelivery_change", args=[delivery.pk])
    assert client.get(url).status_code == 200
    client.post(url, {"status": "delivered"})
    delivery.refresh_from_db()
    assert delivery.status == "pending"
    assert client.get(reverse("admin:annotation_webhookdelivery_add")).status_code == 403


def test_deleting_a_project_removes_its_webhooks(project, receiver):
    hook(project, receiver.url)
    webhooks.webhook_event_emit(project=project, event="judgment.submitted", payload={})
    Project.objects.filter(pk=project.pk).delete()
    assert not Webhook.objects.exists() and not WebhookDelivery.objects.exists()
