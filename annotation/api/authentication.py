"""API token authentication: DRF's, with its lookup written in SQL.

Every API request authenticates, so the lookup is on the task queue's hot path; the ORM's
select_related query cost several times more CPU than the statement itself (bench/queue.py).
"""

from django.contrib.auth import get_user_model
from django.utils.translation import gettext_lazy as _
from rest_framework import authentication, exceptions
from rest_framework.authtoken.models import Token

from annotation.rows import columns, fetch_rows, model_from_row

_USER_OF_TOKEN: list[str] = []  # the statement, built once the user model is known


def _user_of_token() -> str:
    if not _USER_OF_TOKEN:
        User = get_user_model()
        _USER_OF_TOKEN.append(
            f"SELECT {columns(User, 'u')} FROM {User._meta.db_table} u"
            f" JOIN {Token._meta.db_table} t ON t.user_id = u.{User._meta.pk.column} WHERE t.key = %s"
        )
    return _USER_OF_TOKEN[0]


class TokenAuthentication(authentication.TokenAuthentication):
    """`Authorization: Token <key>`, exactly as rest_framework.authentication.TokenAuthentication."""

    def authenticate_credentials(self, key):
        rows = fetch_rows(_user_of_token(), [key])
        if not rows:
            raise exceptions.AuthenticationFailed(_("Invalid token."))
        user = model_from_row(get_user_model(), rows[0])
        if not user.is_active:
            raise exceptions.AuthenticationFailed(_("User inactive or deleted."))
        # The token as loaded with only its key and user (its other fields load if asked for).
        token = Token.from_db(Token.objects.db, ["key", "user_id"], [key, user.pk])
        token.user = user
        return user, token
