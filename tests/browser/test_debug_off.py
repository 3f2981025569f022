"""The real app as deployed: DEBUG off, gunicorn, collectstatic, static files served by WhiteNoise."""

import os
import re
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from django.db import connection

from annotation.models import Membership, Project
from tests.browser.conftest import log_in, screenshot
from tests.factories import QUESTIONS, make_tasks

pytestmark = [pytest.mark.browser]
ROOT = Path(__file__).resolve().parents[2]


def _database_url() -> str:
    """The URL of the test database pytest-django made, for another process to use."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def deployed_app(transactional_db, tmp_path):
    """gunicorn serving config.wsgi with DEBUG=0 after collectstatic, on the test database."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": _database_url(),
        "DEBUG": "0",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "REFINERY_VAR_DIR": str(tmp_path / "var"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=300,
    )
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"gunicorn exited: {server.stderr.read()}"
            try:
                if httpx.get(f"{url}/accounts/login/", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not answer within 60 s"
            time.sleep(0.2)
        yield SimpleNamespace(url=url, static_root=tmp_path / "var" / "staticfiles")
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_with_debug_off_gunicorn_serves_hashed_static_files_and_the_rating_page_loads_a_task(
    deployed_app, page, django_user_model, settings
):
    # The app in the subprocess knows only the real password hashers.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    project = Project.objects.create(name="Deployed", questions=QUESTIONS, overlap=1)
    rater = django_user_model.objects.create_user("rita", password="rita-pass-123")
    Membership.objects.create(user=rater, project=project)
    make_tasks(project, 1)
    assert (deployed_app.static_root / "staticfiles.json").exists()

    responses = []
    page.on("response", lambda response: responses.append(response))
    console = []
    page.on("console", lambda message: console.append(message.text))

    log_in(page, deployed_app, "rita", "rita-pass-123")
    page.goto(f"{deployed_app.url}/projects/{project.pk}/annotate/")
    page.wait_for_selector("pre.text:has-text('Output 0 for post 0.')", timeout=15_000)
    screenshot(page, "debug-off-annotate")

    # The rating page's whole module graph loads, each module under its hashed name: main.js's
    # imports were rewritten by collectstatic, so no module is fetched by its plain name.
    scripts = [r for r in responses if "/static/annotate/" in r.url]
    hashed = {
        re.sub(r"\.[0-9a-f]{12}\.js$", ".js", r.url.split("/static/")[1])
        for r in scripts
        if re.search(r"/static/annotate/[a-z/]+\.[0-9a-f]{12}\.js$", r.url)
    }
    modules = {
        f"annotate/{p.relative_to(ROOT / 'static' / 'annotate').as_posix()}"
        for p in (ROOT / "static" / "annotate").rglob("*.js")
    }
    assert hashed == modules and len(scripts) == len(modules), [r.url for r in scripts]
    for script in scripts:
        assert script.status == 200, script.url
        # Hashed names never change content: browsers may keep them for ever.
        assert "immutable" in script.headers["cache-control"], script.url
    assert not [r.url for r in responses if r.status >= 400]
    assert not page.locator("#banner.error").count()
    styles = [r for r in responses if "/static/refinery." in r.url]
    assert styles and styles[0].status == 200
    assert not page.js_errors
    assert not [text for text in console if "Content Security Policy" in text]

    # The admin's styles too (its login page needs no staff account).
    responses.clear()
    page.goto(f"{deployed_app.url}/admin/login/")
    admin_css = [r for r in responses if re.search(r"/static/admin/css/base\.[0-9a-f]{12}\.css$", r.url)]
    assert admin_css and admin_css[0].status == 200
    assert not [r.url for r in responses if r.status >= 400]
