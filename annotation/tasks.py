"""Celery tasks of the human side: thin, idempotent, taking ids (see annotation.webhooks and
annotation.quality)."""

from __future__ import annotations

import time

from celery import shared_task

from annotation.quality import figures_refresh
from annotation.webhooks import webhook_delivery_attempt


@shared_task(bind=True, acks_late=True, ignore_result=True)
def deliver_webhook(self, delivery_id: int) -> None:
    """One attempt at a webhook delivery; the next one, if any, is enqueued with its backoff."""
    while (retry_in := webhook_delivery_attempt(delivery_id=delivery_id)) is not None:
        if not self.request.is_eager:
            self.apply_async((delivery_id,), countdown=retry_in)
            return
        # Run eagerly (CELERY_TASK_ALWAYS_EAGER) there is no broker to hold the next attempt
        # until it is due, and enqueueing it would run it at once, before it is due: wait here.
        time.sleep(retry_in)


@shared_task(name="annotation.refresh_figures", acks_late=True, ignore_result=True)
def refresh_figures(project_id: int, name: str) -> None:
    """Recompute one curator page's cached figures (annotation.quality), sent by a page view of a
    big project to REFINERY_BACKGROUND_QUEUE, whose workers run at a lower CPU priority."""
    figures_refresh(project_id=project_id, name=name)
