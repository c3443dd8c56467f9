"""State changes on connections and tokens. Each is one explicit function."""

from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils.timezone import now

from audit.events import record_event

from .models import AgentToken, Connection, Era


@transaction.atomic
def save_connection(
    *,
    slug: str,
    url: str,
    name: str = "",
    headers: dict[str, str] | None = None,
    enabled: bool = True,
    actor: Any = None,
) -> tuple[Connection, bool]:
    """Create or update a connection. headers=None keeps the stored credentials."""
    connection = Connection.objects.select_for_update().filter(slug=slug).first()
    created = connection is None
    before = _connection_state(connection) if connection is not None else None
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
    record_event(
        "connection.created" if created else "connection.updated",
        actor=actor,
        connection=connection.slug,
        details={
            "before": before,
            "after": _connection_state(connection),
            # Names only: credential values never reach the audit trail.
            "credentials_replaced": headers is not None,
        },
    )
    return connection, created


def _connection_state(connection: Connection) -> dict[str, Any]:
    return {
        "name": connection.name,
        "url": connection.url,
        "enabled": connection.enabled,
        "credential_headers": list(connection.header_names),
    }


def issue_token(
    *,
    user: AbstractBaseUser,
    connection: Connection | None = None,
    ttl: timedelta | None = None,
    run_label: str = "",
    scopes: list[str] | None = None,
    actor: Any = None,
) -> tuple[AgentToken, str]:
    """Issue a token; the plaintext is returned once and never stored."""
    public_id, secret = AgentToken.new_secret()
    with transaction.atomic():
        token = _create_token(public_id, secret, user, connection, ttl, run_label, scopes)
        record_event(
            "token.issued",
            actor=actor,
            connection=connection.slug if connection else "",
            details={
                "token": token.display,
                "owner": user.get_username(),
                "run_label": run_label,
                "scopes": token.scopes,
                "expires_at": token.expires_at.isoformat() if token.expires_at else None,
            },
        )
    return token, secret


def _create_token(
    public_id: str,
    secret: str,
    user: AbstractBaseUser,
    connection: Connection | None,
    ttl: timedelta | None,
    run_label: str,
    scopes: list[str] | None,
) -> AgentToken:
    return AgentToken.objects.create(
        public_id=public_id,
        digest=AgentToken.digest_of(secret),
        user=user,
        connection=connection,
        run_label=run_label,
        scopes=scopes or ["mcp"],
        expires_at=now() + ttl if ttl else None,
    )


@transaction.atomic
def revoke_token(token: AgentToken, *, actor: Any = None) -> bool:
    revoked = AgentToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
        revoked_at=now()
    )
    if revoked:
        record_event(
            "token.revoked",
            actor=actor,
            details={"token": token.display, "owner": token.user.get_username()},
        )
    return bool(revoked)
