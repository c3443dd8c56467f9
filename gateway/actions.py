"""State changes on connections and tokens. Each is one explicit function."""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils.timezone import now

from audit.events import record_event

from . import admission
from .models import AgentToken, Connection, Era, Transport

# Transports the data path can reach today; the others are accepted by the model so that
# connections can be registered ahead, and are refused here until their client exists.
SUPPORTED_TRANSPORTS = (Transport.STREAMABLE_HTTP, Transport.SSE, Transport.STDIO)


@dataclass(frozen=True)
class StdioSpec:
    """The registered command of a stdio connection. env=None keeps the stored variables."""

    command: str
    args: tuple[str, ...] = ()
    cwd: str = ""
    env: dict[str, str] | None = None
    max_processes: int = 8


@transaction.atomic
def save_connection(
    *,
    slug: str,
    url: str,
    name: str = "",
    headers: dict[str, str] | None = None,
    enabled: bool = True,
    actor: Any = None,
    transport: str | None = None,
    create_only: bool = False,
    stdio: StdioSpec | None = None,
) -> tuple[Connection, bool]:
    """Create or update a connection. headers=None keeps the stored credentials;
    transport=None keeps the stored transport (Streamable HTTP for a new connection).
    create_only refuses to touch an existing connection of that slug."""
    connection = Connection.objects.select_for_update().filter(slug=slug).first()
    created = connection is None
    if not created and create_only:
        raise ValidationError({"slug": ["A connection with this slug already exists."]})
    if transport is not None and transport not in SUPPORTED_TRANSPORTS:
        label = Transport(transport).label if transport in Transport.values else transport
        raise ValidationError({"transport": [f"{label} is not supported yet."]})
    before = _connection_state(connection) if connection is not None else None
    if connection is None:
        connection = Connection(slug=slug)
    if transport is not None:
        connection.transport = transport
    if stdio is not None:
        connection.command = stdio.command
        connection.args = list(stdio.args)
        connection.cwd = stdio.cwd
        connection.max_processes = stdio.max_processes
        if stdio.env is not None:
            connection.set_env(stdio.env)
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
    try:
        with transaction.atomic():
            connection.save()
    except IntegrityError:
        # Another request created the same slug since we looked.
        raise ValidationError({"slug": ["A connection with this slug already exists."]}) from None
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


@transaction.atomic
def delete_connection(connection: Connection, *, actor: Any = None) -> None:
    """Delete a connection with everything that hangs off it (its tool catalog, policy,
    grants, held calls, scoped masking rules and the tokens limited to it)."""
    locked = Connection.objects.select_for_update().filter(pk=connection.pk).first()
    if locked is None:
        return
    state = _connection_state(locked)
    tokens = [t.display for t in AgentToken.objects.filter(connection=locked)]
    locked.delete()
    record_event(
        "connection.deleted",
        actor=actor,
        connection=connection.slug,
        details={"before": state, "tokens_deleted": tokens},
    )


@transaction.atomic
def record_connection_test(
    connection: Connection,
    *,
    era: str | None,
    summary: dict[str, Any],
    actor: Any = None,
) -> None:
    """An admin's "Test connection": remember the era the upstream answered in (None when
    it could not be reached) and record the test."""
    if era is not None:
        Connection.objects.filter(pk=connection.pk).update(era=era, era_detected_at=now())
    record_event(
        "connection.tested",
        actor=actor,
        connection=connection.slug,
        details={"era": era, **summary},
    )


def _connection_state(connection: Connection) -> dict[str, Any]:
    return {
        "name": connection.name,
        "transport": connection.transport,
        "url": connection.url,
        "enabled": connection.enabled,
        "credential_headers": list(connection.header_names),
        "command": connection.command,
        "args": list(connection.args or ()),
        "cwd": connection.cwd,
        "environment": list(connection.env_names),
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
        admission.changed_here("gateway_agenttoken")
        record_event(
            "token.revoked",
            actor=actor,
            details={"token": token.display, "owner": token.user.get_username()},
        )
    return bool(revoked)
