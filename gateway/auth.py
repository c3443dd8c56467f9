"""Agent authentication: who is calling, from the bearer token."""

from dataclasses import dataclass

from asgiref.sync import sync_to_async
from django.utils.timezone import now

from .models import TOKEN_PREFIX, AgentToken


@dataclass(frozen=True, slots=True)
class Identity:
    user_id: int
    username: str
    token_id: int
    token_display: str
    run_label: str
    connection_id: int | None
    scopes: tuple[str, ...]

    def may_use(self, connection_id: int) -> bool:
        return self.connection_id is None or self.connection_id == connection_id


def bearer_token(authorization: str) -> str | None:
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip()


def _lookup(secret: str) -> Identity | None:
    token = (
        AgentToken.objects.active()
        .select_related("user")
        .filter(digest=AgentToken.digest_of(secret), user__is_active=True)
        .first()
    )
    if token is None or "mcp" not in token.scopes:
        return None
    if token.touch_due():
        AgentToken.objects.filter(pk=token.pk).update(last_used_at=now())
    return Identity(
        user_id=token.user_id,
        username=token.user.get_username(),
        token_id=token.pk,
        token_display=token.display,
        run_label=token.run_label,
        connection_id=token.connection_id,
        scopes=tuple(token.scopes),
    )


_lookup_async = sync_to_async(_lookup, thread_sensitive=False)


async def authenticate(authorization: str) -> Identity | None:
    secret = bearer_token(authorization)
    if secret is None or not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
        return None
    return await _lookup_async(secret)
