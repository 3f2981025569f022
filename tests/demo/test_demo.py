"""`manage.py demo` and `manage.py simulate_raters`: the loop on a laptop, watched unattended."""

import io
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from django.core.management import call_command

from annotation.models import Judgment, Output, Project, Prompt, Task
from feedback_loop.models import Round
from feedback_loop.reports import metric_charts

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _demo_setup():
    out = io.StringIO()
    call_command("demo", "--no-serve", stdout=out)
    return Project.objects.get(name="Demo: sentences"), out.getvalue()


def test_demo_setup_makes_the_task_accounts_and_first_outputs_of_the_tiny_model(transactional_db, demo_model):
    project, out = _demo_setup()

    train = Prompt.objects.filter(project=project, split="train")
    held_out = Prompt.objects.filter(project=project, split="eval")
    assert train.count() == 96 and held_out.count() == 24
    pairs = lambda prompts: {tuple(p.data["must_include"]) for p in prompts}  # noqa: E731
    assert not pairs(train) & pairs(held_out)  # the metric is measured on pairs no adapter trained on
    assert all(p.gold for p in held_out)
    # The model's own outputs are in the queue, one single task each, before any round.
    tasks = Task.objects.filter(project=project)
    assert tasks.count() == 24 and set(tasks.values_list("kind", flat=True)) == {"single"}
    assert Output.objects.filter(prompt__project=project, model_name=str(demo_model)).count() == 24
    assert "rater    login: rater  password: " in out and "curator  login: curator  password: " in out

    again = io.StringIO()
    call_command("demo", "--no-serve", stdout=again)
    assert Task.objects.filter(project=project).count() == 24  # a second run writes nothing twice
    assert "password set earlier" in again.getvalue() and "password: " not in again.getvalue()


def test_simulated_raters_rate_through_the_queue_and_each_round_measures_held_out_accuracy(
    transactional_db, demo_model, eager
):
    project, _ = _demo_setup()
    config = project.loop_config
    config.training = {"learning_rate": 0.01, "epochs": 2, "max_steps": 6, "batch_size": 8, "rank": 4}
    config.generation_batch = 6
    config.n_refinements = 1
    config.save()
    out = io.StringIO()

    call_command(
        "simulate_raters", "Demo: sentences", "--rounds", "2", "--seed", "3", stdout=out, stderr=io.StringIO()
    )

    rounds = list(Round.objects.filter(project=project).order_by("number"))
    assert [r.state for r in rounds] == ["done", "done"]
    for round in rounds:
        evaluation = round.adapter.evaluation
        assert evaluation["n_mention_checks"] == 24
        assert 0.0 <= evaluation["accuracy"] <= 1.0 and 0.0 <= evaluation["baseline_accuracy"] <= 1.0
        assert round.feedback_count > 0
    # Every judgment went through the queue: one per simulated rater per task, two raters per task.
    judgments = Judgment.objects.filter(project=project)
    assert set(judgments.values_list("rater__username", flat=True)) == {"sim-rater-1", "sim-rater-2"}
    for task in Task.objects.filter(project=project, judgments__isnull=False).distinct():
        assert task.judgments.count() == 2
    assert out.getvalue().count("held-out accuracy") == 2
    # The project's Rounds tab plots it, one point per round.
    charts = {c.title: c for c in metric_charts([r.adapter for r in rounds])}
    series = {s.name: s.points for s in charts["Task metric"].series}
    assert [n for n, _ in series["accuracy: new adapter"]] == [1, 2]


SUPERVISOR = textwrap.dedent(
    """
    import sys, django
    django.setup()
    from pathlib import Path
    from feedback_loop.management.commands.demo import supervise
    child = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(int(sys.argv[2])); sys.exit(3)"
    tmp = Path(sys.argv[1])
    code = supervise(
        {"web": [sys.executable, "-c", child, str(tmp / "web"), sys.argv[2]],
         "worker": [sys.executable, "-c", child, str(tmp / "worker"), "120"]},
        cwd=tmp, stop_seconds=10,
    )
    sys.exit(code)
    """
)


def _start_supervisor(tmp_path, web_seconds):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings", "DEBUG": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR, str(tmp_path), str(web_seconds)], cwd=ROOT, env=env
    )
    deadline = time.monotonic() + 60
    while not ((tmp_path / "web").exists() and (tmp_path / "worker").exists()):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    time.sleep(0.2)
    return process, [int((tmp_path / name).read_text()) for name in ("web", "worker")]


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_stops_the_web_server_and_the_worker_together(tmp_path, sig):
    process, pids = _start_supervisor(tmp_path, 120)

    process.send_signal(sig)

    assert process.wait(timeout=30) == 0
    assert all(_gone(pid) for pid in pids)


def test_when_one_process_dies_the_other_is_stopped_and_its_exit_code_reported(tmp_path):
    process, pids = _start_supervisor(tmp_path, 1)

    assert process.wait(timeout=30) == 3
    assert all(_gone(pid) for pid in pids)


def _children(pid):
    """The command lines of a process's children (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, IndexError, ValueError):
            continue
    return found


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_manage_py_demo_serves_pages_runs_a_worker_on_every_queue_and_ctrl_c_stops_both(
    tmp_path, tiny_model_dir
):
    import urllib.request

    from django.db import connection

    if connection.vendor != "sqlite":
        pytest.skip(
            "the demo runs on a SQLite file of its own whatever the lane: checked once, in the SQLite lane"
        )

    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "tiny-model").symlink_to(tiny_model_dir, target_is_directory=True)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}",
        "REFINERY_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "DEBUG": "1",
        "OMP_NUM_THREADS": "1",
    }
    for command in (["migrate", "-v", "0"], ["demo", "--no-serve"]):
        subprocess.run(
            [sys.executable, "manage.py", *command], cwd=ROOT, env=env, check=True, capture_output=True
        )
    port = _free_port()
    log = open(tmp_path / "demo.log", "w+b")  # noqa: SIM115 - read back below
    demo = subprocess.Popen(
        [sys.executable, "manage.py", "demo", "--skip-setup", "--port", str(port)],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline, page, ready = time.monotonic() + 120, None, False
        while time.monotonic() < deadline and not (page == 200 and ready):
            assert demo.poll() is None, (tmp_path / "demo.log").read_text()[-3000:]
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=5).status
            except OSError:
                pass
            output = (tmp_path / "demo.log").read_text()
            ready = "ready." in output
            time.sleep(0.5)
        assert page == 200 and ready, output[-3000:]
        assert f"http://127.0.0.1:{port}/" in output and "simulate_raters" in output
        children = _children(demo.pid)
        assert any("runserver" in c and f"127.0.0.1:{port}" in c for c in children), children
        assert any("celery" in c and "-Q default,gpu,background" in c for c in children), children

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=60) == 0
        assert "Warm shutdown" in (tmp_path / "demo.log").read_text()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=2)
    finally:
        if demo.poll() is None:
            demo.kill()
        log.close()
