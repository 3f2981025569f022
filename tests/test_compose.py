"""The compose deployment, checked for structure (docker itself cannot run in the test machine)."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[1] / "docker"
LONG_RUNNING = {"db", "redis", "web", "worker", "background-worker", "gpu-worker", "beat", "flower"}
APP = {"migrate", "web", "worker", "background-worker", "gpu-worker", "beat"}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def _command(service) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else command


def test_every_service_of_the_deployment_is_there_and_each_long_running_one_has_a_health_check(compose):
    services = compose["services"]
    assert LONG_RUNNING | {"migrate"} <= set(services)
    for name in LONG_RUNNING:
        check = services[name].get("healthcheck")
        assert check and check.get("test"), f"{name} has no health check"
        assert check["test"][0] in ("CMD", "CMD-SHELL")


def test_workers_consume_their_queues_and_the_gpu_worker_reserves_a_gpu_from_the_cuda_image(compose):
    services = compose["services"]
    assert re.search(r"celery -A config worker -Q default\b", _command(services["worker"]))
    assert re.search(r"celery -A config worker -Q gpu\b", _command(services["gpu-worker"]))
    assert re.search(r"celery -A config worker -Q background\b", _command(services["background-worker"]))
    assert "gunicorn config.wsgi -c config/gunicorn.conf.py" in _command(services["web"])
    assert "--threads" in _command(services["web"])  # a streamed export must not hold a whole worker
    assert services["background-worker"]["cpu_shares"] < 1024  # the web comes first
    assert "celery -A config beat" in _command(services["beat"])
    assert "flower" in _command(services["flower"])
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
    assert services["gpu-worker"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    gpu_image = (DOCKER / "Dockerfile.gpu").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+", gpu_image, re.M)
    assert "download.pytorch.org/whl/cu" in gpu_image


def test_state_lives_in_named_volumes(compose):
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            assert source in declared, f"{name} mounts {source}, which is not a named volume"
    assert {"pgdata", "redisdata", "artifacts"} <= declared


def test_secrets_come_from_the_env_file_whose_committed_example_holds_none(compose):
    example = dict(
        line.split("=", 1)
        for line in (DOCKER / "refinery.env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name in APP | {"db", "flower"}:
        service = compose["services"][name]
        assert service.get("env_file") == ["refinery.env"], name
        for key in service.get("environment", {}):
            assert not re.search(r"SECRET|PASSWORD|BASIC_AUTH", key), f"{name} sets {key} in the compose file"
    for key in ("SECRET_KEY", "POSTGRES_PASSWORD", "DATABASE_URL", "FLOWER_BASIC_AUTH"):
        assert "change-me" in example[key]
    assert "/docker/refinery.env" in (DOCKER.parent / ".gitignore").read_text().splitlines()


def test_app_containers_run_as_a_user_and_the_sandboxing_worker_may_make_user_namespaces(compose):
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        text = (DOCKER / dockerfile).read_text()
        assert re.search(r"^USER refinery$", text, re.M) and "bubblewrap" in text
    worker = compose["services"]["worker"]
    assert {"seccomp=unconfined", "apparmor=unconfined"} <= set(worker["security_opt"])
    assert not worker.get("privileged") and not worker.get("cap_add")


def test_the_web_health_check_passes_on_a_live_app_and_fails_when_nothing_answers(live_server):
    check = [sys.executable, str(DOCKER / "healthcheck.py"), "web"]
    env = {**os.environ, "ALLOWED_HOSTS": "localhost"}
    assert subprocess.run([*check, f"{live_server.url}/accounts/login/"], env=env).returncode == 0
    assert subprocess.run([*check, "http://127.0.0.1:9/"], env=env).returncode == 1


def test_the_beat_health_check_reads_how_fresh_the_schedule_file_is(tmp_path):
    check = [sys.executable, str(DOCKER / "healthcheck.py"), "beat", str(tmp_path / "schedule")]
    assert subprocess.run(check).returncode == 1
    (tmp_path / "schedule").write_bytes(b"")
    assert subprocess.run(check).returncode == 0
    old = time.time() - 3600
    os.utime(tmp_path / "schedule", (old, old))
    assert subprocess.run(check).returncode == 1
