"""Database access for the data path, in small async helpers.

They run in worker threads that do not funnel through one shared thread
(thread_sensitive=False): each is a single short query with no transaction to share.
"""

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.utils.timezone import now

from . import admission
from .models import Connection, DownstreamSession, digest
from .pipeline import ConnectionInfo

SESSION_TABLE = DownstreamSession._meta.db_table


def _connection(slug: str) -> ConnectionInfo | None:
    connection = Connection.objects.filter(slug=slug).first()
    if connection is None:
        return None
    return ConnectionInfo(
        id=connection.pk,
        slug=connection.slug,
        url=connection.url,
        enabled=connection.enabled,
        headers=connection.get_headers(),
        stamp=connection.updated_at.isoformat(),
        transport=connection.transport,
        command=connection.command,
        args=tuple(str(a) for a in connection.args or ()),
        cwd=connection.cwd,
        env=connection.get_env(),
        max_processes=connection.max_processes,
    )


_load_connection = sync_to_async(_connection, thread_sensitive=False)


async def load_connection(slug: str) -> ConnectionInfo | None:
    return await admission.kept(admission.CONNECTIONS, slug, lambda: _load_connection(slug))


@dataclass(frozen=True, slots=True)
class SessionInfo:
    key_digest: str
    connection_id: int
    token_id: int | None
    protocol_version: str
    initialize_params: dict[str, Any]
    upstream_session_id: str
    upstream_protocol_version: str
    subject: str = ""


def _create_session(
    key: str,
    *,
    connection_id: int,
    token_id: int | None,
    protocol_version: str,
    initialize_params: dict[str, Any],
    upstream_session_id: str,
    upstream_protocol_version: str,
    subject: str = "",
) -> None:
    DownstreamSession.objects.create(
        key_digest=digest(key),
        connection_id=connection_id,
        token_id=token_id,
        subject=subject,
        protocol_version=protocol_version,
        initialize_params=initialize_params,
        upstream_session_id=upstream_session_id,
        upstream_protocol_version=upstream_protocol_version,
    )


def _get_session(key: str) -> SessionInfo | None:
    idle_limit = now() - timedelta(seconds=settings.GATEWAY["SESSION_IDLE_TIMEOUT"])
    row = DownstreamSession.objects.filter(
        key_digest=digest(key), ended_at__isnull=True, last_seen_at__gt=idle_limit
    ).first()
    if row is None:
        return None
    if now() - row.last_seen_at > timedelta(minutes=1):
        DownstreamSession.objects.filter(pk=row.pk).update(last_seen_at=now())
    return SessionInfo(
        key_digest=row.key_digest,
        connection_id=row.connection_id,
        token_id=row.token_id,
        protocol_version=row.protocol_version,
        initialize_params=row.initialize_params,
        upstream_session_id=row.upstream_session_id,
        upstream_protocol_version=row.upstream_protocol_version,
        subject=row.subject,
    )


def _set_upstream_session(key_digest: str, upstream_session_id: str, version: str) -> None:
    DownstreamSession.objects.filter(pk=key_digest).update(
        upstream_session_id=upstream_session_id, upstream_protocol_version=version
    )
    admission.changed_here(f"{SESSION_TABLE}:{key_digest}")


def _end_session(key_digest: str) -> None:
    DownstreamSession.objects.filter(pk=key_digest, ended_at__isnull=True).update(ended_at=now())
    admission.changed_here(f"{SESSION_TABLE}:{key_digest}")


create_session = sync_to_async(_create_session, thread_sensitive=False)
_get_session_async = sync_to_async(_get_session, thread_sensitive=False)


async def get_session(key: str) -> SessionInfo | None:
    return await admission.kept(admission.SESSIONS, digest(key), lambda: _get_session_async(key))


set_upstream_session = sync_to_async(_set_upstream_session, thread_sensitive=False)
end_session = sync_to_async(_end_session, thread_sensitive=False)
