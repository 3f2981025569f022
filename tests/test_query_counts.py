"""No page or list endpoint makes a query per row: each is read with the rows it shows, then with
three times as many, and must make the same number of queries both times.

Every URL pattern the project serves is listed below, either with how to read it or with why it
is not read (it only takes POSTs, or it is a redirect): a pattern added without either fails
`test_every_url_pattern_is_measured_or_says_why_not`. Every model admin's changelist, change,
add, delete and history pages are measured, found through the admin site's registry.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group, Permission
from django.core.cache import caches
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from django.utils import timezone

from tests.factories import QUESTIONS, make_tasks, output_ids, write_judgment

GROWTH = 2  # the large reading has 1 + GROWTH times the rows of the small one


@dataclass
class World:
    """A project with some of every row, and the users who read it."""

    root: object  # a superuser: the admin pages
    alice: object  # curates every project of the world: the curator pages and the API
    bob: object  # rates the main project: the rater's pages
    project: object = None
    first: dict = field(default_factory=dict)  # model → the row whose detail pages are read
    counter: itertools.count = field(default_factory=itertools.count)


def _grow(world: World, k: int) -> None:
    """Add k of every kind of row, most of them to the main project and its first round."""
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog
    from rest_framework.authtoken.models import Token

    from annotation import curation
    from annotation.models import AuditEvent, Lease, Membership, Project, Webhook, WebhookDelivery
    from feedback_loop.models import Adapter, LoopConfig, Refinement, Round
    from tests.loop_ui.conftest import make_adapter, make_round

    project, now = world.project, timezone.now()
    user_model = type(world.alice)
    for _ in range(k):
        i = next(world.counter)
        rater = user_model.objects.create_user(f"rater{i}")
        Token.objects.create(user=rater)
        Group.objects.create(name=f"group{i}").user_set.add(rater)
        Membership.objects.create(user=rater, project=project, role=Membership.Role.RATER)
        # Another project the curator sees, with its loop settings and a member.
        other = Project.objects.create(name=f"Other {i}", questions=QUESTIONS)
        Membership.objects.create(user=world.alice, project=other, role=Membership.Role.CURATOR)
        Membership.objects.create(user=rater, project=other, role=Membership.Role.RATER)
        LoopConfig.objects.create(project=other)
        # Tasks of each kind, judged by bob and the new rater, with their leases.
        tasks = [
            *make_tasks(project, 1, kind="single", prefix=f"s{i}-"),
            *make_tasks(project, 1, kind="pairwise", prefix=f"p{i}-"),
            *make_tasks(project, 1, kind="ranking", prefix=f"r{i}-"),
            *make_tasks(project, 1, gold=True, prefix=f"g{i}-"),
        ]
        tasks[-1].gold_answers = {"quality": {"helpful": 5, "accurate": 5}}
        tasks[-1].save()
        judgments = []
        for task in tasks:
            ids = output_ids(task)
            answers = {
                "single": {
                    "quality": ("likert", {"helpful": 5, "accurate": 4}),
                    "feedback": ("feedback", "Mention the deadline."),
                    "assumptions": ("rubric", {"flags": ["off_topic"]}),
                },
                "pairwise": {"preference": ("pairwise", {"preferred": ids[0], "strength": 2})},
                "ranking": {"order": ("ranking", {"ranking": ids})},
            }[task.kind]
            for who in (world.bob, rater):
                lease = Lease.objects.create(
                    task=task, rater=who, state=Lease.State.SUBMITTED, expires_at=now, display_order=ids
                )
                judgments.append(write_judgment(task, who, answers, lease=lease, time_spent_ms=1000 + i))
        Lease.objects.create(task=make_tasks(project, 1, prefix=f"l{i}-")[0], rater=rater, expires_at=now)
        curation.judgments_review(actor=world.alice, judgments=[judgments[0].pk], status="accepted")
        AuditEvent.objects.create(
            actor=world.alice, project=project, action="member_add", object_type="membership", object_id=i
        )
        # Webhooks and their deliveries; the first webhook's log grows too.
        webhook = Webhook.objects.create(
            project=project, url=f"https://hooks.example.com/{i}", events=["judgment.submitted"]
        )
        for hook in {webhook, world.first[Webhook]}:
            WebhookDelivery.objects.create(webhook=hook, event="judgment.submitted", payload={"n": i})
        # A round with its adapter and refinements; the first round gets refinements and tasks too.
        round = make_round(project, 1000 + i, started_by=world.alice)
        make_adapter(round, parent=world.first[Adapter], judgments=judgments)
        world.first[Adapter].training_judgments.add(*judgments)
        for target in (round, world.first[Round]):
            Refinement.objects.bulk_create(
                Refinement(
                    round=target, judgment=judgment, text=f"Better {i}", scores={"rm": 0.5}, selected=True
                )
                for judgment in judgments[:2]
            )
        for task in make_tasks(project, 1, prefix=f"n{i}-"):
            type(task).objects.filter(pk=task.pk).update(round_number=world.first[Round].number)
        AccessAttempt.objects.create(
            username=f"rater{i}", ip_address="10.0.0.1", user_agent="x", failures_since_start=1
        )
        AccessLog.objects.create(username=f"rater{i}", ip_address="10.0.0.1", user_agent="x")
        AccessFailureLog.objects.create(username=f"rater{i}", ip_address="10.0.0.1", user_agent="x")


@pytest.fixture
def world(db, django_user_model) -> World:
    from axes.models import AccessAttempt, AccessFailureLog, AccessLog
    from rest_framework.authtoken.models import Token

    from annotation.models import (
        Answer,
        AuditEvent,
        Judgment,
        Lease,
        Membership,
        Output,
        Project,
        Prompt,
        Task,
        Webhook,
        WebhookDelivery,
    )
    from feedback_loop.models import Adapter, LoopConfig, Refinement, Round
    from tests.loop_ui.conftest import make_adapter, make_round

    root = django_user_model.objects.create_superuser("root", password="pw-root-123")
    alice = django_user_model.objects.create_user("alice", password="pw-alice-123", is_staff=True)
    alice.user_permissions.set(
        Permission.objects.filter(content_type__app_label__in=["annotation", "feedback_loop"])
    )
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    project = Project.objects.create(name="Summaries", questions=QUESTIONS, overlap=3, gold_rate=0.0)
    for user, role in ((alice, "curator"), (bob, "rater"), (root, "admin")):
        Membership.objects.create(user=user, project=project, role=role)
    LoopConfig.objects.create(project=project)
    world = World(root=root, alice=alice, bob=bob, project=project)
    first_round = make_round(project, 1, started_by=alice)
    world.first.update(
        {
            Round: first_round,
            Adapter: make_adapter(first_round),
            Webhook: Webhook.objects.create(
                project=project, url="https://hooks.example.com/first", events=["judgment.submitted"]
            ),
        }
    )
    _grow(world, 1)
    group = Group.objects.first()
    world.first.update(
        {
            model: model.objects.order_by("pk").first()
            for model in (
                Project,
                Membership,
                Prompt,
                Output,
                Task,
                Lease,
                Judgment,
                Answer,
                AuditEvent,
                WebhookDelivery,
                LoopConfig,
                Refinement,
                Token,
                AccessAttempt,
                AccessLog,
                AccessFailureLog,
            )
        }
    )
    world.first[Project] = project
    world.first[django_user_model] = bob
    world.first[Group] = group
    from rest_framework.authtoken.admin import TokenProxy

    world.first[TokenProxy] = TokenProxy.objects.get(pk=world.first[Token].pk)
    return world


# ---------------------------------------------------------------- what is read, and how


@dataclass
class Reading:
    url: Callable[[World], str]
    user: str = "alice"  # which of the world's users reads it
    status: int = 200
    headers: dict = field(default_factory=dict)


def _project_url(name: str) -> Callable[[World], str]:
    return lambda w: reverse(name, args=[w.project.pk])


def _first_round(w: World):
    from feedback_loop.models import Round

    return w.first[Round]


def _first(model_path: str) -> Callable[[World], object]:
    def get(w: World):
        from django.apps import apps

        return w.first[apps.get_model(model_path)]

    return get


READINGS: dict[str, Reading] = {
    # The rater's and the curators' pages.
    "home": Reading(lambda w: reverse("home")),
    "annotate": Reading(_project_url("annotate"), user="bob"),
    "login": Reading(lambda w: reverse("login"), user="anonymous"),
    "curation-dashboard": Reading(_project_url("curation-dashboard")),
    "curation-raters": Reading(_project_url("curation-raters")),
    "curation-import": Reading(_project_url("curation-import")),
    "curation-export": Reading(
        lambda w: reverse("curation-export", args=[w.project.pk, "judgments", "jsonl"])
    ),
    "loop-rounds": Reading(_project_url("loop-rounds")),
    "loop-round": Reading(lambda w: reverse("loop-round", args=[w.project.pk, _first_round(w).number])),
    # The API.
    "api-root": Reading(lambda w: reverse("api-root")),
    "schema": Reading(lambda w: reverse("schema")),
    "api-docs": Reading(lambda w: reverse("api-docs")),
    "project-list": Reading(lambda w: reverse("project-list")),
    "project-detail": Reading(_project_url("project-detail")),
    "project-progress": Reading(_project_url("project-progress"), user="bob"),
    "prompt-list": Reading(lambda w: reverse("prompt-list") + f"?project={w.project.pk}"),
    "prompt-detail": Reading(lambda w: reverse("prompt-detail", args=[_first("annotation.Prompt")(w).pk])),
    "output-list": Reading(lambda w: reverse("output-list") + f"?project={w.project.pk}"),
    "output-detail": Reading(lambda w: reverse("output-detail", args=[_first("annotation.Output")(w).pk])),
    "task-list": Reading(lambda w: reverse("task-list") + f"?project={w.project.pk}"),
    "task-detail": Reading(lambda w: reverse("task-detail", args=[_first("annotation.Task")(w).pk])),
    "judgment-list": Reading(lambda w: reverse("judgment-list") + f"?project={w.project.pk}"),
    "judgment-list[rater]": Reading(lambda w: reverse("judgment-list"), user="bob"),
    "judgment-detail": Reading(
        lambda w: reverse("judgment-detail", args=[_first("annotation.Judgment")(w).pk])
    ),
    "project-export": Reading(lambda w: reverse("project-export", args=[w.project.pk]) + "?format=jsonl"),
    "project-webhooks": Reading(_project_url("project-webhooks")),
    "project-rounds": Reading(_project_url("project-rounds")),
    "round-detail": Reading(lambda w: reverse("round-detail", args=[_first_round(w).pk])),
    # The admin's own pages (every model admin's pages are added below).
    "admin:index": Reading(lambda w: reverse("admin:index"), user="root"),
    "admin:login": Reading(lambda w: reverse("admin:login"), user="anonymous"),
    "admin:password_change": Reading(lambda w: reverse("admin:password_change"), user="root"),
    "admin:password_change_done": Reading(lambda w: reverse("admin:password_change_done"), user="root"),
    "admin:jsi18n": Reading(lambda w: reverse("admin:jsi18n"), user="root"),
    "admin:autocomplete": Reading(
        lambda w: (
            reverse("admin:autocomplete")
            + "?app_label=annotation&model_name=membership&field_name=user&term=r"
        ),
        user="root",
    ),
}

# Patterns not read here, and why.
NOT_READ = {
    "logout": "POST only",
    "admin:logout": "POST only",
    "admin:view_on_site": "a redirect to the object's own page",
    "curation-member-add": "POST only",
    "curation-member-deactivate": "POST only",
    "loop-round-start": "POST only",
    "loop-round-retry": "POST only",
    "loop-round-cancel": "POST only",
    "round-retry": "POST only",
    "round-cancel": "POST only",
    "project-next-task": "POST only",
    "project-import": "POST only",
    "lease-submit": "POST only",
    "lease-skip": "POST only",
    "auth-token": "POST and DELETE only",
    "auth-token-rotate": "POST only",
    "webhook-detail": "PATCH and DELETE only",
    "admin:annotation_judgment_review": "POST only (the change page holds its form)",
}
# Unnamed patterns, by view: redirects and catch-alls.
NOT_READ_VIEWS = {
    "django.views.generic.base.RedirectView": "the admin's redirect from an object's id to its change page",
    "django.contrib.admin.sites.AdminSite.catch_all_view": "the admin's 404 for unknown paths",
    "annotation.api.views.endpoint_not_found": "the API's JSON 404",
}


def _admin_readings() -> dict[str, Reading]:
    readings = {}
    for model, model_admin in admin.site._registry.items():
        info = f"admin:{model._meta.app_label}_{model._meta.model_name}"

        def obj_url(w: World, name: str, model=model) -> str:
            return reverse(name, args=[w.first[model].pk])

        add_allowed = model_admin.has_add_permission(_FakeRequest())
        readings[f"{info}_changelist"] = Reading(lambda w, n=f"{info}_changelist": reverse(n), user="root")
        readings[f"{info}_add"] = Reading(
            lambda w, n=f"{info}_add": reverse(n), user="root", status=200 if add_allowed else 403
        )
        for page in ("change", "delete", "history"):
            readings[f"{info}_{page}"] = Reading(
                lambda w, n=f"{info}_{page}", get=obj_url: get(w, n),
                user="root",
                status=403 if page == "delete" and not _delete_allowed(model_admin) else 200,
            )
        if model._meta.model_name == "user":
            readings[f"{info}_password_change"] = Reading(
                lambda w, get=obj_url: get(w, "admin:auth_user_password_change"), user="root"
            )
        if model._meta.app_label in ("annotation", "feedback_loop"):
            # Curators are staff, not superusers: their lists are cut to the projects they curate.
            readings[f"{info}_changelist[curator]"] = Reading(
                lambda w, n=f"{info}_changelist": reverse(n), user="alice"
            )
    readings["admin:app_list"] = Reading(
        lambda w: reverse("admin:app_list", args=["annotation"]), user="root"
    )
    return readings


class _FakeRequest:
    """A superuser's request, for asking model admins what they allow."""

    class user:
        is_superuser = is_staff = is_active = True

        @staticmethod
        def has_perm(perm, obj=None):
            return True


def _delete_allowed(model_admin) -> bool:
    return model_admin.has_delete_permission(_FakeRequest())


ALL_READINGS = {**READINGS, **_admin_readings()}


def _patterns(patterns, namespace=""):
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            yield from _patterns(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern):
            yield (f"{namespace}{pattern.name}" if pattern.name else None), pattern.lookup_str


def test_every_url_pattern_is_measured_or_says_why_not():
    unaccounted = sorted(
        f"{name or '(unnamed)'} → {view}"
        for name, view in _patterns(get_resolver().url_patterns)
        if name not in ALL_READINGS and name not in NOT_READ and view not in NOT_READ_VIEWS
    )
    assert unaccounted == [], "add these to READINGS (or NOT_READ, saying why)"


def _client(world: World, who: str) -> Client:
    client = Client()
    if who != "anonymous":
        client.force_login(getattr(world, who))
    return client


def _read(client: Client, url: str, reading: Reading) -> list[str]:
    caches["stats"].clear()  # the figures are computed on every reading: that is what is measured
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, **reading.headers)
        if getattr(response, "streaming", False):
            b"".join(response.streaming_content)
    assert response.status_code == reading.status, (url, response.status_code)
    return [query["sql"] for query in queries.captured_queries]


@pytest.mark.parametrize("name", sorted(ALL_READINGS))
def test_queries_do_not_grow_with_the_rows_shown(world, name):
    reading = ALL_READINGS[name]
    client = _client(world, reading.user)
    url = reading.url(world)
    _read(client, url, reading)  # the first request of a client warms per-process caches
    small = _read(client, url, reading)
    _grow(world, GROWTH)
    large = _read(client, reading.url(world), reading)
    assert len(large) == len(small), _difference(small, large)


def _difference(small: list[str], large: list[str]) -> str:
    """The queries the large reading made more often than the small one, numbers blanked out."""
    shape = lambda sql: re.sub(r"\d+", "N", sql)[:300]  # noqa: E731
    more = Counter(map(shape, large)) - Counter(map(shape, small))
    less = Counter(map(shape, small)) - Counter(map(shape, large))
    return f"{len(small)} → {len(large)} queries; more: {dict(more)}; fewer: {dict(less)}"


def test_the_growth_adds_rows_every_page_shows(world):
    """The readings above are only worth something if the rows they list do grow."""
    from annotation.models import Judgment, Project, Task, Webhook
    from feedback_loop.models import Refinement

    def sizes():
        return [
            Project.objects.count(),
            Task.objects.count(),
            Judgment.objects.count(),
            world.first[Webhook].deliveries.count(),
            Refinement.objects.filter(round=_first_round(world)).count(),
            world.project.memberships.count(),
            world.first[Webhook].project.webhooks.count(),
        ]

    before = sizes()
    _grow(world, GROWTH)
    after = sizes()
    assert all(a > b for a, b in zip(after, before, strict=True)), (before, after)
