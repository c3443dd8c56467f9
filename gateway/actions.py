"""State changes on connections and tokens. Each is one explicit function."""

from datetime import timedelta

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils.timezone import now

from .models import AgentToken, Connection, Era


@transaction.atomic
def save_connection(
    *,
    slug: str,
    url: str,
    name: str = "",
    headers: dict[str, str] | None = None,
    enabled: bool = True,
) -> tuple[Connection, bool]:
    """Create or update a connection. headers=None keeps the stored credentials."""
    connection = Connection.objects.select_for_update().filter(slug=slug).first()
    created = connection is None
    if connection is None:
        connection = Connection(slug=slug)
    if connection.url != url:
        # A new upstream may speak another era.
        connection.era = Era.UNKNOWN
        connection.era_detected_at = None
    connection.url = url
    connection.name = name or connection.name or slug
    connection.enabled = enabled
    if headers is not None:
        connection.set_headers(headers)
    connection.updated_at = now()
    connection.full_clean()
    connection.save()
    return connection, created


def issue_token(
    *,
    user: AbstractBaseUser,
    connection: Connection | None = None,
    ttl: timedelta | None = None,
    run_label: str = "",
    scopes: list[str] | None = None,
) -> tuple[AgentToken, str]:
    """Issue a token; the plaintext is returned once and never stored."""
    public_id, secret = AgentToken.new_secret()
    token = AgentToken.objects.create(
        public_id=public_id,
        digest=AgentToken.digest_of(secret),
        user=user,
        connection=connection,
        run_label=run_label,
        scopes=scopes or ["mcp"],
        expires_at=now() + ttl if ttl else None,
    )
    return token, secret


def revoke_token(token: AgentToken) -> None:
    AgentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now())
