"""REST API authentication with gateway-issued bearer tokens that carry the `api` scope."""

from typing import Any

from django.utils.timezone import now
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from gateway.auth import bearer_token
from gateway.models import TOKEN_PREFIX, AgentToken

API_SCOPE = "api"
MAX_SECRET_LENGTH = 200


def _active_token(secret: str) -> AgentToken | None:
    if len(secret) > MAX_SECRET_LENGTH:
        return None
    return (
        AgentToken.objects.active()
        .select_related("user")
        .filter(digest=AgentToken.digest_of(secret), user__is_active=True)
        .first()
    )


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer mgw_...`: an active `api` token of an active user.

    request.user is the token's owner, request.auth the AgentToken. Bearer credentials
    that are not gateway tokens are left to the other authentication classes.
    """

    def authenticate(self, request: Request) -> tuple[Any, AgentToken] | None:
        secret = bearer_token(get_authorization_header(request).decode("latin-1"))
        if secret is None or not secret.startswith(TOKEN_PREFIX):
            return None
        token = _active_token(secret)
        if token is None or API_SCOPE not in token.scopes:
            raise AuthenticationFailed("Invalid, expired or revoked token, or no api scope.")
        if token.touch_due():
            AgentToken.objects.filter(pk=token.pk).update(last_used_at=now())
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="api"'
