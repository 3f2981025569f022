"""scripts/test-services, which `make test` runs first, against stand-in commands that record calls."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "test-services"

STUBS = {
    # PostgreSQL answers once "started" exists.
    "pg_isready": '[ -e "$STATE/pg-started" ] || [ -n "$PG_UP" ]',
    "pg_lsclusters": 'echo "15 main 5432 down postgres /var/lib/postgresql/15/main"',
    "pg_ctlcluster": 'echo "pg_ctlcluster $*" >> "$STATE/calls"; touch "$STATE/pg-started"',
    "redis-cli": '[ -n "$REDIS_UP" ] || [ -e "$STATE/redis-started" ]',
    "redis-server": 'echo "redis-server" >> "$STATE/calls"; touch "$STATE/redis-started"',
    "id": 'echo "$FAKE_UID"',
    "apt-get": (
        'echo "apt-get $*" >> "$STATE/calls"\n'
        'if [ "$1" = install ]; then for pkg in "$@"; do case "$pkg" in\n'
        '  chromium) printf "#!/bin/sh\\n" > "$CHROMIUM"; chmod +x "$CHROMIUM" ;;\n'
        '  bubblewrap) printf "#!/bin/sh\\n" > "$BWRAP"; chmod +x "$BWRAP" ;;\n'
        "esac; done; fi"
    ),
}


@pytest.fixture
def run(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    state = tmp_path / "state"
    state.mkdir()

    def run(*, uid=1000, chromium_present=True, bwrap_present=True, pg_up=True, redis_up=True, pg_url=None):
        chromium, bwrap = tmp_path / "chromium", tmp_path / "bwrap"
        for path, present in ((chromium, chromium_present), (bwrap, bwrap_present)):
            if present:
                path.write_text("#!/bin/sh\n")
                path.chmod(0o755)
        env = {
            "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "STATE": str(state),
            "FAKE_UID": str(uid),
            "CHROMIUM": str(chromium),
            "BWRAP": str(bwrap),
            "PG_UP": "1" if pg_up else "",
            "REDIS_UP": "1" if redis_up else "",
            "TMPDIR": str(tmp_path),
        }
        if pg_url:
            env["PG_URL"] = pg_url
        result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)
        calls = (state / "calls").read_text().splitlines() if (state / "calls").exists() else []
        return result, calls

    return run


def test_the_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def test_nothing_is_done_when_everything_is_there(run):
    result, calls = run()
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_installed_but_stopped_postgresql_and_redis_are_started(run):
    result, calls = run(pg_up=False, redis_up=False)
    assert result.returncode == 0, result.stderr
    assert calls == ["pg_ctlcluster --skip-systemctl-redirect 15 main start", "redis-server"]


def test_a_postgresql_elsewhere_is_left_alone(run):
    result, calls = run(pg_up=False, pg_url="postgres://u@db.internal:5432/refinery")
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_missing_chromium_is_installed_when_root(run):
    result, calls = run(uid=0, chromium_present=False)
    assert result.returncode == 0, result.stderr
    assert calls == ["apt-get update -qq", "apt-get install -y -qq chromium"]


def test_missing_chromium_without_root_stops_with_the_command_to_run(run):
    result, calls = run(uid=1000, chromium_present=False)
    assert result.returncode == 1
    assert "sudo apt-get install chromium" in result.stderr
    assert calls == []


def test_missing_bubblewrap_and_chromium_are_installed_together_when_root(run):
    result, calls = run(uid=0, chromium_present=False, bwrap_present=False)
    assert result.returncode == 0, result.stderr
    assert calls == ["apt-get update -qq", "apt-get install -y -qq chromium bubblewrap"]


def test_missing_bubblewrap_without_root_stops_with_the_command_to_run(run):
    result, calls = run(uid=1000, bwrap_present=False)
    assert result.returncode == 1
    assert "sudo apt-get install bubblewrap" in result.stderr
    assert calls == []
