"""The curator pages' statistics are cached under each project's statistics versions: a second view
reads the cache; a curator's change makes the next view recompute, raters' new judgments once the
figures are STATS_MAX_AGE_SECONDS old (until then the page says how old they are).

The versions move on after a change commits: these tests commit (transactional database).
"""

from datetime import timedelta
from unittest.mock import patch

import numpy as np
import pytest
from django.core.cache import caches
from django.db import connection, transaction
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from annotation import agreement, curation, models, quality
from annotation.models import Membership, StatsVersion, stats_version
from annotation.services.judgments import judgment_submit
from annotation.services.leases import lease_acquire
from annotation.services.projects import project_update
from tests.curation_data import judge, likert_project
from tests.factories import make_tasks
from tests.test_agreement import KRIPPENDORFF_2011, NAN, curator_client, dashboard_stats

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def computed(monkeypatch):
    """Counts how often each page's figures are computed (the real computation still runs)."""
    calls = {"dashboard": 0, "raters": 0}

    def counting(name, real):
        def wrapper(project, **kwargs):
            calls[name] += 1
            return real(project, **kwargs)

        return wrapper

    monkeypatch.setattr(quality, "dashboard_compute", counting("dashboard", quality.dashboard_compute))
    monkeypatch.setattr(quality, "rater_figures", counting("raters", quality.rater_figures))
    return calls


def alpha_shown(client, project) -> str:
    return dashboard_stats(client, project)["score · clarity"]["alpha_ordinal"]


def test_a_second_dashboard_view_reads_the_cache_instead_of_the_judgments(krippendorff, alice, computed):
    project, _ = krippendorff
    client = curator_client(project, alice)
    with CaptureQueriesContext(connection) as first:
        assert alpha_shown(client, project) == "0.815"
    with CaptureQueriesContext(connection) as second:
        assert alpha_shown(client, project) == "0.815"
    assert computed["dashboard"] == 1
    read = [query["sql"] for query in second.captured_queries]
    assert not any("annotation_answer" in sql for sql in read), read
    assert len(second) < len(first)
    # The versions are one statement: the judgments counted, the curators' counter read.
    assert sum("annotation_statsversion" in sql for sql in read) == 1


def _submit(project, rater, value: int):
    lease = lease_acquire(project=project, rater=rater)
    return judgment_submit(lease_id=lease.pk, rater=rater, answers={"score": {"clarity": value}})


@pytest.fixture
def two_raters(db, alice, bob):
    project = likert_project("Two raters", overlap=2)
    Membership.objects.create(user=bob, project=project, role=Membership.Role.RATER)
    make_tasks(project, 2)
    return project


def test_a_submitted_judgment_moves_the_judged_version_on(two_raters, bob):
    project = two_raters
    before = stats_version(project.pk)
    _submit(project, bob, 2)
    judged, curated = stats_version(project.pk)
    assert (judged, curated) == (before[0] + 1, before[1])
    # Rolled back: the version stays.
    with pytest.raises(RuntimeError), transaction.atomic():
        _submit(project, bob, 3)
        raise RuntimeError
    assert stats_version(project.pk) == (judged, curated)


@override_settings(STATS_MAX_AGE_SECONDS=0)
def test_past_the_max_age_a_submitted_judgment_makes_the_next_view_recompute(
    two_raters, alice, bob, computed
):
    project = two_raters
    client = curator_client(project, alice)
    assert client.get(f"/projects/{project.pk}/dashboard/").context["review_counts"]["pending"] == 0
    _submit(project, bob, 2)
    page = client.get(f"/projects/{project.pk}/dashboard/")
    assert page.context["review_counts"]["pending"] == 1
    assert b"figures-as-of" not in page.content
    assert computed["dashboard"] == 2


@override_settings(STATS_MAX_AGE_SECONDS=3600)
def test_within_the_max_age_new_judgments_are_counted_but_not_recomputed(two_raters, alice, bob, computed):
    project = two_raters
    client = curator_client(project, alice)
    first = client.get(f"/projects/{project.pk}/dashboard/")
    assert first.context["review_counts"]["pending"] == 0 and b"figures-as-of" not in first.content
    _submit(project, bob, 2)
    _submit(project, bob, 3)
    page = client.get(f"/projects/{project.pk}/dashboard/")
    assert page.context["review_counts"]["pending"] == 0  # the cached figures
    assert computed["dashboard"] == 1
    shown = page.context["freshness"]
    assert shown.judgments_since == 2 and shown.as_of == first.context["freshness"].as_of
    text = page.content.decode()
    assert f"Figures as of {timezone.localtime(shown.as_of):%H:%M:%S} (2 judgments since)" in text
    raters = client.get(f"/projects/{project.pk}/raters/")
    assert raters.context["freshness"].judgments_since == 0  # first computed now
    # Once older than the max age, the next view recomputes (time moved on, not the setting).
    later = timezone.now() + timedelta(seconds=3601)
    with patch("annotation.quality.timezone.now", return_value=later):
        page = client.get(f"/projects/{project.pk}/dashboard/")
    assert page.context["review_counts"]["pending"] == 2 and computed["dashboard"] == 2
    assert b"figures-as-of" not in page.content


@override_settings(STATS_MAX_AGE_SECONDS=3600)
def test_a_curators_own_change_shows_at_once_within_the_max_age(two_raters, alice, bob, computed):
    project = two_raters
    client = curator_client(project, alice)
    _submit(project, bob, 2)
    assert client.get(f"/projects/{project.pk}/dashboard/").context["review_counts"]["pending"] == 1
    curation.judgments_review(actor=alice, judgments=project.judgments.all(), status="accepted")
    counts = client.get(f"/projects/{project.pk}/dashboard/").context["review_counts"]
    assert counts["pending"] == 0 and counts["accepted"] == 1
    assert computed["dashboard"] == 2


def test_a_curators_exclusion_changes_the_cached_agreement(krippendorff, coders, alice, computed):
    project, tasks = krippendorff
    client = curator_client(project, alice)
    assert alpha_shown(client, project) == "0.815"
    # Coder D's disagreement on unit 6 is excluded: the figure is the matrix without that cell.
    curation.judgments_review(
        actor=alice,
        judgments=project.judgments.filter(rater=coders[3], task=tasks[5]),
        status="excluded",
        reason="misread the scale",
    )
    expected = np.array(KRIPPENDORFF_2011)
    expected[3, 5] = NAN
    alpha = agreement.krippendorff_alpha(expected, "ordinal", value_domain=[1, 2, 3, 4, 5])
    assert alpha_shown(client, project) == f"{alpha:.3f}" != "0.815"
    assert computed["dashboard"] == 2


def test_deactivating_a_rater_with_their_judgments_excluded_changes_the_cached_agreement(
    krippendorff, coders, alice, computed
):
    project, _ = krippendorff
    for coder in coders:
        Membership.objects.create(user=coder, project=project, role=Membership.Role.RATER)
    client = curator_client(project, alice)
    assert alpha_shown(client, project) == "0.815"
    curation.rater_deactivate(
        actor=alice, project=project, user=coders[2], exclude_judgments=True, reason="random clicks"
    )
    without_c = np.delete(np.array(KRIPPENDORFF_2011), 2, axis=0)
    alpha = agreement.krippendorff_alpha(without_c, "ordinal", value_domain=[1, 2, 3, 4, 5])
    assert alpha_shown(client, project) == f"{alpha:.3f}"
    assert computed["dashboard"] == 2


def test_making_a_task_gold_changes_the_cached_agreement(krippendorff, alice, computed):
    project, tasks = krippendorff
    client = curator_client(project, alice)
    assert client.get(f"/projects/{project.pk}/dashboard/").context["agreement"][0].units == 11
    tasks[0].is_gold = True  # as the admin's task form saves it
    tasks[0].save()
    assert client.get(f"/projects/{project.pk}/dashboard/").context["agreement"][0].units == 10
    assert computed["dashboard"] == 2


def test_changing_the_questions_changes_the_cached_variables(krippendorff, alice, computed):
    project, _ = krippendorff
    client = curator_client(project, alice)
    assert list(dashboard_stats(client, project)) == ["score · clarity"]
    questions = [{"name": "score", "kind": "likert", "scale": [1, 5], "criteria": ["clarity", "tone"]}]
    project_update(project=project, questions=questions)
    assert list(dashboard_stats(client, project)) == ["score · clarity", "score · tone"]
    assert computed["dashboard"] == 2


def test_the_raters_page_caches_figures_but_reads_memberships_live(krippendorff, coders, alice, computed):
    project, tasks = krippendorff
    Membership.objects.create(user=coders[0], project=project, role=Membership.Role.RATER)
    client = curator_client(project, alice)
    page = client.get(f"/projects/{project.pk}/raters/")
    rows = {row.username: row for row in page.context["rows"]}
    assert rows["coder0"].judgments == 9 and rows["coder0"].role == "rater"
    assert rows["coder3"].judgments == 11 and rows["coder3"].role == ""  # judged, no membership

    Membership.objects.filter(user=coders[0], project=project).update(role=Membership.Role.CURATOR)
    coders[3].username = "dora"
    coders[3].save()
    rows = {row.username: row for row in client.get(f"/projects/{project.pk}/raters/").context["rows"]}
    assert rows["coder0"].role == "curator" and rows["dora"].judgments == 11
    assert computed["raters"] == 1

    judge(tasks[11], coders[0], {"score": {"clarity": 3}})
    rows = {row.username: row for row in client.get(f"/projects/{project.pk}/raters/").context["rows"]}
    assert rows["coder0"].judgments == 10
    assert computed["raters"] == 2


def test_a_deletion_moves_the_version_on_once_per_project(krippendorff, monkeypatch):
    project, tasks = krippendorff
    real, calls = models.stats_changed, []

    def counting(project_id):
        calls.append(project_id)
        real(project_id)

    monkeypatch.setattr(models, "stats_changed", counting)
    judged, curated = stats_version(project.pk)
    tasks[1].delete()  # and its four judgments, in cascade
    assert calls == [project.pk]
    assert stats_version(project.pk) == (judged - 4, curated + 1)


def test_saving_a_stale_copy_of_the_project_never_takes_the_version_back(krippendorff, coders):
    project, tasks = krippendorff
    stale = type(project).objects.get(pk=project.pk)
    _, before = stats_version(project.pk)
    judge(tasks[11], coders[0], {"score": {"clarity": 3}})
    stale.save()
    assert StatsVersion.objects.get(project_id=project.pk).curated == before + 2


def test_an_unreachable_cache_still_shows_the_dashboard(krippendorff, alice, monkeypatch):
    project, _ = krippendorff

    def down(*args, **kwargs):
        raise ConnectionError("cache down")

    monkeypatch.setattr(caches["stats"], "get", down)
    assert alpha_shown(curator_client(project, alice), project) == "0.815"


def test_imported_tasks_change_the_cached_progress(krippendorff, alice, computed):
    from annotation.importing import OutputRow, PromptRow
    from annotation.services.prompts import prompts_import

    project, _ = krippendorff
    client = curator_client(project, alice)
    assert client.get(f"/projects/{project.pk}/dashboard/").context["progress"]["tasks"] == 12
    row = PromptRow(line=1, external_id="new", text="Summarise this.", outputs=[OutputRow(text="An output.")])
    prompts_import(project=project, rows=[row], make_tasks="single")
    assert client.get(f"/projects/{project.pk}/dashboard/").context["progress"]["tasks"] == 13
    assert computed["dashboard"] == 2
