"""The cast of every test: alice curates project A, bob rates it, charlie has no access,
dave rates project B only."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.factories import QUESTIONS


@pytest.fixture
def users(db, django_user_model):
    make = django_user_model.objects.create_user
    return {
        "alice": make("alice", password="pw-alice-123"),
        "bob": make("bob", password="pw-bob-123"),
        "charlie": make("charlie", password="pw-charlie-123"),
        "dave": make("dave", password="pw-dave-123"),
    }


@pytest.fixture
def alice(users):
    return users["alice"]


@pytest.fixture
def bob(users):
    return users["bob"]


@pytest.fixture
def charlie(users):
    return users["charlie"]


@pytest.fixture
def dave(users):
    return users["dave"]


@pytest.fixture
def project(db, alice, bob):
    from annotation.models import Membership, Project

    project = Project.objects.create(name="Summaries", questions=QUESTIONS, overlap=2, lease_seconds=600)
    Membership.objects.create(user=alice, project=project, role=Membership.Role.CURATOR)
    Membership.objects.create(user=bob, project=project, role=Membership.Role.RATER)
    return project


@pytest.fixture
def other_project(db, dave):
    from annotation.models import Membership, Project

    project = Project.objects.create(name="Other", questions=QUESTIONS, overlap=1)
    Membership.objects.create(user=dave, project=project, role=Membership.Role.RATER)
    return project


@pytest.fixture(scope="session", autouse=True)
def _postgresql_flush_deletes_rows():
    """A test that commits (`transactional_db`, the browser tests' live server) ends with Django's
    flush of every table. On PostgreSQL that is one TRUNCATE, which makes each table a new file: about
    a second per test on a small machine. DELETE FROM each table empties the same tables in
    milliseconds (the foreign keys Django makes are deferred to the commit, so the order does not
    matter). A flush that resets sequences is left as it was."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    truncate = DatabaseOperations.sql_flush

    def sql_flush(self, style, tables, *, reset_sequences=False, allow_cascade=False):
        if not tables or reset_sequences:
            return truncate(self, style, tables, reset_sequences=reset_sequences, allow_cascade=allow_cascade)
        return [f"{style.SQL_KEYWORD('SET CONSTRAINTS ALL DEFERRED')};"] + [
            f"{style.SQL_KEYWORD('DELETE FROM')} {style.SQL_FIELD(self.quote_name(table))};"
            for table in tables
        ]

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = truncate


@pytest.fixture(scope="session", autouse=True)
def _background_cgroup_removed():
    """The suite's idle cgroup (config/test_settings.py) goes at the end, once its processes have."""
    yield
    from django.conf import settings

    from config.priority import _cpu_cgroup_dir
    from tests.cgroups import remove_when_empty

    here = _cpu_cgroup_dir()
    if here is not None and settings.BACKGROUND_CGROUP:
        try:
            remove_when_empty(here / settings.BACKGROUND_CGROUP, seconds=5)
        except OSError:
            pass  # still busy: left for the next run, which uses it as it is


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def _fresh_statistics_cache():
    """Cached statistics are keyed by project id and version, and the SQLite lane reuses ids
    across tests: every test starts with an empty statistics cache, and no kept answer table."""
    from django.core.cache import caches

    from annotation import quality

    caches["stats"].clear()
    quality._kept.clear()
    yield
    caches["stats"].clear()


@pytest.fixture
def coders(django_user_model):
    """Four raters, coder0–coder3."""
    return [django_user_model.objects.create_user(f"coder{i}") for i in range(4)]


@pytest.fixture
def krippendorff(db, coders):
    """Krippendorff (2011)'s 4 coders × 12 units as judgments (ordinal alpha 0.815): (project, tasks)."""
    from tests.curation_data import krippendorff_judgments
    from tests.test_agreement import KRIPPENDORFF_2011

    return krippendorff_judgments(coders, KRIPPENDORFF_2011)
