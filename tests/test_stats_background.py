"""A big project's curator figures are computed by a worker, not in the page view: the page sends
one recompute however many curators reload, and shows the last figures meanwhile (or says they are
being computed); the worker stores them where every web process reads them, a shared Redis cache.

Small projects, and deployments without a shared cache, compute in the page as before. These tests
commit (the statistics versions move on after a commit) and need Redis on 127.0.0.1:6379.
"""

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from django.core.cache import caches
from django.db import connection
from django.test.utils import CaptureQueriesContext
from kombu.exceptions import OperationalError

from annotation import agreement, curation, quality
from annotation.models import Membership, stats_version
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire
from annotation.tasks import refresh_figures
from config.priority import autogroup_nice, background_cgroup
from tests.curation_data import judge
from tests.test_agreement import KRIPPENDORFF_2011, curator_client, dashboard_stats

pytestmark = pytest.mark.django_db(transaction=True)

STATS_REDIS = "redis://127.0.0.1:6379/5"
JUDGMENTS = int(np.count_nonzero(~np.isnan(np.array(KRIPPENDORFF_2011))))  # 41


@pytest.fixture
def shared_cache(settings):
    """The statistics cache in Redis, as with STATS_CACHE_URL; projects of more than 10 judgments
    are big."""
    try:
        redis.Redis.from_url(STATS_REDIS).ping()
    except redis.ConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    settings.STATS_CACHE_URL = STATS_REDIS
    settings.CACHES = {
        **settings.CACHES,
        "stats": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": STATS_REDIS},
    }
    settings.STATS_INLINE_MAX_JUDGMENTS = 10
    settings.STATS_MAX_AGE_SECONDS = 3600
    cache = caches["stats"]
    cache.clear()
    yield cache
    cache.clear()


class Broker:
    """Stands in for the Celery app as the page sends the recompute: records each message, or fails
    as an unreachable broker does."""

    def __init__(self):
        self.sent: list[tuple[tuple, dict]] = []
        self.down = False

    def send_task(self, name, args, **options):
        assert name == "annotation.refresh_figures" == refresh_figures.name
        if self.down:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append((tuple(args), options))


@pytest.fixture
def broker(monkeypatch):
    broker = Broker()
    monkeypatch.setattr(quality, "current_app", broker)
    return broker


@pytest.fixture
def computed(monkeypatch):
    """How often the page figures are computed, by name (the real computation still runs)."""
    calls = {"dashboard": 0, "raters": 0}
    real = quality.figures_compute

    def counting(project, name, **kwargs):
        calls[name] += 1
        return real(project, name, **kwargs)

    monkeypatch.setattr(quality, "figures_compute", counting)
    return calls


def worker_recomputes(project, name: str) -> None:
    """What the background worker runs for a message the page sent (the task, run here)."""
    refresh_figures(project.pk, name)


def dashboard(client, project):
    page = client.get(f"/projects/{project.pk}/dashboard/")
    assert page.status_code == 200
    return page


def test_two_curators_viewing_a_big_project_without_figures_send_one_recompute_and_see_it_computing(
    shared_cache, broker, computed, krippendorff, alice, bob
):
    project, _ = krippendorff
    first, second = curator_client(project, alice), curator_client(project, bob)
    pages = [dashboard(first, project), dashboard(second, project), dashboard(first, project)]
    assert broker.sent == [((project.pk, "dashboard"), {"queue": "background", "retry": False})]
    assert computed["dashboard"] == 0
    for page in pages:
        text = page.content.decode()
        assert page.context["figures"] is None
        assert f"Computing the figures for {JUDGMENTS} judgments…" in text
        assert '<meta http-equiv="refresh" content="5">' in text
        assert 'id="agreement"' not in text
        # The rest of the page is read live.
        assert "active raters" in text and "Exports" in text and "Recent curation" in text

    raters = curator_client(project, alice).get(f"/projects/{project.pk}/raters/")
    assert raters.status_code == 200 and computed["raters"] == 0
    assert [args for args, _ in broker.sent] == [(project.pk, "dashboard"), (project.pk, "raters")]
    assert {row.username for row in raters.context["rows"]} == {"alice", "bob"}  # members, listed live
    assert "computing…" in raters.content.decode() and "figures-computing" in raters.content.decode()


def test_the_worker_stores_the_figures_under_the_versions_and_the_next_view_shows_them(
    shared_cache, broker, computed, krippendorff, alice
):
    project, _ = krippendorff
    client = curator_client(project, alice)
    dashboard(client, project)
    worker_recomputes(project, "dashboard")
    entry = shared_cache.get(f"stats:{quality.FIGURES_FORMAT}:{project.pk}:dashboard")
    assert (entry.judged, entry.curated) == stats_version(project.pk)
    assert shared_cache.get(f"stats:{quality.FIGURES_FORMAT}:{project.pk}:dashboard:refresh") is None

    page = dashboard(client, project)
    assert dashboard_stats(client, project)["score · clarity"]["alpha_ordinal"] == "0.815"
    assert page.context["progress"]["judgments"] == JUDGMENTS
    assert b"figures-computing" not in page.content and b"figures-as-of" not in page.content
    assert b'http-equiv="refresh"' not in page.content
    assert len(broker.sent) == 1 and computed["dashboard"] == 1  # once, by the worker

    # A second delivery of the same message finds the figures current and computes nothing.
    worker_recomputes(project, "dashboard")
    assert computed["dashboard"] == 1


def test_after_a_curators_change_the_last_figures_show_as_recomputing_until_the_worker_is_done(
    shared_cache, broker, computed, krippendorff, coders, alice, bob
):
    project, units = krippendorff
    client = curator_client(project, alice)
    dashboard(client, project)
    worker_recomputes(project, "dashboard")
    as_of = dashboard(client, project).context["freshness"].as_of
    curation.judgments_review(
        actor=alice,
        judgments=project.judgments.filter(rater=coders[3], task=units[5]),
        status="excluded",
        reason="misread the scale",
    )
    views = [dashboard(client, project), dashboard(curator_client(project, bob), project)]
    assert len(broker.sent) == 2  # the first figures', then this change's: one for both views
    for page in views:
        shown = page.context["freshness"]
        assert shown.as_of == as_of and shown.recomputing and shown.outdated
        assert page.context["agreement"][0].alpha_ordinal == pytest.approx(0.815, abs=5e-4)
        assert 'id="figures-recomputing">recomputing…' in page.content.decode()
        assert b'http-equiv="refresh"' not in page.content

    worker_recomputes(project, "dashboard")
    expected = np.array(KRIPPENDORFF_2011)
    expected[3, 5] = np.nan
    alpha = agreement.krippendorff_alpha(expected, "ordinal", value_domain=[1, 2, 3, 4, 5])
    page = dashboard(client, project)
    assert page.context["agreement"][0].alpha_ordinal == pytest.approx(alpha)
    assert not page.context["freshness"].recomputing and b"figures-as-of" not in page.content


def test_an_unreachable_broker_shows_the_last_figures_and_computes_only_the_first_ones(
    shared_cache, broker, computed, krippendorff, coders, alice, caplog
):
    project, units = krippendorff
    client = curator_client(project, alice)
    broker.down = True
    with caplog.at_level(logging.WARNING, logger="annotation.quality"):
        page = dashboard(client, project)
    # No figures at all: the page computes them itself rather than never showing any.
    assert page.context["agreement"][0].alpha_ordinal == pytest.approx(0.815, abs=5e-4)
    assert computed["dashboard"] == 1
    assert "could not send the recompute of dashboard" in caplog.text

    judge(units[11], coders[0], {"score": {"clarity": 3}})  # a curator-side save: curated moves on
    for _ in range(2):
        page = dashboard(client, project)
        shown = page.context["freshness"]
        assert shown.outdated and not shown.recomputing
        assert "could not be recomputed just now" in page.content.decode()
    assert computed["dashboard"] == 1  # the last figures, not computed in the page

    broker.down = False  # back: the lock was released, so the next view sends
    assert dashboard(client, project).context["freshness"].recomputing
    assert len(broker.sent) == 1


def _judgment_counts(client, project) -> tuple[int, int]:
    """A dashboard view's counts of the project's judgments: (in full, on from a shared count)."""
    with CaptureQueriesContext(connection) as queries:
        dashboard(client, project)
    counts = [
        query["sql"]
        for query in queries.captured_queries
        if re.search(r'COUNT\(\*\) FROM "?annotation_judgment\b', query["sql"])
    ]
    since = sum(" > " in sql for sql in counts)
    return len(counts) - since, since


def _rater_submits(project, rater) -> None:
    """A judgment through the queue, as a rater submits it: the curated version stays."""
    Membership.objects.get_or_create(user=rater, project=project, defaults={"role": Membership.Role.RATER})
    lease = lease_acquire(project=project, rater=rater)
    judgment_submit(lease_id=lease.pk, rater=rater, answers={"score": {"clarity": 3}})


def test_a_big_projects_judgments_are_counted_in_full_once_in_a_while_and_on_from_there(
    shared_cache, broker, krippendorff, coders, alice, bob, settings, django_user_model
):
    """Counting a big project's judgments costs the database tens of milliseconds at the raters'
    priority: page views share one full count, theirs or the worker's, for
    STATS_JUDGED_COUNT_SECONDS, and count only the judgments added since. A rater's submission is
    counted at once; a curator's change too, and it makes the next view count in full."""
    project, units = krippendorff
    settings.STATS_JUDGED_COUNT_SECONDS = 3600
    first, second = curator_client(project, alice), curator_client(project, bob)
    assert _judgment_counts(first, project) == (1, 0)
    worker_recomputes(project, "dashboard")
    assert _judgment_counts(second, project) == (0, 1)  # on from the first view's count
    shown = dashboard(first, project).context["freshness"]
    assert shown.judgments == JUDGMENTS and not shown.recomputing

    _rater_submits(project, django_user_model.objects.create_user("erin"))
    assert _judgment_counts(first, project) == (0, 1)
    shown = dashboard(second, project).context["freshness"]
    assert (shown.judgments, shown.judgments_since, shown.recomputing) == (JUDGMENTS + 1, 1, False)

    judge(units[11], coders[0], {"score": {"clarity": 3}})  # a curator-side save: curated moves on
    assert _judgment_counts(second, project) == (1, 1)  # seen in the count on, then counted in full
    page = dashboard(second, project)
    assert page.context["freshness"].recomputing and len(broker.sent) == 2  # seen at once
    worker_recomputes(project, "dashboard")  # its count is shared too
    assert _judgment_counts(first, project) == (0, 1)
    shown = dashboard(first, project).context["freshness"]
    assert not shown.recomputing and shown.judgments == JUDGMENTS + 2  # the worker's figures, served
    assert len(broker.sent) == 2

    shared_cache.delete(f"stats:judged:{project.pk}")  # the count's time is up
    assert _judgment_counts(first, project) == (1, 0)
    settings.STATS_JUDGED_COUNT_SECONDS = 0
    assert [_judgment_counts(first, project) for _ in range(2)] == [(1, 0), (1, 0)]


def test_a_small_project_computes_in_the_page(shared_cache, broker, computed, krippendorff, alice, settings):
    project, _ = krippendorff
    settings.STATS_INLINE_MAX_JUDGMENTS = JUDGMENTS
    client = curator_client(project, alice)
    assert dashboard_stats(client, project)["score · clarity"]["alpha_ordinal"] == "0.815"
    assert broker.sent == [] and computed["dashboard"] == 1


def test_without_a_shared_cache_a_big_project_computes_in_the_page(
    broker, computed, krippendorff, alice, settings
):
    # The worker's figures would stay in its own per-process cache: the page computes them.
    project, _ = krippendorff
    settings.STATS_INLINE_MAX_JUDGMENTS = 10
    client = curator_client(project, alice)
    assert dashboard_stats(client, project)["score · clarity"]["alpha_ordinal"] == "0.815"
    assert broker.sent == [] and computed["dashboard"] == 1


_NICE_CHECK = """
import os, sys, types
import django
django.setup()
from django.conf import settings
from config.celery import app, lower_the_priority_of_background_workers
from config.priority import autogroup_nice, current_background_cgroup
app.amqp.queues.select(sys.argv[1].split(","))
lower_the_priority_of_background_workers(sender=types.SimpleNamespace(app=app))
print(current_background_cgroup(settings.BACKGROUND_CGROUP) is not None, os.getpriority(os.PRIO_PROCESS, 0), autogroup_nice())
"""


@pytest.mark.parametrize(("queues", "nice"), [("background", 10), ("default,background", 0), ("default", 0)])
def test_only_a_worker_consuming_the_background_queue_alone_lowers_its_priority(queues, nice, settings):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "REFINERY_BACKGROUND_NICE": "10"}
    out = subprocess.run(
        [sys.executable, "-c", _NICE_CHECK, queues],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ours = os.getpriority(os.PRIO_PROCESS, 0)  # the child starts with it
    in_idle_group, own_nice = out.split()[:2]
    assert int(own_nice) == (max(ours, nice) if nice else ours)
    # ... and moves into the idle cgroup where the machine lets it (config.priority)
    can = background_cgroup(settings.BACKGROUND_CGROUP) is not None
    assert in_idle_group == str(bool(nice) and can)


@pytest.mark.skipif(autogroup_nice() is None, reason="no scheduling autogroups on this kernel")
@pytest.mark.parametrize(("own_session", "lowered"), [(True, True), (False, False)])
def test_a_background_worker_leading_its_session_lowers_its_autogroup_too(own_session, lowered):
    """With autogroups a nice value only ranks a process within its session: a worker in a session
    of its own lowers the whole group, one sharing a session leaves it to the others in it."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "REFINERY_BACKGROUND_NICE": "10"}
    out = subprocess.run(
        [sys.executable, "-c", _NICE_CHECK, "background"],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        start_new_session=own_session,
    ).stdout
    group = int(out.split()[-1])
    assert group == (10 if lowered else autogroup_nice())


def test_members_are_listed_while_the_raters_figures_are_computed(
    shared_cache, broker, krippendorff, coders, alice
):
    project, _ = krippendorff
    Membership.objects.create(user=coders[0], project=project, role=Membership.Role.RATER)
    client = curator_client(project, alice)
    page = client.get(f"/projects/{project.pk}/raters/")
    assert {row.username for row in page.context["rows"]} == {"alice", "coder0"}
    worker_recomputes(project, "raters")
    rows = {row.username: row for row in client.get(f"/projects/{project.pk}/raters/").context["rows"]}
    assert rows["coder0"].judgments == 9 and rows["coder3"].judgments == 11


@pytest.fixture
def tables_read(monkeypatch):
    """How often the worker reads a project's answer table (the real reading still runs)."""
    reads = []
    real = quality.answer_table

    def counting(project, variables):
        reads.append(project.pk)
        return real(project, variables)

    monkeypatch.setattr(quality, "answer_table", counting)
    return reads


def test_the_worker_computes_both_pages_shown_from_one_reading_of_the_answers(
    shared_cache, broker, computed, tables_read, krippendorff, alice
):
    project, _ = krippendorff
    client = curator_client(project, alice)
    dashboard(client, project)
    assert client.get(f"/projects/{project.pk}/raters/").status_code == 200
    assert [args for args, _ in broker.sent] == [(project.pk, "dashboard"), (project.pk, "raters")]

    worker_recomputes(project, "dashboard")
    assert computed == {"dashboard": 1, "raters": 1} and tables_read == [project.pk]
    worker_recomputes(project, "raters")  # its own message finds its figures current
    assert computed == {"dashboard": 1, "raters": 1} and tables_read == [project.pk]
    assert shared_cache.get(f"stats:{quality.FIGURES_FORMAT}:{project.pk}:raters:refresh") is None

    together = shared_cache.get(f"stats:{quality.FIGURES_FORMAT}:{project.pk}:raters").value
    assert together == quality.rater_figures(project)  # as computed alone
    tables_read.clear()
    rows = {row.username: row for row in client.get(f"/projects/{project.pk}/raters/").context["rows"]}
    assert rows["coder0"].judgments == 9 and sum(row.judgments for row in rows.values()) == JUDGMENTS
    assert dashboard_stats(client, project)["score · clarity"]["alpha_ordinal"] == "0.815"

    # After a curator's change, both are recomputed together, once shown again.
    curation.judgments_review(
        actor=alice, judgments=project.judgments.all()[:1], status="excluded", reason="a test"
    )
    dashboard(client, project)
    client.get(f"/projects/{project.pk}/raters/")
    worker_recomputes(project, "raters")
    assert computed == {"dashboard": 2, "raters": 2} and tables_read == [project.pk]


def test_the_worker_computes_only_the_page_asked_for_when_the_other_is_not_shown(
    shared_cache, broker, computed, tables_read, krippendorff, alice
):
    project, _ = krippendorff
    dashboard(curator_client(project, alice), project)
    worker_recomputes(project, "dashboard")
    assert computed == {"dashboard": 1, "raters": 0} and tables_read == [project.pk]
