"""Upstream MCP servers on the legacy HTTP+SSE transport (protocol 2024-11-05).

`GET <url>` opens an event stream whose first event, `endpoint`, names the URL the
client POSTs its JSON-RPC messages to (each answered 202); responses, notifications and
the server's own requests all arrive on the stream. So:
- one stream per upstream session: one per legacy-era agent session, and one shared per
  connection and process for 2026-07-28 agents, which are stateless (the gateway opens
  that session itself and declares no client capabilities);
- the message URL is resolved against the stream's URL and must stay on its origin: the
  connection's credentials go on the GET and on every POST, and a server must not be
  able to send them elsewhere;
- request ids (and progress tokens) are rewritten to ids unique on the stream, so calls
  of different agents sharing a stream cannot collide; answers get the caller's id back;
- a response goes to the call waiting for its id, progress to the call that asked for
  it; other notifications and the server's requests go to the newest call in flight, or
  else to the session's standalone stream (GET); on the session shared by stateless
  agents, only to a call that is alone in flight (see `replies.unclaimed_to`); a server
  request that goes nowhere is answered with an error;
- a stream that breaks off fails the calls in flight with a clear error, and the
  session's next call opens a fresh stream (re-initialized with the agent's original
  parameters); a stream without calls for GATEWAY_SESSION_IDLE_TIMEOUT is closed.
A session's stream lives in the gateway process that opened it, like a stdio process.
"""

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from django.conf import settings

from . import jsonrpc, protocol, sse
from .jsonrpc import Message
from .replies import (
    Accepted,
    Answered,
    DetectsEra,
    ListenerReply,
    refused_discover,
    unclaimed_to,
)
from .upstream import (
    USER_AGENT,
    InitializeRefused,
    LegacySession,
    SessionExpired,
    UpstreamFailure,
    describe,
)

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int] | None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        return None
    return scheme, parts.hostname.lower(), port


def message_url(stream_url: str, announced: str) -> str | None:
    """The URL an `endpoint` event names, resolved against the stream's URL; None unless
    it is on the stream's own origin (and carries no user name or password)."""
    resolved = urljoin(stream_url, announced.strip())
    origin = _origin(resolved)
    if origin is None or origin != _origin(stream_url):
        return None
    parts = urlsplit(resolved)
    if parts.username is not None or parts.password is not None:
        return None
    return resolved


def _with_progress_token(payload: dict[str, Any], token: str) -> tuple[dict[str, Any], Any]:
    """The request with its progress token replaced, and the token it had (None if none)."""
    params = payload.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if not isinstance(meta, dict) or "progressToken" not in meta:
        return payload, None
    assert isinstance(params, dict)
    original = meta["progressToken"]
    return {**payload, "params": {**params, "_meta": {**meta, "progressToken": token}}}, original


@dataclass(slots=True)
class _Call:
    """A request in flight on a stream, under the id the upstream knows it by."""

    queue: asyncio.Queue[Message | None]
    original_id: jsonrpc.JsonId
    original_token: Any


class SseStream:
    """One upstream session: its event stream, its message URL and the calls in flight."""

    def __init__(self, upstream: "LegacySseUpstream", key: str) -> None:
        self.upstream = upstream
        self.key = key
        self.endpoint: str | None = None
        self.calls: dict[str, _Call] = {}
        # The upstream id of a call by the id its caller gave it, for notifications/cancelled.
        self.by_original: dict[jsonrpc.JsonId, str] = {}
        self.listeners: list[asyncio.Queue[Message | None]] = []
        self.last_used = time.monotonic()
        self.end_reason = ""
        self.closing = False
        # Whether this is the session kept for stateless agents (`shared_session`).
        self.shared = False
        self._response: httpx.Response | None = None
        self._reader: asyncio.Task[None] | None = None
        self._announced: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        # Retrieved here so that a stream ending before anyone waits is not reported.
        self._announced.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._ids = 0

    @property
    def name(self) -> str:
        return self.upstream.slug

    @property
    def alive(self) -> bool:
        return self._reader is not None and not self._reader.done() and not self.closing

    async def open(self) -> None:
        """GET the stream and wait for its `endpoint` event."""
        upstream = self.upstream
        timeouts = settings.GATEWAY
        request = upstream.client.build_request(
            "GET",
            upstream.url,
            headers=upstream.headers_for(
                {"accept": "text/event-stream", "cache-control": "no-cache"}
            ),
            # The stream may stay quiet for as long as no call is in flight.
            timeout=httpx.Timeout(
                timeouts["UPSTREAM_TIMEOUT"],
                connect=timeouts["UPSTREAM_CONNECT_TIMEOUT"],
                read=None,
            ),
        )
        try:
            response = await upstream.client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_TIMEOUT,
                f"upstream {self.name} did not open its event stream in time "
                f"({type(exc).__name__})",
                outcome="upstream_error" if isinstance(exc, httpx.ConnectTimeout) else "timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.name} is unreachable: {describe(exc)}",
            ) from None
        content_type = response.headers.get("content-type", "")
        if response.status_code != 200:
            await response.aclose()
            raise _refusal(self.name, response.status_code, "the event stream")
        if not content_type.startswith("text/event-stream"):
            await response.aclose()
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                f"upstream {self.name} answered with {content_type or 'no content type'} "
                "instead of an event stream; is the URL its HTTP+SSE endpoint (often /sse)?",
            )
        self._response = response
        self._reader = asyncio.ensure_future(self._read(response))
        try:
            self.endpoint = await asyncio.wait_for(
                asyncio.shield(self._announced), timeouts["UPSTREAM_TIMEOUT"]
            )
        except BaseException as exc:  # a refusal, a timeout, or the caller went away
            await self.close()
            if isinstance(exc, TimeoutError):
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_TIMEOUT,
                    f"upstream {self.name} opened its event stream but named no message "
                    f"endpoint within {timeouts['UPSTREAM_TIMEOUT']:g} s",
                    outcome="timeout",
                ) from None
            raise

    async def _read(self, response: httpx.Response) -> None:
        reason = "the upstream closed its event stream"
        try:
            async for event in sse.parse_events(response.aiter_bytes()):
                if event.event == "endpoint":
                    self._on_endpoint(event.data)
                elif event.event == "message" and event.data:
                    try:
                        message = jsonrpc.validate(json.loads(event.data))
                    except (ValueError, jsonrpc.InvalidMessage):
                        log.warning("upstream %s sent an invalid SSE message; dropped", self.name)
                        continue
                    self._route(message)
        except httpx.HTTPError as exc:
            reason = f"the upstream's event stream broke off ({describe(exc)})"
        except Exception as exc:  # a stream must never take the process down
            log.exception("reading the event stream of upstream %s failed", self.name)
            reason = f"the upstream's event stream failed ({type(exc).__name__})"
        finally:
            self._ended(reason)

    def _on_endpoint(self, data: str) -> None:
        if self._announced.done():
            return
        url = message_url(self.upstream.url, data)
        if url is None:
            log.warning(
                "upstream %s named a message endpoint off its own origin; refused", self.name
            )
            self._announced.set_exception(
                UpstreamFailure(
                    jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                    f"upstream {self.name} named a message endpoint on another origin than "
                    "its event stream; the gateway refuses to send messages there",
                )
            )
            self.closing = True
            return
        self._announced.set_result(url)

    def _ended(self, reason: str) -> None:
        if not self.end_reason:
            self.end_reason = reason
        if not self._announced.done():
            self._announced.set_exception(
                UpstreamFailure(jsonrpc.UPSTREAM_UNAVAILABLE, f"upstream {self.name}: {reason}")
            )
        for call in self.calls.values():
            call.queue.put_nowait(None)
        for queue in self.listeners:
            queue.put_nowait(None)
        self.upstream.lost(self)

    def _route(self, message: Message) -> None:
        if message.is_response:
            call = self.calls.get(message.id) if isinstance(message.id, str) else None
            if call is not None:
                call.queue.put_nowait(message)
            else:
                log.info("upstream %s answered a request nobody waits for", self.name)
            return
        if message.method == "notifications/progress":
            token = message.params.get("progressToken")
            call = self.calls.get(token) if isinstance(token, str) else None
            if call is not None:
                call.queue.put_nowait(message)
                return
        calls = [c.queue for c in self.calls.values()]
        targets = unclaimed_to(
            message, calls, self.listeners, shared=self.shared, upstream=self.name, reply=self.post
        )
        for queue in targets:
            queue.put_nowait(message)

    def next_id(self) -> str:
        self._ids += 1
        return f"gw-{self._ids}"

    async def post(self, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        """POST one message to the session's message URL."""
        if not self.alive or self.endpoint is None:
            raise SessionExpired
        upstream = self.upstream
        headers = upstream.headers_for({"content-type": "application/json", **(extra or {})})
        try:
            response = await upstream.client.post(
                self.endpoint, content=jsonrpc.dumps(payload), headers=headers
            )
        except httpx.TimeoutException as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_TIMEOUT,
                f"upstream {self.name} did not accept a message within "
                f"{settings.GATEWAY['UPSTREAM_TIMEOUT']:g} s ({type(exc).__name__})",
                outcome="timeout",
            ) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.name} is unreachable: {describe(exc)}",
            ) from None
        self.last_used = time.monotonic()
        if response.status_code == 404:
            # The upstream no longer knows the session: it must be opened afresh.
            await self.close()
            raise SessionExpired
        if response.status_code >= 300:
            raise _refusal(self.name, response.status_code, "a message", response.text)

    async def request(
        self, payload: dict[str, Any], extra: dict[str, str] | None = None
    ) -> "SseReply":
        upstream_id = self.next_id()
        sent, original_token = _with_progress_token(payload, upstream_id)
        call = _Call(asyncio.Queue(), payload.get("id"), original_token)
        self.calls[upstream_id] = call
        self.by_original[call.original_id] = upstream_id
        try:
            await self.post({**sent, "id": upstream_id}, extra)
        except BaseException:
            self._forget(upstream_id)
            raise
        return SseReply(self, upstream_id, call)

    def _forget(self, upstream_id: str) -> _Call | None:
        call = self.calls.pop(upstream_id, None)
        if call is not None and self.by_original.get(call.original_id) == upstream_id:
            del self.by_original[call.original_id]
        return call

    def abandon(self, upstream_id: str) -> None:
        """The caller gave up before the answer came: tell the upstream to stop."""
        if self._forget(upstream_id) is None or not self.alive:
            return
        note = {
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": upstream_id, "reason": "the client went away"},
        }
        task = asyncio.ensure_future(self.post(note))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        self.closing = True
        if not self.end_reason:
            self.end_reason = "the session ended"
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        else:
            self._ended(self.end_reason)
        if self._response is not None:
            with contextlib.suppress(Exception):
                await self._response.aclose()


def _refusal(name: str, status: int, what: str, body: str = "") -> UpstreamFailure:
    if status in (401, 403):
        return UpstreamFailure(
            jsonrpc.UPSTREAM_UNAVAILABLE,
            f"upstream {name} refused the gateway's credentials (HTTP {status}); "
            "an admin must update the connection",
        )
    detail = body.strip().splitlines()[0][:200] if body.strip() else ""
    return UpstreamFailure(
        jsonrpc.UPSTREAM_UNAVAILABLE if status >= 500 else jsonrpc.UPSTREAM_PROTOCOL_ERROR,
        f"upstream {name} refused {what} (HTTP {status})" + (f": {detail}" if detail else ""),
    )


@dataclass
class SseReply:
    """The answer to one request: what the stream carries for it, until its response."""

    stream: SseStream
    upstream_id: str
    call: _Call
    status: int = 200
    is_sse: bool = True
    session_id: str | None = None
    size: int = 0
    done: bool = False

    @property
    def name(self) -> str:
        return self.stream.name

    async def events(
        self, idle_timeout: float | None = None
    ) -> AsyncIterator[tuple[sse.Event, Message | None]]:
        timeout = idle_timeout or settings.GATEWAY["UPSTREAM_TIMEOUT"]
        while not self.done:
            try:
                message = await asyncio.wait_for(self.call.queue.get(), timeout)
            except TimeoutError:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_TIMEOUT,
                    f"upstream {self.name} stopped answering for {timeout:g} s",
                    outcome="timeout",
                ) from None
            if message is None:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_UNAVAILABLE,
                    f"upstream {self.name}: {self.stream.end_reason or 'the stream ended'} "
                    "before answering",
                )
            if message.is_response:
                self.done = True
                self.stream._forget(self.upstream_id)
                message = Message({**message.payload, "id": self.call.original_id})
            elif message.method == "notifications/progress" and (
                message.params.get("progressToken") == self.upstream_id
            ):
                params = {**message.params, "progressToken": self.call.original_token}
                message = Message({**message.payload, "params": params})
            yield sse.Event(data=""), message

    async def first_response(self) -> Message:
        async for _event, message in self.events():
            if message is not None and message.is_response:
                return message
        raise UpstreamFailure(
            jsonrpc.UPSTREAM_PROTOCOL_ERROR, f"upstream {self.name} sent no response"
        )

    async def read_message(self) -> Message | None:
        return await self.first_response()

    async def read_body(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        if not self.done:
            self.done = True
            self.stream.abandon(self.upstream_id)


@dataclass
class LegacySseUpstream(DetectsEra):
    """The gateway's client for one HTTP+SSE connection, with the same interface as the
    Streamable HTTP `Upstream` so the data path treats both alike."""

    slug: str
    url: str
    headers: dict[str, str]
    client: httpx.AsyncClient = field(init=False)
    streams: dict[str, SseStream] = field(default_factory=dict, init=False)
    # Whether the upstream answers server/discover (2026-07-28), with the time we learnt it.
    # What the upstream answered the probe when it is not modern (replayed to agents that
    # send server/discover themselves).
    _discover_refusal: dict[str, Any] | None = field(default=None, init=False)
    # The stream 2026-07-28 requests go on when the upstream is modern (no initialize).
    _sessionless: SseStream | None = field(default=None, init=False)
    _sessionless_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    # The session used on behalf of stateless (modern) agents when the upstream is legacy.
    _shared: LegacySession | None = field(default=None, init=False)
    _shared_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _sweeper: asyncio.Task[None] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        timeouts = settings.GATEWAY
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                timeouts["UPSTREAM_TIMEOUT"], connect=timeouts["UPSTREAM_CONNECT_TIMEOUT"]
            ),
            # Each open session holds one connection for its stream.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=50),
            follow_redirects=False,
        )

    @property
    def name(self) -> str:
        return self.slug

    def headers_for(self, extra: dict[str, str]) -> dict[str, str]:
        headers = {"user-agent": USER_AGENT, **extra}
        # The connection's own headers go last: they carry the upstream credentials, and
        # nothing from the agent may override them.
        headers.update(self.headers)
        return headers

    # -- streams -------------------------------------------------------------------

    async def _open(self) -> SseStream:
        stream = SseStream(self, f"sse-{secrets.token_hex(12)}")
        try:
            await stream.open()
        except UpstreamFailure:
            self.forget_era()
            raise
        self.streams[stream.key] = stream
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return stream

    def lost(self, stream: SseStream) -> None:
        """A stream ended: its session is gone, and the upstream may have changed."""
        if self.streams.get(stream.key) is stream:
            del self.streams[stream.key]
        if not stream.closing:
            log.warning("upstream %s: %s", self.slug, stream.end_reason)
            self.forget_era()

    async def _sweep(self) -> None:
        idle = settings.GATEWAY["SESSION_IDLE_TIMEOUT"]
        while self.streams:
            await asyncio.sleep(min(idle, 60))
            now = time.monotonic()
            for key, stream in list(self.streams.items()):
                busy = stream.calls or stream.listeners
                if not busy and now - stream.last_used > idle:
                    self.streams.pop(key, None)
                    await stream.close()

    def _stream(self, session_id: str | None) -> SseStream:
        stream = self.streams.get(session_id or "")
        if stream is None or not stream.alive:
            # Gone (broken off, idle, or opened by another gateway process): the data
            # path re-initializes, as for an HTTP upstream that forgot a session.
            self.streams.pop(session_id or "", None)
            raise SessionExpired
        return stream

    async def _sessionless_stream(self) -> SseStream:
        async with self._sessionless_lock:
            stream = self._sessionless
            if stream is None or not stream.alive:
                stream = self._sessionless = await self._open()
            return stream

    # -- era detection -------------------------------------------------------------

    async def _probe_discover(self) -> dict[str, Any] | None:
        """server/discover on a fresh stream, kept for 2026-07-28 requests if it answers."""
        stream = await self._open()
        result: Any = None
        try:
            reply = await stream.request(
                protocol.discover_request("gateway-probe"),
                protocol.modern_headers("server/discover", None),
            )
            message = await reply.first_response()
            result = message.payload.get("result")
            error = message.payload.get("error")
            self._discover_refusal = error if isinstance(error, dict) else None
        except (UpstreamFailure, SessionExpired) as exc:
            # A legacy server may refuse the message outright, or drop the stream.
            log.info("upstream %s did not answer server/discover: %s", self.slug, exc)
            self._discover_refusal = None
        except BaseException:
            await self._end(stream)
            raise
        modern = (
            isinstance(result, dict)
            and isinstance(result.get("supportedVersions"), list)
            and protocol.MODERN_VERSION in result["supportedVersions"]
        )
        if modern and stream.alive:
            async with self._sessionless_lock:
                previous, self._sessionless = self._sessionless, stream
            if previous is not None and previous is not stream:
                await self._end(previous)
            return result
        await self._end(stream)
        return result if modern else None

    # -- the data path's interface -------------------------------------------------

    async def initialize(self, params: dict[str, Any]) -> LegacySession:
        """Open a session: a fresh stream, initialize, then notifications/initialized."""
        stream = await self._open()
        try:
            reply = await stream.request(
                {"jsonrpc": "2.0", "id": "gateway-init", "method": "initialize", "params": params}
            )
            message = await reply.first_response()
            if "error" in message.payload:
                error = message.payload["error"]
                raise InitializeRefused(error if isinstance(error, dict) else {}, 200)
            result = message.payload.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                    f"upstream {self.slug} answered initialize without a protocol version",
                )
            await stream.post({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except BaseException:
            await self._end(stream)
            raise
        return LegacySession(stream.key, result["protocolVersion"], result)

    async def post(
        self,
        message: dict[str, Any] | bytes,
        *,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> "SseReply | Accepted | Answered":
        payload = json.loads(message) if isinstance(message, bytes) else message
        if session_id:
            return await self._post_on(self._stream(session_id), payload, extra)
        # No session: a 2026-07-28 request, for an upstream that answered server/discover.
        if not await self.is_modern():
            return refused_discover(self._discover_refusal, payload.get("id"))
        for attempt in range(2):
            stream = await self._sessionless_stream()
            try:
                return await self._post_on(stream, payload, extra)
            except SessionExpired:
                if attempt:
                    raise UpstreamFailure(
                        jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                        f"upstream {self.slug} keeps dropping its event stream",
                    ) from None
        raise AssertionError("unreachable")

    async def _post_on(
        self, stream: SseStream, payload: dict[str, Any], extra: dict[str, str] | None
    ) -> "SseReply | Accepted":
        if "method" in payload and "id" in payload:
            return await stream.request(payload, extra)
        if payload.get("method") == "notifications/cancelled":
            params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
            upstream_id = stream.by_original.get(params.get("requestId"))
            if upstream_id is None:
                # Not in flight any more (the gateway cancels what it abandons itself).
                return Accepted()
            payload = {**payload, "params": {**params, "requestId": upstream_id}}
        await stream.post(payload, extra)
        return Accepted()

    async def send(
        self,
        method: str,
        *,
        body: bytes | None = None,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
        accept: str = "",
    ) -> "ListenerReply | Accepted":
        if method == "DELETE":
            stream = self.streams.pop(session_id or "", None)
            if stream is not None:
                await stream.close()
            return Accepted(status=200)
        if method == "GET":
            try:
                stream = self._stream(session_id)
            except SessionExpired:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_UNAVAILABLE,
                    f"upstream {self.slug}: the session's event stream is gone; "
                    "the next request opens a fresh one",
                ) from None
            return ListenerReply(stream.listeners)
        raise UpstreamFailure(
            jsonrpc.UPSTREAM_PROTOCOL_ERROR, f"{method} is not used with an HTTP+SSE upstream"
        )

    async def shared_session(self, *, renew: LegacySession | None = None) -> LegacySession:
        """The session used for stateless agents, opened once per process."""
        async with self._shared_lock:
            shared = self._shared
            # Listed, and not ending (a stream closing after a 404 is still listed until its
            # reader has stopped).
            stream = self.streams.get(shared.session_id) if shared is not None else None
            alive = stream is not None and stream.alive
            if shared is None or not alive or shared is renew:
                if shared is not None:
                    await self.end_session(shared)
                self._shared = await self.initialize(protocol.gateway_initialize_params())
                self.streams[self._shared.session_id].shared = True
            assert self._shared is not None
            return self._shared

    async def end_session(self, session: LegacySession) -> None:
        await self.send("DELETE", session_id=session.session_id)

    async def _end(self, stream: SseStream) -> None:
        self.streams.pop(stream.key, None)
        await stream.close()

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        streams = list(self.streams.values())
        self.streams.clear()
        await asyncio.gather(*(s.close() for s in streams), return_exceptions=True)
        await self.client.aclose()
