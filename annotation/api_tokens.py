"""API tokens (rest_framework.authtoken, one per user): rotate, revoke, and revoke on a password change.

A token is a password that never expires; when the password changes because it may have leaked,
the token must go with it, whichever path changed it (the admin, the password change form,
`manage.py changepassword`, `set_password()` anywhere).
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.db.models import QuerySet
from django.db.models.signals import pre_save
from django.dispatch import receiver
from rest_framework.authtoken.models import Token


def token_rotate(*, user: AbstractBaseUser) -> Token:
    """A new token for `user`; the old one (if any) stops working at once."""
    with transaction.atomic():
        Token.objects.filter(user=user).delete()
        return Token.objects.create(user=user)


def token_revoke(*, user: AbstractBaseUser) -> bool:
    """Delete `user`'s token; True if there was one."""
    deleted, _ = Token.objects.filter(user=user).delete()
    return bool(deleted)


def tokens_revoke(*, users: QuerySet) -> int:
    """Delete the tokens of all `users`; returns how many there were."""
    deleted, _ = Token.objects.filter(user__in=users).delete()
    return deleted


@receiver(pre_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="revoke_tokens_on_password_change")
def _revoke_tokens_when_the_password_changes(sender, instance, raw, update_fields, **kwargs) -> None:
    if raw or instance._state.adding:
        return
    if update_fields is not None and "password" not in update_fields:
        return  # e.g. last_login at every login: no query at all
    # After checking a password Django re-hashes it if the hasher's settings changed (a Django
    # upgrade raises the iterations): same password, new hash, saved with only `password` and
    # with the raw password forgotten. That is no change of password.
    if update_fields is not None and set(update_fields) == {"password"} and instance._password is None:
        return
    stored = sender._default_manager.filter(pk=instance.pk).values_list("password", flat=True).first()
    if stored is not None and stored != instance.password:
        Token.objects.filter(user_id=instance.pk).delete()
