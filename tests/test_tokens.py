"""API tokens: revoked when the password changes, rotated or revoked by their user or by an admin."""

import pytest
from django.contrib.auth.hashers import make_password
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def api(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    return client


def works(key: str) -> bool:
    status = api(key).get("/api/v1/projects/").status_code
    assert status in (200, 401), status
    return status == 200


@pytest.fixture
def tokens(bob, alice):
    return {"bob": Token.objects.create(user=bob).key, "alice": Token.objects.create(user=alice).key}


# --- a password change revokes -----------------------------------------------------------------


def test_set_password_revokes_the_users_token_only(bob, tokens):
    bob.set_password("a-new-password-123")
    bob.save()
    assert not works(tokens["bob"])
    assert works(tokens["alice"])


def test_the_admins_password_change_form_revokes_the_token(bob, tokens, django_user_model):
    root = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(root)
    response = client.post(
        f"/admin/auth/user/{bob.pk}/password/",
        {"password1": "Fresh-pass-4567", "password2": "Fresh-pass-4567", "usable_password": "true"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    bob.refresh_from_db()
    assert bob.check_password("Fresh-pass-4567")
    assert not works(tokens["bob"])


def test_a_new_hash_written_directly_revokes_the_token(bob, tokens):
    bob.password = make_password("written-directly-123")
    bob.save()
    assert not works(tokens["bob"])


def test_saving_the_user_without_a_password_change_keeps_the_token(bob, tokens):
    bob.first_name = "Bob"
    bob.save()
    bob.save(update_fields=["last_login"])
    assert Client().post("/accounts/login/", {"username": "bob", "password": "pw-bob-123"}).status_code == 302
    assert works(tokens["bob"])


def test_a_rehash_of_the_same_password_after_a_hasher_change_keeps_the_token(bob, tokens, settings):
    before = bob.password
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
        "django.contrib.auth.hashers.MD5PasswordHasher",
    ]
    assert bob.check_password("pw-bob-123")  # Django upgrades the stored hash here
    bob.refresh_from_db()
    assert bob.password != before and bob.password.startswith("pbkdf2_")
    assert works(tokens["bob"])


# --- the user rotates or revokes their own -----------------------------------------------------


def test_rotating_returns_a_new_key_once_and_the_old_one_stops_working(bob, tokens):
    response = api(tokens["bob"]).post("/api/v1/auth/token/rotate/")
    assert response.status_code == 201
    assert response["Cache-Control"] == "no-store"
    new = response.json()["token"]
    assert new != tokens["bob"] and len(new) == 40
    assert not works(tokens["bob"])
    assert works(new)
    assert works(tokens["alice"])
    assert Token.objects.filter(user=bob).count() == 1


def test_a_user_without_a_token_gets_one_by_rotating_in_a_session(bob):
    client = APIClient()
    client.force_login(bob)
    response = client.post("/api/v1/auth/token/rotate/")
    assert response.status_code == 201
    assert works(response.json()["token"])


def test_revoking_deletes_the_token(bob, tokens):
    assert api(tokens["bob"]).delete("/api/v1/auth/token/").status_code == 204
    assert not works(tokens["bob"])
    assert works(tokens["alice"])
    session = APIClient()
    session.force_login(bob)
    assert session.delete("/api/v1/auth/token/").status_code == 204  # none left: still fine


def test_anonymous_callers_cannot_rotate_or_revoke(tokens):
    assert APIClient().post("/api/v1/auth/token/rotate/").status_code in (401, 403)
    assert APIClient().delete("/api/v1/auth/token/").status_code in (401, 403)
    assert Token.objects.count() == 2


def test_the_token_endpoints_are_in_the_openapi_schema(bob):
    client = APIClient()
    client.force_login(bob)
    paths = client.get("/api/schema/", {"format": "json"}).json()["paths"]
    assert "post" in paths["/api/v1/auth/token/rotate/"]
    assert "delete" in paths["/api/v1/auth/token/"]


# --- admins revoke from the user list ------------------------------------------------------------


def test_the_admin_action_revokes_the_selected_users_tokens(bob, charlie, tokens, django_user_model):
    charlie_token = Token.objects.create(user=charlie).key
    root = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(root)
    response = client.post(
        "/admin/auth/user/",
        {"action": "revoke_api_tokens", "_selected_action": [bob.pk, charlie.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert "2 API token(s) revoked." in response.content.decode()
    assert not works(tokens["bob"]) and not works(charlie_token)
    assert works(tokens["alice"])
