"""Login throttling, API throttles, the deployment settings' refusals and headers."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

ROOT = Path(__file__).resolve().parent.parent
STRONG_KEY = "k3Y-" + "9fQ2xZ7wLmR4tV8bN1cH6jD0sG5yP3eA" * 2


def _wrong_logins(client: Client, url: str, username: str, times: int) -> list[int]:
    return [
        client.post(url, {"username": username, "password": f"wrong-{i}"}).status_code for i in range(times)
    ]


@pytest.mark.django_db
def test_eleven_wrong_passwords_lock_the_site_login_even_for_the_right_password(bob, alice):
    client = Client()
    statuses = _wrong_logins(client, "/accounts/login/", "bob", 11)
    assert statuses[:9] == [200] * 9  # the form again, with "didn't match"
    assert statuses[-1] == 429

    response = client.post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"})
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert "15 minutes" in response.content.decode()
    assert "_auth_user_id" not in client.session
    # Another user from the same address logs in as usual.
    other = Client()
    assert (
        other.post("/accounts/login/", {"username": "alice", "password": "pw-alice-123"}).status_code == 302
    )
    assert int(other.session["_auth_user_id"]) == alice.pk


@pytest.mark.django_db
def test_eleven_wrong_passwords_lock_the_admin_login(django_user_model):
    django_user_model.objects.create_user("root", password="pw-root-123", is_staff=True, is_superuser=True)
    django_user_model.objects.create_user("ops", password="pw-ops-123", is_staff=True)
    client = Client()
    statuses = _wrong_logins(client, "/admin/login/", "root", 11)
    assert statuses[-1] == 429

    response = client.post("/admin/login/", {"username": "root", "password": "pw-root-123"})
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert client.get("/admin/").status_code == 302  # still not logged in
    other = Client()
    assert other.post("/admin/login/", {"username": "ops", "password": "pw-ops-123"}).status_code == 302
    assert other.get("/admin/").status_code == 200


@pytest.mark.django_db
def test_the_lockout_is_per_address_and_counts_only_failures_since_the_last_success(bob, settings):
    settings.AXES_FAILURE_LIMIT = 3
    client = Client()
    _wrong_logins(client, "/accounts/login/", "bob", 2)
    assert client.post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"}).status_code == 302
    # The success reset the count: two more failures do not lock.
    assert _wrong_logins(Client(), "/accounts/login/", "bob", 2) == [200, 200]
    _wrong_logins(Client(), "/accounts/login/", "bob", 1)
    assert Client().post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"}).status_code == 429
    # From another address bob is not locked out.
    elsewhere = Client(REMOTE_ADDR="203.0.113.9")
    assert (
        elsewhere.post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"}).status_code == 302
    )


@pytest.fixture
def low_api_rates(monkeypatch):
    # DRF reads the rates once, into the class: set them there.
    monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", {"user": "3/min", "anon": "2/min"})
    cache.clear()
    yield
    cache.clear()


@pytest.mark.django_db
def test_api_requests_over_the_user_rate_get_429_with_retry_after(bob, alice, low_api_rates):
    client = APIClient()
    client.force_authenticate(bob)
    assert [client.get("/api/v1/projects/").status_code for _ in range(4)] == [200, 200, 200, 429]
    response = client.get("/api/v1/projects/")
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    # Counted per user.
    other = APIClient()
    other.force_authenticate(alice)
    assert other.get("/api/v1/projects/").status_code == 200


@pytest.mark.django_db
def test_anonymous_api_requests_are_throttled(low_api_rates):
    client = APIClient()
    assert [client.get("/api/schema/").status_code for _ in range(3)] == [200, 200, 429]


def test_the_api_rates_come_from_the_environment():
    out = _settings_in_subprocess(
        {
            "DEBUG": "0",
            "SECRET_KEY": STRONG_KEY,
            "API_THROTTLE_USER": "50/s",
            "API_THROTTLE_ANON": "7/min",
            "API_THROTTLE_NEXT_TASK": "2/s",
        },
        "print(settings.REST_FRAMEWORK['DEFAULT_THROTTLE_RATES'])",
    )
    assert out.stdout.strip() == "{'anon': '7/min', 'user': '50/s', 'next_task': '2/s'}", out.stderr


def test_the_lockout_limits_come_from_the_environment():
    out = _settings_in_subprocess(
        {"DEBUG": "0", "SECRET_KEY": STRONG_KEY, "AXES_FAILURE_LIMIT": "4", "AXES_COOLOFF_MINUTES": "30"},
        "from axes.helpers import get_cool_off; print(settings.AXES_FAILURE_LIMIT, get_cool_off())",
    )
    assert out.stdout.strip() == "4 0:30:00", out.stderr


# --- settings for deployments (each in a fresh process: settings are read once) ---------------


def _settings_in_subprocess(env: dict[str, str], code: str, *, argv: tuple[str, ...] = ()):
    keep = {name: os.environ[name] for name in ("PATH", "HOME", "DATABASE_URL") if name in os.environ}
    script = "import django; from django.conf import settings; django.setup(); " + code
    return subprocess.run(
        [sys.executable, "-c", script, *argv],
        cwd=ROOT,
        env={**keep, "DJANGO_SETTINGS_MODULE": "config.settings", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_debug_the_app_refuses_to_start_without_a_secret_key():
    result = _settings_in_subprocess({"DEBUG": "0"}, "print('started')")
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set" in result.stderr
    assert "started" not in result.stdout
    # With a key, or in development, it starts.
    assert _settings_in_subprocess({"DEBUG": "0", "SECRET_KEY": STRONG_KEY}, "print('ok')").stdout == "ok\n"
    assert _settings_in_subprocess({"DEBUG": "1"}, "print('ok')").stdout == "ok\n"


def test_without_allowed_hosts_only_loopback_is_served():
    out = _settings_in_subprocess(
        {"DEBUG": "0", "SECRET_KEY": STRONG_KEY},
        "print(settings.ALLOWED_HOSTS, settings.SECURE_SSL_REDIRECT)",
    )
    assert out.stdout.strip() == "['localhost', '127.0.0.1', '[::1]'] False", out.stderr


def _deploy_check(env: dict[str, str]):
    code = (
        "from django.core.management import call_command; "
        "call_command('check', deploy=True, fail_level='WARNING')"
    )
    return _settings_in_subprocess(env, code)


def test_check_deploy_is_clean_for_a_deployment_with_a_strong_key_and_its_host_name():
    result = _deploy_check({"DEBUG": "0", "SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "refinery.example.org"})
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_when_https_is_turned_off_or_the_key_is_weak():
    result = _deploy_check(
        {"DEBUG": "0", "SECRET_KEY": "short", "ALLOWED_HOSTS": "refinery.example.org", "HTTPS_ONLY": "0"}
    )
    assert result.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W009", "security.W012", "security.W016"):
        assert warning in result.stderr


def test_https_settings_follow_the_environment():
    code = (
        "print(settings.SECURE_SSL_REDIRECT, settings.SECURE_HSTS_SECONDS, settings.SESSION_COOKIE_SECURE,"
        " settings.CSRF_COOKIE_SECURE, settings.SECURE_PROXY_SSL_HEADER)"
    )
    public = {"DEBUG": "0", "SECRET_KEY": STRONG_KEY, "ALLOWED_HOSTS": "refinery.example.org"}
    assert _settings_in_subprocess(public, code).stdout.split() == [
        "True",
        "31536000",
        "True",
        "True",
        "None",
    ]
    behind_proxy = {**public, "SECURE_SSL_REDIRECT": "0", "SECURE_PROXY_SSL_HEADER": "X-Forwarded-Proto"}
    assert _settings_in_subprocess(behind_proxy, code).stdout.strip() == (
        "False 31536000 True True ('HTTP_X_FORWARDED_PROTO', 'https')"
    )


# --- headers ---------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_forbid_inline_scripts_and_framing(client, bob, project):
    client.force_login(bob)
    response = client.get(f"/projects/{project.pk}/annotate/")
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    directives = dict(part.strip().split(" ", 1) for part in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_no_template_has_an_inline_script_or_event_handler():
    import re

    offenders = []
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        for tag in re.findall(r"<script\b[^>]*>", text):
            if "src=" not in tag:
                offenders.append(f"{path.name}: {tag}")
        offenders += [f"{path.name}: {m}" for m in re.findall(r"\son[a-z]+\s*=", text)]
    assert not offenders


@pytest.mark.django_db
def test_https_requests_get_hsts_when_https_only(client, settings):
    settings.SECURE_HSTS_SECONDS = 31_536_000
    response = client.get("/accounts/login/", secure=True)
    assert response["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.mark.django_db
def test_only_the_api_docs_page_may_load_swagger_ui_from_its_cdn(client, bob):
    client.force_login(bob)
    docs = client.get("/api/docs/")
    assert docs.status_code == 200
    assert "https://cdn.jsdelivr.net" in docs["Content-Security-Policy"]
    assert "cdn.jsdelivr.net" not in client.get("/").get("Content-Security-Policy")


# --- static files without DEBUG --------------------------------------------------------------------


def test_before_collectstatic_pages_link_plain_static_names_instead_of_failing(tmp_path, settings):
    from config.storage import StaticStorage

    storage = StaticStorage(location=str(tmp_path), base_url="/static/")
    assert storage.url("annotate/main.js") == "/static/annotate/main.js"


def test_after_collectstatic_pages_link_the_hashed_names(tmp_path, settings):
    from django.core.management import call_command
    from django.test import override_settings

    from config.storage import StaticStorage

    static = {"BACKEND": "config.storage.StaticStorage"}
    with override_settings(STATIC_ROOT=tmp_path, STORAGES={**settings.STORAGES, "staticfiles": static}):
        call_command("collectstatic", interactive=False, verbosity=0)
    storage = StaticStorage(location=str(tmp_path), base_url="/static/")
    url = storage.url("annotate/main.js")
    assert url.startswith("/static/annotate/main.") and url != "/static/annotate/main.js"
    assert (tmp_path / url.removeprefix("/static/")).exists()
    assert (tmp_path / (url.removeprefix("/static/") + ".gz")).exists()
    # ES module imports point at the hashed names too (support_js_module_import_aggregation).
    main = (tmp_path / url.removeprefix("/static/")).read_text()
    queue = storage.url("annotate/queue.js").removeprefix("/static/annotate/")
    assert f'from "./{queue}";' in main and 'from "./queue.js"' not in main
