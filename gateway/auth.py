"""Agent authentication: who is calling, from the bearer token."""

from dataclasses import dataclass
from datetime import datetime

from asgiref.sync import sync_to_async
from django.utils.timezone import now

from . import admission
from .models import TOKEN_PREFIX, AgentToken


@dataclass(frozen=True, slots=True)
class Identity:
    """Who calls: a gateway token's owner, or an IdP subject (then token_id is None)."""

    user_id: int
    username: str
    token_id: int | None
    token_display: str
    run_label: str
    connection_id: int | None
    scopes: tuple[str, ...]
    subject: str = ""
    # When the token stops being valid (None: never), for identities kept in memory.
    expires_at: datetime | None = None

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
        expires_at=token.expires_at,
    )


_lookup_async = sync_to_async(_lookup, thread_sensitive=False)


def _idp_identity(secret: str, resource: str, connection_id: int | None) -> Identity | None:
    """An access token from the organisation's IdP (JWT), for this connection's resource.

    The agent acts as the Django user with the token's email (or, failing that, a user
    named after its subject, created without a password or roles), so grants and policy
    apply to it like to anyone; the audit trail records the subject and run."""
    from django.contrib.auth import get_user_model

    from . import jwt

    claims = jwt.verify_access_token(secret, resource)
    if claims is None:
        return None
    User = get_user_model()
    username = (claims.email or f"oidc:{claims.subject}")[:150]
    user = User.objects.filter(username=username).first()
    if user is None:
        user = User(username=username, email=claims.email)
        user.set_unusable_password()
        user.save()
    if not user.is_active:
        return None
    bare = resource.rstrip("/")
    scoped = claims.matched_audience.rstrip("/") == bare
    return Identity(
        user_id=user.pk,
        username=user.get_username(),
        token_id=None,
        token_display=f"oidc:{claims.subject}"[:40],
        run_label=claims.run[:200],
        connection_id=connection_id if scoped else None,
        scopes=("mcp",),
        subject=f"{claims.issuer} {claims.subject}"[:255],
    )


_idp_async = sync_to_async(_idp_identity, thread_sensitive=False)


async def authenticate(
    authorization: str, resource: str = "", connection_id: int | None = None
) -> Identity | None:
    """The caller of a request to `resource` (the connection's URI), or None."""
    secret = bearer_token(authorization)
    if secret is None or len(secret) > 8192:
        return None
    if secret.startswith(TOKEN_PREFIX):
        if len(secret) > 200:
            return None
        key = AgentToken.digest_of(secret)
        identity = await admission.kept(admission.IDENTITIES, key, lambda: _lookup_async(secret))
        if (
            identity is not None
            and identity.expires_at is not None
            and identity.expires_at <= now()
        ):
            # Expiry changes no row, so no notification drops the kept identity.
            admission.IDENTITIES.discard(key)
            return None
        return identity
    from . import jwt

    if resource and secret.count(".") == 2 and jwt.enabled():
        return await _idp_async(secret, resource, connection_id)
    return None
