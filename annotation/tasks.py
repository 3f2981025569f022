"""Celery tasks of the human side: thin, idempotent, taking ids (see annotation.webhooks)."""

from __future__ import annotations

from celery import shared_task

from annotation.webhooks import webhook_delivery_attempt


@shared_task(acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: int) -> None:
    """One attempt at a webhook delivery; the next one, if any, is enqueued with its backoff."""
    retry_in = webhook_delivery_attempt(delivery_id=delivery_id)
    if retry_in is not None:
        deliver_webhook.apply_async((delivery_id,), countdown=retry_in)
