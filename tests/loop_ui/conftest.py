"""Rounds, refinements and adapters built straight through the models: the pages only read them,
so no model is trained here."""

import hashlib

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from tests.curation_data import judge
from tests.factories import make_tasks


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_round(project, number, state="done", **fields):
    from feedback_loop.models import Round

    fields.setdefault("started_at", timezone.now())
    fields.setdefault(
        "config", {"selector": "instruct_rm", "n_refinements": 5, "data_mode": "cumulative-from-base"}
    )
    return Round.objects.create(project=project, number=number, state=state, **fields)


def make_adapter(
    round, *, parent=None, is_active=False, evaluation=None, judgments=(), train_loss=(2.0, 1.5)
):
    from feedback_loop.models import Adapter

    adapter = Adapter.objects.create(
        project=round.project,
        round=round,
        parent=parent,
        base_model="tiny-model",
        path=f"adapters/round-{round.number}",
        checksum=hashlib.sha256(f"{round.project_id}/{round.number}".encode()).hexdigest(),
        training_metrics={
            "train_loss": list(train_loss),
            "steps": len(train_loss),
            "examples": len(judgments),
        },
        evaluation=evaluation or {},
        is_active=is_active,
    )
    adapter.training_judgments.set(judgments)
    return adapter


def feedback_judgments(project, rater, n, *, feedback="Mention the deadline.", output=None, prefix="fb"):
    from annotation.models import Output

    tasks = make_tasks(project, n, prefix=prefix)
    if output is not None:
        for task in tasks:
            Output.objects.filter(pk__in=task.task_outputs.values("output_id")).update(text=output)
    return [judge(task, rater, {"feedback": feedback}) for task in tasks]


def make_staff_curator(user):
    """A staff curator (not a superuser) with the annotation and loop apps' permissions."""
    user.is_staff = True
    user.save()
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=["annotation", "feedback_loop"])
    )
    return user


@pytest.fixture
def alice_client(alice):
    return client_for(alice)
