"""Webhooks: a project's events sent as signed JSON to the URLs its curators registered.

An event is recorded, never sent, by `webhook_event_emit`: one WebhookDelivery row per active
webhook that wants it, written in the caller's transaction, and the Celery task
`annotation.tasks.deliver_webhook` is enqueued for each row only once that transaction commits.
A rolled-back submission therefore sends nothing, and a committed one is never lost between
the database and the broker's queue for longer than a crash of the web process right after the
commit (the row stays pending and overdue; `webhook_deliveries_redeliver`, the admin's
"Send selected deliveries again", sends it).

Each attempt (`webhook_delivery_attempt`) claims its row with a conditional update, POSTs

    X-Refinery-Event: judgment.submitted
    X-Refinery-Delivery: <event id, the same on every attempt>
    X-Refinery-Timestamp: <unix seconds>
    X-Refinery-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed by the secret>

and marks it delivered on a 2xx; anything else (another status, a redirect, a timeout, a refused
connection) is retried after base × 2^(attempt − 1) seconds, capped, until the attempts run out
and the row is marked failed. The body is `{"id", "event", "created_at", "project", "data"}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from annotation.models import Project, Webhook, WebhookDelivery
from annotation.webhook_urls import HostNotResolved, WebhookURLRefused, resolve_public, url_parts

USER_AGENT = "Refinery-Webhooks/1"
ERROR_LENGTH = WebhookDelivery._meta.get_field("last_error").max_length

# Every submission asks this of its project (see judgment_submit); one probe of
# webhook_project_idx, written in SQL like the queue's other hot reads.
_ACTIVE_WEBHOOKS = "SELECT id, events FROM annotation_webhook WHERE project_id = %s AND active = %s"


def webhook_event_emit(*, project: Project | int, event: str, payload: dict) -> list[WebhookDelivery]:
    """Record `event` for every active webhook of the project that wants it; send after commit.

    Call it inside the transaction that makes the event true, so that nothing is sent for a
    write that is rolled back. `payload` becomes the body's "data" and must be JSON-serialisable
    (dates, UUIDs and decimals are fine). A project without webhooks costs one indexed query.

    The loop reports its events the same way, from the service that changes the row, inside
    that service's transaction (round_advance, round_fail, adapter_promote …):

        webhook_event_emit(project=round.project_id, event="round.state_changed",
                           payload={"round": round.pk, "number": round.number,
                                    "from": old_state, "to": new_state, "error": round.error})
        webhook_event_emit(project=adapter.project_id, event="adapter.promoted",
                           payload={"adapter": adapter.pk, "round": adapter.round_id,
                                    "base_model": adapter.base_model, "checksum": adapter.checksum,
                                    "evaluation": adapter.evaluation})
    """
    if event not in Webhook.Event.values:
        raise ValueError(f"unknown webhook event {event!r}")
    project_id = project if isinstance(project, int) else project.pk
    with connection.cursor() as cursor:
        cursor.execute(_ACTIVE_WEBHOOKS, [project_id, True])
        rows = cursor.fetchall()
    if not rows:
        return []
    # A JSON column comes back as text from a plain cursor (on SQLite and on PostgreSQL alike).
    wanted = [
        pk for pk, events in rows if event in (json.loads(events) if isinstance(events, str) else events)
    ]
    if not wanted:
        return []
    now = timezone.now()
    deliveries = WebhookDelivery.objects.bulk_create(
        WebhookDelivery(
            webhook_id=webhook_id,
            event=event,
            payload=payload,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for webhook_id in wanted
    )
    for delivery in deliveries:
        _enqueue_on_commit(delivery.pk)
    return deliveries


def _enqueue_on_commit(delivery_id: int) -> None:
    from annotation.tasks import deliver_webhook  # the task module imports this one

    def enqueue_delivery() -> None:  # a named function: Django logs a robust callback's __qualname__
        deliver_webhook.delay(delivery_id)

    # Robust: a broker that is down must not turn a committed submission into an error; the
    # row stays pending and overdue, and a redelivery sends it.
    transaction.on_commit(enqueue_delivery, robust=True)


def webhook_create(
    *,
    project: Project,
    url: str,
    events: Iterable[str],
    created_by: AbstractBaseUser | None,
    active: bool = True,
) -> Webhook:
    """A new webhook with a fresh secret; its `secret` is for the creator's eyes, this once."""
    webhook = Webhook(project=project, url=url, events=list(events), active=active, created_by=created_by)
    webhook.full_clean()
    webhook.save()
    return webhook


def webhook_delete(*, webhook: Webhook) -> None:
    """Remove a webhook and its delivery log; deliveries in flight find their row gone and stop."""
    webhook.delete()


def webhook_deliveries_redeliver(*, deliveries: Iterable[int]) -> int:
    """Send deliveries again; returns how many were sent.

    Delivered and failed ones start a fresh set of attempts. Pending ones are sent only if they
    are overdue: a web process that died between its commit and the broker leaves such a row
    behind, and the claim in webhook_delivery_attempt keeps a duplicate message from sending
    twice. Pending ones that are due later are on their way and left alone. The event id stays
    the same, so a receiver that already handled the event can tell.
    """
    now = timezone.now()
    count = 0
    with transaction.atomic():
        for delivery_id in deliveries:
            reset = (
                WebhookDelivery.objects.filter(pk=delivery_id)
                .exclude(status=WebhookDelivery.Status.PENDING)
                .update(
                    status=WebhookDelivery.Status.PENDING,
                    attempts=0,
                    next_attempt_at=now,
                    updated_at=now,
                    delivered_at=None,
                )
            )
            if (
                reset
                or WebhookDelivery.objects.filter(
                    pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
                ).exists()
            ):
                _enqueue_on_commit(delivery_id)
                count += 1
    return count


def backoff_seconds(attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: base, 2 × base, 4 × base …, capped."""
    base = float(settings.REFINERY_WEBHOOKS_BACKOFF_SECONDS)
    return min(base * 2 ** max(attempts - 1, 0), float(settings.REFINERY_WEBHOOKS_BACKOFF_MAX_SECONDS))


def signature(*, secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def delivery_body(delivery: WebhookDelivery) -> bytes:
    return json.dumps(
        {
            "id": str(delivery.event_id),
            "event": delivery.event,
            "created_at": delivery.created_at.isoformat(),
            "project": delivery.webhook.project_id,
            "data": delivery.payload,
        },
        cls=DjangoJSONEncoder,
        separators=(",", ":"),
    ).encode()


def webhook_delivery_attempt(*, delivery_id: int) -> float | None:
    """Make the next attempt at a delivery. Returns the seconds until another attempt is due, or
    None when there is nothing left to do (delivered, failed, or gone).

    The attempt is claimed with a conditional update on the row (pending, and due), which also
    pushes `next_attempt_at` past the attempt's timeout: of two workers holding the same message,
    one sends and the other is told when to look again. If the worker dies mid-attempt, the
    message comes back (acks_late) and the attempt is made again once that time has passed.
    """
    now = timezone.now()
    timeout = float(settings.REFINERY_WEBHOOKS_TIMEOUT_SECONDS)
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, status=WebhookDelivery.Status.PENDING, next_attempt_at__lte=now
    ).update(
        attempts=F("attempts") + 1, next_attempt_at=now + timedelta(seconds=2 * timeout + 30), updated_at=now
    )
    delivery = WebhookDelivery.objects.select_related("webhook").filter(pk=delivery_id).first()
    if delivery is None or delivery.status != WebhookDelivery.Status.PENDING:
        return None
    if not claimed:
        # Another worker is on it, or the next attempt is not due yet.
        return max((delivery.next_attempt_at - now).total_seconds(), 0.0)

    return _record(delivery, _post(delivery, timeout=timeout), now=timezone.now())


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None = None
    error: str = ""
    final: bool = False  # waiting will not help (a refused address, a switched-off webhook)

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _post(delivery: WebhookDelivery, *, timeout: float) -> _Outcome:
    """POST the delivery once."""
    webhook = delivery.webhook
    if not webhook.active:
        return _Outcome(error="the webhook was deactivated", final=True)
    try:
        scheme, host, port = url_parts(webhook.url)
        address = resolve_public(host, port)
    except HostNotResolved as error:
        return _Outcome(error=str(error))
    except WebhookURLRefused as error:
        return _Outcome(error=f"refused: {error}", final=True)
    timestamp = str(int(time.time()))
    body = delivery_body(delivery)
    request_url = httpx.URL(webhook.url)
    headers = {
        # The connection goes to the address checked above, not to a second lookup of the name.
        "Host": request_url.netloc.decode("ascii"),
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Refinery-Event": delivery.event,
        "X-Refinery-Delivery": str(delivery.event_id),
        "X-Refinery-Timestamp": timestamp,
        "X-Refinery-Signature": signature(secret=webhook.secret, timestamp=timestamp, body=body),
    }
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    try:
        # Proxies from the environment are ignored: the check above is about where we connect.
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST",
                request_url.copy_with(host=address),
                content=body,
                headers=headers,
                extensions=extensions,
            )
            # The response body is never read: a receiver cannot make the worker hold a large one.
            response = client.send(request, stream=True)
            response.close()
    except httpx.HTTPError as error:
        return _Outcome(error=f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    if 200 <= response.status_code < 300:
        return _Outcome(status_code=response.status_code)
    if response.is_redirect:
        location = response.headers.get("location", "?")
        return _Outcome(status_code=response.status_code, error=f"redirect to {location} not followed")
    return _Outcome(status_code=response.status_code, error=f"HTTP {response.status_code}")


def _record(delivery: WebhookDelivery, outcome: _Outcome, *, now: datetime) -> float | None:
    fields: dict = {
        "last_status_code": outcome.status_code,
        "last_error": outcome.error[:ERROR_LENGTH],
        "updated_at": now,
    }
    retry_in = None
    if outcome.delivered:
        fields.update(status=WebhookDelivery.Status.DELIVERED, delivered_at=now, next_attempt_at=None)
    elif outcome.final or delivery.attempts >= settings.REFINERY_WEBHOOKS_MAX_ATTEMPTS:
        fields.update(status=WebhookDelivery.Status.FAILED, next_attempt_at=None)
    else:
        retry_in = backoff_seconds(delivery.attempts)
        fields["next_attempt_at"] = now + timedelta(seconds=retry_in)
    # Only if nobody reset the row meanwhile (a redelivery starts its own attempts).
    WebhookDelivery.objects.filter(
        pk=delivery.pk, status=WebhookDelivery.Status.PENDING, attempts=delivery.attempts
    ).update(**fields)
    return retry_in
