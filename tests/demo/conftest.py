"""Fixtures of the demo tests: the loop's (the tiny model, a project) and Celery run in-process."""

import pytest

from tests.loop.conftest import TINY_PRETRAIN_STEPS, artifacts, tiny_model_dir  # noqa: F401


@pytest.fixture
def eager(settings):
    from celery import current_app

    settings.CELERY_TASK_ALWAYS_EAGER = True
    before = current_app.conf.task_always_eager
    current_app.conf.task_always_eager = True
    yield
    current_app.conf.task_always_eager = before


@pytest.fixture
def demo_model(artifacts, tiny_model_dir):  # noqa: F811
    """The demo's default model is built under the artifacts folder on first use; the tests put the
    session's tiny model there instead of building a second one."""
    (artifacts).mkdir(parents=True, exist_ok=True)
    (artifacts / "tiny-model").symlink_to(tiny_model_dir, target_is_directory=True)
    return artifacts / "tiny-model"
