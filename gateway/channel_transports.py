"""Message-channel transports for agents: WebSocket and the legacy HTTP+SSE transport.

Both carry JSON-RPC messages over one long-lived connection instead of one HTTP request
per message. Each message the agent sends is handled exactly like a POST to
/mcp/<slug> (same authentication, policy, approvals, audit and masking); whatever the
gateway would have answered on that POST goes back over the channel. The channel owns
its legacy-era session: it is created by `initialize` and ended when the channel closes.

- WebSocket: `/ws/mcp/<slug>`, subprotocol `mcp`, one JSON-RPC message per text frame.
- HTTP+SSE (2024-11-05): `GET /mcp/<slug>/sse` opens the stream; its first event,
  `endpoint`, names the URL the agent POSTs its messages to
  (`/mcp/<slug>/messages?session_id=...`); answers arrive as `message` events.
A channel lives in the gateway process that accepted it: a load balancer must send an
SSE session's POSTs to the process holding its stream (route on `session_id`).
"""

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings

from . import jsonrpc, sse
from .endpoint import Exchange, Receive, Scope, Send, _handle

log = logging.getLogger(__name__)

Outbox = Callable[[bytes], Awaitable[None]]


class Channel:
    """One agent connection: where answers go, and the session it holds."""

    def __init__(self, scope: Scope, slug: str, outbox: Outbox) -> None:
        self.scope = scope
        self.slug = slug
        self.outbox = outbox
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.closed = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self.standalone: asyncio.Task[None] | None = None

    def headers(self) -> dict[str, str]:
        headers = {}
        for raw_name, raw_value in self.scope["headers"]:
            headers[raw_name.decode("latin-1").lower()] = raw_value.decode("latin-1")
        headers["accept"] = "application/json, text/event-stream"
        headers["content-type"] = "application/json"
        headers.pop("content-length", None)
        headers.pop("mcp-session-id", None)
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
        if self.protocol_version:
            headers["mcp-protocol-version"] = self.protocol_version
        return headers

    def handle(self, body: bytes) -> None:
        task = asyncio.ensure_future(self._run(ChannelExchange(self, "POST", body)))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, exchange: "ChannelExchange") -> None:
        try:
            await _handle(exchange)
        except Exception:
            log.exception("unexpected error on a %s channel", self.scope["type"])
            if not exchange.started:
                await exchange.respond_error(
                    500, jsonrpc.INTERNAL_ERROR, "Internal error in the gateway; see its log"
                )
        if exchange.new_session and self.standalone is None:
            # The server's own messages (outside any call) come on the standalone stream.
            self.standalone = asyncio.ensure_future(
                self._run_quietly(ChannelExchange(self, "GET", b""))
            )

    async def _run_quietly(self, exchange: "ChannelExchange") -> None:
        with contextlib.suppress(Exception):
            await _handle(exchange)

    async def close(self) -> None:
        # Calls in flight see the channel close as a disconnect (and record it); calls
        # that already answered finish writing their outcome records.
        self.closed.set()
        if self.standalone is not None:
            self.standalone.cancel()
        pending = list(self.tasks)
        if pending:
            _done, stuck = await asyncio.wait(pending, timeout=30)
            for task in stuck:
                task.cancel()
        if self.session_id:
            with contextlib.suppress(Exception):
                await _handle(ChannelExchange(self, "DELETE", b""))


class ChannelExchange(Exchange):
    """One message from a channel, answered over the channel instead of an HTTP body."""

    def __init__(self, channel: Channel, method: str, body: bytes) -> None:
        scheme = {"ws": "http", "wss": "https"}.get(channel.scope.get("scheme", ""), None)
        scope = {
            **channel.scope,
            "type": "http",
            "method": method,
            "path": f"/mcp/{channel.slug}",
            "scheme": scheme or channel.scope.get("scheme", "http"),
        }
        scope["headers"] = [(k.encode(), v.encode()) for k, v in channel.headers().items()]

        async def never() -> dict[str, Any]:
            await channel.closed.wait()
            return {"type": "http.disconnect"}

        async def unused(message: dict[str, Any]) -> None:
            return None

        super().__init__(scope, never, unused)
        self.channel = channel
        self.body = body
        self.new_session = False

    async def read_body(self, limit: int) -> bytes:
        from .endpoint import BodyTooLarge

        if len(self.body) > limit:
            raise BodyTooLarge
        return self.body

    async def watch_disconnect(self) -> None:
        await self.channel.closed.wait()
        self.disconnected.set()

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = "application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.started = self.finished = True
        for name, value in headers or []:
            if name == b"mcp-session-id" and self.channel.session_id is None:
                self.channel.session_id = value.decode()
                self.new_session = True
        if body:
            if self.new_session:
                with contextlib.suppress(ValueError, AttributeError):
                    version = json.loads(body)["result"]["protocolVersion"]
                    self.channel.protocol_version = str(version)
            await self.channel.outbox(body)

    async def start_stream(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.started = True

    async def send_event(self, event: sse.Event) -> None:
        if event.data:
            await self.channel.outbox(event.data.encode())

    async def send_comment(self, text: str) -> None:
        return None

    async def end_stream(self) -> None:
        self.finished = True


# -- WebSocket ---------------------------------------------------------------------------


async def websocket_app(scope: Scope, receive: Receive, send: Send, slug: str) -> None:
    if "mcp" not in scope.get("subprotocols", []):
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 4400})
        return
    send_lock = asyncio.Lock()

    async def outbox(data: bytes) -> None:
        async with send_lock:
            with contextlib.suppress(Exception):
                await send({"type": "websocket.send", "text": data.decode()})

    channel = Channel(scope, slug, outbox)
    try:
        while True:
            message = await receive()
            if message["type"] == "websocket.connect":
                await send({"type": "websocket.accept", "subprotocol": "mcp"})
            elif message["type"] == "websocket.receive":
                text = message.get("text")
                data = text.encode() if text is not None else message.get("bytes") or b""
                channel.handle(data)
            elif message["type"] == "websocket.disconnect":
                return
    finally:
        await channel.close()


# -- HTTP+SSE (2024-11-05) -------------------------------------------------------------

_sse_channels: dict[str, Channel] = {}


async def sse_stream(scope: Scope, receive: Receive, send: Send, slug: str) -> None:
    """GET /mcp/<slug>/sse: the stream; POSTs go to the endpoint it announces."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    async def outbox(data: bytes) -> None:
        queue.put_nowait(data)

    channel = Channel(scope, slug, outbox)
    # Authenticate now, as a POST would be: refuse the stream outright without a token.
    probe = ChannelExchange(channel, "POST", b"")
    from .auth import authenticate

    if await authenticate(probe.headers.get("authorization", "")) is None and not _maybe_idp(probe):
        body = jsonrpc.dumps(jsonrpc.error(None, jsonrpc.INVALID_REQUEST, "Unauthorized"))
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    key = secrets.token_urlsafe(24)
    _sse_channels[key] = channel
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache, no-transform"),
                (b"x-accel-buffering", b"no"),
            ],
        }
    )
    endpoint = f"/mcp/{slug}/messages?session_id={key}"

    async def pump() -> None:
        await send(
            {
                "type": "http.response.body",
                "more_body": True,
                "body": sse.encode(sse.Event(data=endpoint, event="endpoint")),
            }
        )
        while True:
            try:
                data = await asyncio.wait_for(queue.get(), 15)
            except TimeoutError:
                await send({"type": "http.response.body", "body": sse.KEEPALIVE, "more_body": True})
                continue
            await send(
                {
                    "type": "http.response.body",
                    "more_body": True,
                    "body": sse.encode(sse.Event(data=data.decode())),
                }
            )

    async def disconnected() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    pumping = asyncio.ensure_future(pump())
    waiting = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({pumping, waiting}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        pumping.cancel()
        waiting.cancel()
        _sse_channels.pop(key, None)
        await channel.close()
        with contextlib.suppress(Exception):
            await send({"type": "http.response.body", "body": b""})


def _maybe_idp(exchange: ChannelExchange) -> bool:
    """An IdP token is checked per message (it needs the resource); let the stream open."""
    authorization = exchange.headers.get("authorization", "")
    return authorization.lower().startswith("bearer ") and authorization.count(".") == 2


async def sse_message(scope: Scope, receive: Receive, send: Send, slug: str) -> None:
    """POST /mcp/<slug>/messages?session_id=...: one message for an open SSE channel."""
    query = parse_qs(scope.get("query_string", b"").decode())
    channel = _sse_channels.get((query.get("session_id") or [""])[0])
    exchange = Exchange(scope, receive, send)
    if channel is None or channel.slug != slug:
        await exchange.respond_error(404, jsonrpc.INVALID_REQUEST, "Unknown or closed SSE session")
        return
    # The message must come with the same credentials as the stream.
    if exchange.headers.get("authorization") != channel.headers().get("authorization"):
        await exchange.respond_error(
            403, jsonrpc.INVALID_REQUEST, "Forbidden: not this session's credentials"
        )
        return
    from .endpoint import BodyTooLarge

    try:
        body = await exchange.read_body(settings.GATEWAY["MAX_BODY_BYTES"])
    except BodyTooLarge:
        await exchange.respond_error(413, jsonrpc.INVALID_REQUEST, "Request body too large")
        return
    channel.handle(body)
    await exchange.respond(202, b"Accepted", content_type="text/plain")
