"""What the data path reads to admit a call, kept in memory between calls.

Every call needs its caller's token, the connection, the caller's grants, the
connection's policy and tool catalog, the masking rules (kept by masking/service.py with
`keep_seconds`), and (legacy era) its session: read from the database each time, that is
a dozen queries per call. They change rarely, so each gateway process keeps what
it read, and forgets it the moment it changes:

- on Postgres, triggers on the tables these values come from send a notification on the
  channel `mcpgw_cache` (sent when the changing transaction commits, whoever changed
  the table: the console, the API, a management command, another gateway process, or
  SQL typed by hand), and each gateway process listens and drops what the change touches.
  While a process is not listening (at start, or after losing its listening connection)
  it keeps nothing and reads everything from the database;
- on SQLite (the embedded single-process default) there are no notifications: changes
  made through this process drop what they touch at once (model signals), and anything
  kept is read again after `GATEWAY_ADMISSION_CACHE_SECONDS` (changes made by another
  process, such as a management command, take effect within that time).

Everything kept is also read again after `GATEWAY_ADMISSION_CACHE_MAX_AGE` seconds, and
`GATEWAY_ADMISSION_CACHE_SECONDS=0` turns keeping off.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

from django.conf import settings

from mcpgw import pg
from mcpgw.db import backend

log = logging.getLogger(__name__)

CHANNEL = "mcpgw_cache"
# Masking rules are kept by masking/service.py; their changes come on the same channel.
MASKING_RULES = "masking_maskingrule"
RETRY_SECONDS = 1.0
# Entries kept per kind before the oldest half is dropped.
MAX_ENTRIES = 50_000

_MISSING = object()


class Kept:
    """One kind of value the data path keeps, and the tables it is read from."""

    def __init__(self, name: str, tables: tuple[str, ...], *, unheard_seconds: bool = False):
        self.name = name
        self.tables = tables
        # Whether values are kept `GATEWAY_ADMISSION_CACHE_SECONDS` while a Postgres process
        # hears no notifications (else nothing is kept then).
        self.unheard_seconds = unheard_seconds
        self._entries: dict[Hashable, tuple[float, Any]] = {}

    def get(self, key: Hashable, max_age: float) -> Any:
        entry = self._entries.get(key)
        if entry is None or time.monotonic() - entry[0] >= max_age:
            return _MISSING
        return entry[1]

    def put(self, key: Hashable, value: Any, stamp: float) -> None:
        if len(self._entries) >= MAX_ENTRIES:
            for old in list(self._entries)[: MAX_ENTRIES // 2]:
                self._entries.pop(old, None)
        self._entries[key] = (stamp, value)

    def discard(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


IDENTITIES = Kept("identities", ("gateway_agenttoken", "auth_user"))
CONNECTIONS = Kept("connections", ("gateway_connection",))
GRANTS = Kept(
    "grants",
    (
        "auth_user",
        "auth_user_groups",
        "gateway_agenttoken",
        "approvals_connectionpolicy",
        "approvals_grant",
    ),
)
POLICIES = Kept(
    "policies",
    (
        "auth_user_groups",
        "approvals_connectionpolicy",
        "approvals_policyrule",
        "approvals_policyrule_groups",
    ),
)
# Sessions are dropped one by one (the notification names the session's digest).
SESSIONS = Kept("sessions", ("gateway_downstreamsession",))
# Each connection's tool catalog (gateway/catalog.py): pinned or not, each tool's state.
# A process that hears no notifications reads it again every
# `GATEWAY_ADMISSION_CACHE_SECONDS`, as it does the masking rules (tokens, grants and
# policy are then read for every call).
CATALOGS = Kept("catalogs", ("gateway_connection", "gateway_tooldefinition"), unheard_seconds=True)
ALL = (IDENTITIES, CONNECTIONS, GRANTS, POLICIES, SESSIONS, CATALOGS)

# Bumped whenever anything is dropped: a value read from the database while a change
# came in is not kept, since it may predate the change.
_generation = 0


def changed(payload: str) -> None:
    """A notification: `table`, or `table:key` for one row of a kept kind."""
    global _generation
    _generation += 1
    table, _, key = payload.partition(":")
    if table == MASKING_RULES:
        from masking import service

        service.invalidate()
        return
    for kept in ALL:
        if table in kept.tables:
            if key and kept is SESSIONS:
                kept.discard(key)
            else:
                kept.clear()


def forget_all() -> None:
    global _generation
    _generation += 1
    from masking import service

    service.invalidate()
    for kept in ALL:
        kept.clear()


def _is_postgres() -> bool:
    return backend().vendor == "postgresql"


class _Listener:
    """Listens for change notifications on one event loop."""

    def __init__(self) -> None:
        self.listening = False
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        import psycopg

        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    pg.conninfo("mcpgw-cache-listener"), autocommit=True
                ) as connection:
                    await connection.execute(f"LISTEN {CHANNEL}")
                    # Whatever changed while nobody listened is unknown: start empty.
                    forget_all()
                    self.listening = True
                    async for notification in connection.notifies():
                        changed(notification.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.listening:
                    log.warning("lost the change notifications (%s); reading every call", exc)
            finally:
                self.listening = False
                forget_all()
            await asyncio.sleep(RETRY_SECONDS)


_listeners: dict[asyncio.AbstractEventLoop, _Listener] = {}


def _max_age(kind: Kept | None = None) -> float:
    """How long a kept value (of `kind`) may be used right now; 0 when nothing may be kept."""
    gateway = settings.GATEWAY
    seconds = gateway["ADMISSION_CACHE_SECONDS"]
    if seconds <= 0:
        return 0.0
    if not _is_postgres():
        return seconds
    loop = asyncio.get_running_loop()
    listener = _listeners.get(loop)
    if listener is None:
        for stale in [other for other in _listeners if other.is_closed()]:
            del _listeners[stale]
        listener = _listeners[loop] = _Listener()
        listener.task = loop.create_task(listener.run(), name="admission cache listener")
    if listener.listening:
        return gateway["ADMISSION_CACHE_MAX_AGE"]
    return seconds if kind is not None and kind.unheard_seconds else 0.0


def keep_seconds() -> float:
    """How long the masking rules read now may be kept, for code on any thread (it starts
    no listener): as a kind kept `unheard_seconds`; 0 when nothing may be kept."""
    seconds = settings.GATEWAY["ADMISSION_CACHE_SECONDS"]
    if seconds <= 0:
        return 0.0
    if _is_postgres() and any(listener.listening for listener in list(_listeners.values())):
        return settings.GATEWAY["ADMISSION_CACHE_MAX_AGE"]
    return seconds


def generation() -> int:
    """Moves on whenever something kept is dropped: a value read while it moved may
    predate a change, and is not kept."""
    return _generation


def peek[T](kind: Kept, key: Hashable) -> T | None:
    """The kept value for key, if there is one that may still be used; never loads."""
    max_age = _max_age(kind)
    value = kind.get(key, max_age) if max_age else _MISSING
    return None if value is _MISSING else value  # type: ignore[return-value]


async def kept[T](kind: Kept, key: Hashable, load: Callable[[], Awaitable[T]]) -> T:
    """The kept value for key, or load() (kept for later unless it is None)."""
    max_age = _max_age(kind)
    if max_age:
        value = kind.get(key, max_age)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
    generation, stamp = _generation, time.monotonic()
    value = await load()
    if max_age and value is not None and generation == _generation:
        kind.put(key, value, stamp)
    return value


async def stop() -> None:
    """Stop listening (at shutdown)."""
    for listener in list(_listeners.values()):
        if listener.task is not None:
            listener.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener.task
    _listeners.clear()
    forget_all()


def _on_model_change(sender: Any, **kwargs: Any) -> None:
    table = sender._meta.db_table
    instance = kwargs.get("instance")
    if table == "gateway_downstreamsession" and instance is not None:
        payload = f"{table}:{instance.pk}"
    else:
        payload = table
    changed_here(payload)


def changed_here(payload: str) -> None:
    """A change made by this process (in a transaction or not)."""
    from django.db import transaction

    changed(payload)
    # Again once the change is visible to others: a value read in between is the old one.
    transaction.on_commit(lambda: changed(payload))


def connect_signals() -> None:
    """Changes made through this process drop what they touch at once, on any database."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save

    from approvals.models import ConnectionPolicy, Grant, PolicyRule

    from .models import AgentToken, Connection, DownstreamSession, ToolDefinition

    User = get_user_model()
    for model in (
        User,
        Group,
        AgentToken,
        Connection,
        DownstreamSession,
        ConnectionPolicy,
        Grant,
        PolicyRule,
        ToolDefinition,
    ):
        post_save.connect(_on_model_change, sender=model, dispatch_uid=f"admission-{model}")
        post_delete.connect(_on_model_change, sender=model, dispatch_uid=f"admission-d-{model}")
    for through in (User.groups.through, PolicyRule.groups.through):
        m2m_changed.connect(_on_model_change, sender=through, dispatch_uid=f"admission-{through}")
