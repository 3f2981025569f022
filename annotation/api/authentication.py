"""API token authentication: DRF's, with its lookup written in SQL.

Every API request authenticates, so the lookup is on the task queue's hot path; the ORM's
select_related query cost several times more CPU than the statement itself (bench/queue.py).
"""

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token


class TokenAuthentication(authentication.TokenAuthentication):
    """`Authorization: Token <key>`, exactly as rest_framework.authentication.TokenAuthentication."""

    def authenticate_credentials(self, key):
        User = get_user_model()
        users = list(
            User.objects.raw(
                f"SELECT u.* FROM {User._meta.db_table} u"
                f" JOIN {Token._meta.db_table} t ON t.user_id = u.{User._meta.pk.column} WHERE t.key = %s",
                [key],
            )
        )
        if not users:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = users[0]
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        # The token as loaded with only its key and user (its other fields load if asked for).
        token = Token.from_db(Token.objects.db, ["key", "user_id"], [key, user.pk])
        token.user = user
        return user, token
