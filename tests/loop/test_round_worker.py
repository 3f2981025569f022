"""A whole round through a real Celery worker process, started from the command line.

Two setups: a worker on Redis with the PostgreSQL test database (the PostgreSQL lane), and the
embedded default, a worker on the filesystem broker with the SQLite test database file (the SQLite
lane). The test database (pytest-django's, committed with `transactional_db`) is shared by three
processes: this test writes the project and its feedback, `manage.py start_round --wait` sends the
first step to the broker and follows the round, and a worker consuming the `default` and `gpu`
queues runs every step.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from annotation.models import Prompt, Task
from feedback_loop.models import Adapter, Refinement, Round
from tests.loop import processes
from tests.loop.conftest import POSTS, make_feedback

pytestmark = pytest.mark.slow

BROKER = "redis://127.0.0.1:6379/12"
REPO = Path(__file__).resolve().parents[2]


def _redis():
    import redis

    client = redis.Redis.from_url(BROKER, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    return client


@pytest.fixture(
    params=[
        pytest.param("redis", id="redis-postgresql", marks=pytest.mark.postgres),
        pytest.param("filesystem", id="filesystem-sqlite"),
    ]
)
def worker_env(request, transactional_db, artifacts, tmp_path):
    if request.param == "filesystem":
        folders = processes.filesystem_broker(tmp_path / "var")
        return processes.worker_env(broker="filesystem://", artifacts=artifacts, vendor="sqlite", **folders)
    env = processes.worker_env(broker=BROKER, artifacts=artifacts)
    client = _redis()
    client.flushdb()
    request.addfinalizer(client.flushdb)
    return env


@pytest.fixture
def worker(worker_env, tmp_path):
    process = processes.celery_worker(worker_env, tmp_path / "worker.log")
    yield process
    process.stop(timeout=30)
    print(process.log.read_text(errors="replace")[-5000:])  # shown by pytest when the test failed


def test_a_real_worker_runs_a_whole_round_started_from_the_command_line(
    project, bob, loop_config, worker, worker_env
):
    loop_config.training = {**loop_config.training, "learning_rate": 1e-2}
    loop_config.save()
    fix = "The landlord must fix the heating soon."
    judgments = make_feedback(project, bob, 2) + make_feedback(project, bob, 1, prefix="fixed", fix=fix)
    Prompt.objects.create(
        project=project,
        external_id="eval-0",
        text="Summarise this post.",
        context=POSTS[0],
        split="eval",
        gold=fix,
    )

    command = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "start_round",
            str(project.pk),
            "--reason",
            "worker test",
            "--wait",
            "--timeout",
            "240",
        ],
        cwd=REPO,
        env=worker_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert worker.alive(), "the worker died"
    assert command.returncode == 0, command.stdout + command.stderr
    assert "Round 1: done." in command.stdout

    round = Round.objects.get(project=project)
    assert (round.state, round.reason, round.feedback_count) == ("done", "worker test", 3)
    assert Refinement.objects.filter(round=round, selected=True).count() == round.selected_count > 0
    adapter = Adapter.objects.get(round=round)
    assert len(adapter.checksum) == 64 and Path(adapter.path, "adapter.sha256").exists()
    assert set(adapter.training_judgments.all()) <= set(judgments)
    assert adapter.evaluation["n_held_out"] == 1
    assert round.promoted is True, round.promotion_reason
    assert Task.objects.filter(round_number=1).count() == round.new_task_count > 0
