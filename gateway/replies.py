"""What every upstream kind (streamable HTTP, HTTP+SSE, stdio) shares: era detection and
the replies the gateway makes up itself."""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from . import jsonrpc, sse
from .jsonrpc import Message

log = logging.getLogger(__name__)


@dataclass
class Accepted:
    """The upstream took a notification or a response; there is nothing to relay."""

    status: int = 202
    is_sse: bool = False
    session_id: str | None = None
    size: int = 0

    async def read_body(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        return None


@dataclass
class Answered:
    """A reply the gateway gives itself: the answer the upstream gave its era probe."""

    message: Message
    status: int = 200
    is_sse: bool = False
    session_id: str | None = None
    size: int = 0

    async def read_message(self) -> Message:
        return self.message

    async def first_response(self) -> Message:
        return self.message

    async def read_body(self) -> bytes:
        return jsonrpc.dumps(self.message.payload)

    async def aclose(self) -> None:
        return None


@dataclass
class ListenerReply:
    """An agent's GET stream on an upstream with one channel per session (an HTTP+SSE
    event stream, a stdio process): what the server sends that belongs to no call in
    flight, handed to the queue by the channel's reader; None ends it."""

    listeners: list[asyncio.Queue[Message | None]]
    queue: asyncio.Queue[Message | None] = field(default_factory=asyncio.Queue)
    status: int = 200
    is_sse: bool = True
    session_id: str | None = None

    def __post_init__(self) -> None:
        self.listeners.append(self.queue)

    async def events(
        self, idle_timeout: float | None = None
    ) -> AsyncIterator[tuple[sse.Event, Message | None]]:
        while True:
            message = await self.queue.get()
            if message is None:
                return
            yield sse.Event(data=""), message

    async def aclose(self) -> None:
        with contextlib.suppress(ValueError):
            self.listeners.remove(self.queue)


def refused_discover(refusal: dict[str, Any] | None, request_id: Any) -> Answered:
    """A 2026-07-28 request to a legacy upstream: the answer it gave the era probe."""
    error = refusal or {"code": jsonrpc.METHOD_NOT_FOUND, "message": "Method not found"}
    return Answered(Message({"jsonrpc": "2.0", "id": request_id, "error": error}))


@dataclass
class _EraState:
    modern: tuple[bool, float] | None = None
    discover_result: dict[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DetectsEra:
    """Whether the upstream speaks 2026-07-28: a server/discover probe (the subclass's
    `_probe_discover`, which returns the result or None), made once, cached for
    GATEWAY_ERA_CACHE_SECONDS and forgotten after a failure."""

    _era: _EraState | None = None

    def _era_state(self) -> _EraState:
        if self._era is None:
            self._era = _EraState()
        return self._era

    async def _probe_discover(self) -> dict[str, Any] | None:
        raise NotImplementedError

    def forget_era(self) -> None:
        self._era_state().modern = None

    async def is_modern(self) -> bool:
        era = self._era_state()
        async with era.lock:
            cached = era.modern
            if (
                cached is not None
                and time.monotonic() - cached[1] < settings.GATEWAY["ERA_CACHE_SECONDS"]
            ):
                return cached[0]
            result = await self._probe_discover()
            era.discover_result = result
            era.modern = (result is not None, time.monotonic())
            return result is not None

    async def discover_result(self) -> dict[str, Any] | None:
        if await self.is_modern():
            return self._era_state().discover_result
        return None


def unclaimed_to(
    message: Message,
    calls: list[asyncio.Queue[Message | None]],
    listeners: list[asyncio.Queue[Message | None]],
    *,
    shared: bool,
    upstream: str,
    reply: Callable[[dict[str, Any]], Awaitable[None]],
) -> list[asyncio.Queue[Message | None]]:
    """Where a message from a stdio or HTTP+SSE upstream that names no call goes (a log
    message, a change notification, a request of the server's own): the newest call in
    flight, which in an agent's own session is that agent's; with none in flight, the
    session's standalone stream, if the agent opened one.

    The session a gateway process keeps for stateless (2026-07-28) agents carries calls of
    several agents at once: there, such a message goes to a call only when it is the one
    in flight, and is dropped when there are several, since it could belong to any of
    them and must not reach another agent.

    A request of the server's that goes nowhere is answered with an error (sent with
    `reply`), so that the server does not wait for an answer that cannot come."""
    if not calls:
        if listeners:
            return listeners[-1:]
        _refuse(message, reply, upstream, "no call is in flight and no agent listens")
        return []
    if shared and len(calls) > 1:
        log.info(
            "upstream %s sent %s on the shared session of stateless agents with %d calls in "
            "flight; it names none of them, so none gets it",
            upstream,
            message.method or "a message",
            len(calls),
        )
        _refuse(
            message,
            reply,
            upstream,
            f"it names none of the {len(calls)} calls of different agents in flight on this "
            "session",
        )
        return []
    return calls[-1:]


# Refusals being sent (a task must be referenced until it ends).
_refusals: set[asyncio.Task[None]] = set()


def _refuse(
    message: Message,
    reply: Callable[[dict[str, Any]], Awaitable[None]],
    upstream: str,
    reason: str,
) -> None:
    if not message.is_request:
        return
    error = {
        "code": jsonrpc.INVALID_REQUEST,
        "message": f"The gateway has no agent to pass {message.method} to: {reason}.",
    }
    payload = {"jsonrpc": "2.0", "id": message.id, "error": error}
    task = asyncio.get_running_loop().create_task(_send_refusal(reply, payload, upstream))
    _refusals.add(task)
    task.add_done_callback(_refusals.discard)


async def _send_refusal(
    reply: Callable[[dict[str, Any]], Awaitable[None]], payload: dict[str, Any], upstream: str
) -> None:
    try:
        await reply(payload)
    except Exception as exc:  # the session ended meanwhile: nobody waits any more
        log.info("upstream %s: could not refuse its request: %s", upstream, exc)
