"""`/mcp/<slug>`: the Streamable HTTP endpoint agents talk to, as a plain ASGI app.

It answers both protocol eras. A legacy-era agent gets a gateway-minted session that is
mapped to a session with the upstream; a 2026-07-28 agent is stateless. Where the agent
and the upstream speak different eras the gateway translates (see README, "Protocol eras").
"""

import asyncio
import base64
import contextlib
import dataclasses
import functools
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http.request import split_domain_port, validate_host

from audit import recorder
from masking import service as masking
from masking.engine import Masker, Report

from . import jsonrpc, pipeline, protocol, sse, store
from .auth import Identity, authenticate
from .jsonrpc import InvalidMessage, Message
from .models import digest
from .pipeline import Call, ConnectionInfo, Decision, Outcome
from .upstream import (
    InitializeRefused,
    LegacySession,
    Reply,
    SessionExpired,
    Upstream,
    UpstreamFailure,
    upstream_for,
)

log = logging.getLogger(__name__)

SLUG_PATH = re.compile(r"^/mcp/(?P<slug>[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?)/?$")
SSE_HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]
# Ids of server-to-client requests are rewritten so that the agent's answer can be told
# apart from its own requests and mapped back to the upstream's id.
RELAYED_ID_PREFIX = "mgw-"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


_stream_masker = sync_to_async(
    lambda connection_id: masking.masker_for(connection_id, None, masking.AGENT),
    thread_sensitive=False,
)


KEEPALIVE_SECONDS = 10.0


def _refusal_text(approval_id: int, status: str) -> str:
    from approvals.models import Approval

    approval = Approval.objects.select_related("decided_by").filter(pk=approval_id).first()
    if status == "denied" and approval is not None:
        who = approval.decided_by.get_username() if approval.decided_by else "an approver"
        reason = f": {approval.reason}" if approval.reason else ""
        return f"Denied by {who}{reason}"
    if status == "expired":
        return f"The approval request #{approval_id} expired before anyone decided"
    return f"The approval #{approval_id} was already used by another call"


_refusal = sync_to_async(_refusal_text, thread_sensitive=False)


class BodyTooLarge(Exception):
    pass


class Exchange:
    """One HTTP request from an agent and the response the gateway sends back."""

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.method: str = scope["method"]
        self.headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            # Repeated headers are joined, as HTTP allows for list-valued fields.
            self.headers[name] = f"{self.headers[name]}, {value}" if name in self.headers else value
        client = scope.get("client")
        self.client_address = client[0] if client else ""
        self.started = False
        self.finished = False
        self.disconnected = asyncio.Event()

    # -- request -------------------------------------------------------------------

    async def read_body(self, limit: int) -> bytes:
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._receive()
            if event["type"] == "http.disconnect":
                self.disconnected.set()
                raise ConnectionAbortedError
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
            if not event.get("more_body", False):
                return b"".join(chunks)

    async def watch_disconnect(self) -> None:
        while True:
            event = await self._receive()
            if event["type"] == "http.disconnect":
                self.disconnected.set()
                return

    # -- response ------------------------------------------------------------------

    async def respond(
        self,
        status: int,
        body: bytes = b"",
        *,
        content_type: str | None = "application/json",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        all_headers = list(headers or [])
        if content_type and body:
            all_headers.append((b"content-type", content_type.encode()))
        if status not in (204, 304):
            # Sized, not chunked: HTTP/1.0 clients have no chunked encoding.
            all_headers.append((b"content-length", b"%d" % len(body)))
        await self._send({"type": "http.response.start", "status": status, "headers": all_headers})
        await self._send({"type": "http.response.body", "body": body})
        self.started = self.finished = True

    async def respond_json(
        self, status: int, payload: object, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        await self.respond(status, jsonrpc.dumps(payload), headers=headers)

    async def respond_error(
        self,
        status: int,
        code: int,
        message: str,
        id: jsonrpc.JsonId = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        await self.respond_json(status, jsonrpc.error(id, code, message), headers)

    async def start_stream(self, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.started:
            return
        await self._send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": SSE_HEADERS + list(headers or []),
            }
        )
        self.started = True

    async def send_event(self, event: sse.Event) -> None:
        await self._send(
            {"type": "http.response.body", "body": sse.encode(event), "more_body": True}
        )

    async def send_comment(self, text: str) -> None:
        line = f": {text}\n\n".encode()
        await self._send({"type": "http.response.body", "body": line, "more_body": True})

    async def send_json_event(self, payload: object) -> None:
        await self.send_event(sse.Event(data=jsonrpc.dumps(payload).decode()))

    async def end_stream(self) -> None:
        if not self.finished:
            self.finished = True
            await self._send({"type": "http.response.body", "body": b""})


# An agent sends the same Accept and Host on every request: what they allow is worked out
# once per distinct value. The caches hold what agents sent, so they keep 256 values at
# most, none longer than KEPT_VALUE_CHARS (a header may be up to the 64 KiB of a head).
KEPT_VALUE_CHARS = 256


def _kept_for_short_values[**P](function: Callable[P, bool]) -> Callable[P, bool]:
    """`function`, its answers kept for a first argument of at most KEPT_VALUE_CHARS
    (`.kept` is the cache)."""
    kept = functools.lru_cache(maxsize=256)(function)

    @functools.wraps(function)
    def judged(*args: P.args, **kwargs: P.kwargs) -> bool:
        short = len(args[0]) <= KEPT_VALUE_CHARS  # type: ignore[arg-type]
        return kept(*args, **kwargs) if short else function(*args, **kwargs)

    judged.kept = kept  # type: ignore[attr-defined]
    return judged


@_kept_for_short_values
def _accepts(accept: str, media_type: str) -> bool:
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return media_type in kinds or "*/*" in kinds or f"{media_type.split('/')[0]}/*" in kinds


def _host_allowed(exchange: Exchange) -> bool:
    """The Host must be one of ALLOWED_HOSTS (DNS rebinding protection, as for the console)."""
    return _valid_host(exchange.headers.get("host", ""), tuple(settings.ALLOWED_HOSTS))


@_kept_for_short_values
def _valid_host(host: str, allowed_hosts: tuple[str, ...]) -> bool:
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed_hosts)


def _origin_allowed(exchange: Exchange) -> bool:
    """Browsers send Origin; a page on another site must not drive an agent's session."""
    origin = exchange.headers.get("origin")
    if origin is None:
        return True
    if origin in settings.GATEWAY["ALLOWED_ORIGINS"]:
        return True
    host = exchange.headers.get("host", "")
    return urlsplit(origin).netloc == host and host != ""


def _base_url(exchange: Exchange) -> str:
    if settings.PUBLIC_URL:
        return settings.PUBLIC_URL
    scheme = exchange.scope.get("scheme", "http")
    return f"{scheme}://{exchange.headers.get('host', '127.0.0.1')}"


def resource_metadata_url(exchange: Exchange, slug: str) -> str:
    return f"{_base_url(exchange)}/.well-known/oauth-protected-resource/mcp/{slug}"


def _relayed_id(upstream_id: jsonrpc.JsonId) -> str:
    return RELAYED_ID_PREFIX + base64.urlsafe_b64encode(json.dumps(upstream_id).encode()).decode()


def _upstream_id(relayed: object) -> jsonrpc.JsonId | None:
    if not isinstance(relayed, str) or not relayed.startswith(RELAYED_ID_PREFIX):
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(relayed[len(RELAYED_ID_PREFIX) :]))
    except ValueError:
        return None
    return value if isinstance(value, str | int) else None


async def mcp_app(scope: Scope, receive: Receive, send: Send) -> None:
    exchange = Exchange(scope, receive, send)
    try:
        await _handle(exchange)
    except ConnectionAbortedError:
        pass
    except Exception:
        log.exception("unexpected error on %s %s", scope.get("method"), scope.get("path"))
        if not exchange.started:
            await exchange.respond_error(
                500, jsonrpc.INTERNAL_ERROR, "Internal error in the gateway; see its log"
            )
        else:
            with contextlib.suppress(Exception):
                await exchange.end_stream()


async def _handle(exchange: Exchange) -> None:
    match = SLUG_PATH.match(exchange.scope["path"])
    if match is None:
        await exchange.respond_error(
            404, jsonrpc.INVALID_REQUEST, "Not found: no such MCP endpoint"
        )
        return
    slug = match["slug"]
    if exchange.method not in ("GET", "POST", "DELETE"):
        await exchange.respond_error(
            405,
            jsonrpc.INVALID_REQUEST,
            f"Method {exchange.method} is not allowed here",
            headers=[(b"allow", b"GET, POST, DELETE")],
        )
        return
    if not _host_allowed(exchange):
        await exchange.respond_error(400, jsonrpc.INVALID_REQUEST, "Bad Request: Host not allowed")
        return
    if not _origin_allowed(exchange):
        await exchange.respond_error(403, jsonrpc.INVALID_REQUEST, "Forbidden: origin not allowed")
        return
    connection = await store.load_connection(slug)
    identity = await authenticate(
        exchange.headers.get("authorization", ""),
        f"{_base_url(exchange)}/mcp/{slug}",
        connection.id if connection is not None else None,
    )
    if identity is None:
        challenge = (
            f'Bearer resource_metadata="{resource_metadata_url(exchange, slug)}"'
            if "authorization" not in exchange.headers
            else f'Bearer error="invalid_token", '
            f'resource_metadata="{resource_metadata_url(exchange, slug)}"'
        )
        await exchange.respond_error(
            401,
            jsonrpc.INVALID_REQUEST,
            "Unauthorized: a valid gateway token is required (Authorization: Bearer ...)",
            headers=[(b"www-authenticate", challenge.encode())],
        )
        return
    if connection is None:
        await exchange.respond_error(404, jsonrpc.INVALID_REQUEST, f"No MCP connection {slug!r}")
        return
    if not identity.may_use(connection.id):
        await exchange.respond_error(
            403, jsonrpc.INVALID_REQUEST, f"Forbidden: this token is not valid for {slug!r}"
        )
        return
    if not connection.enabled:
        await exchange.respond_error(
            503, jsonrpc.CONNECTION_DISABLED, f"The connection {slug!r} is disabled by an admin"
        )
        return
    if not await pipeline.may_use(identity, connection):
        await exchange.respond_error(
            403, jsonrpc.INVALID_REQUEST, f"Forbidden: you have no grant for {slug!r}"
        )
        return
    upstream = upstream_for(connection)
    handler = Handler(exchange, identity, connection, upstream)
    if exchange.method == "POST":
        await handler.post()
    elif exchange.method == "GET":
        await handler.get()
    else:
        await handler.delete()


class Handler:
    """Handles one authenticated request to one connection."""

    def __init__(
        self,
        exchange: Exchange,
        identity: Identity,
        connection: ConnectionInfo,
        upstream: Upstream,
    ) -> None:
        self.exchange = exchange
        self.identity = identity
        self.connection = connection
        self.upstream = upstream

    # -- entry points --------------------------------------------------------------

    async def post(self) -> None:
        exchange = self.exchange
        accept = exchange.headers.get("accept", "")
        if not (_accepts(accept, "application/json") and _accepts(accept, "text/event-stream")):
            await exchange.respond_error(
                406,
                jsonrpc.INVALID_REQUEST,
                "Not Acceptable: Accept must list application/json and text/event-stream",
            )
            return
        content_type = exchange.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            await exchange.respond_error(
                415, jsonrpc.INVALID_REQUEST, "Unsupported Media Type: send application/json"
            )
            return
        limit = settings.GATEWAY["MAX_BODY_BYTES"]
        try:
            body = await exchange.read_body(limit)
        except BodyTooLarge:
            await exchange.respond_error(
                413, jsonrpc.INVALID_REQUEST, f"Request body larger than {limit} bytes"
            )
            return
        try:
            message = jsonrpc.parse(body)
        except InvalidMessage as exc:
            await exchange.respond_error(400, exc.code, exc.message, exc.id)
            return

        version = protocol.request_version(exchange.headers, message.params)
        session_key = exchange.headers.get("mcp-session-id")
        if protocol.is_modern_version(version) or (
            message.method == "server/discover" and not session_key
        ):
            await self.modern(message)
            return
        if message.method == "initialize":
            await self.legacy_initialize(message)
            return
        if not session_key:
            await exchange.respond_error(
                400,
                jsonrpc.INVALID_REQUEST,
                "Bad Request: Mcp-Session-Id header is required (initialize first)",
                message.id,
            )
            return
        session = await self.session(session_key)
        if session is None:
            await exchange.respond_error(
                404, jsonrpc.INVALID_REQUEST, "Session not found: initialize again", message.id
            )
            return
        await self.legacy(session_key, session, message)

    async def get(self) -> None:
        exchange = self.exchange
        if not _accepts(exchange.headers.get("accept", ""), "text/event-stream"):
            await exchange.respond_error(
                406, jsonrpc.INVALID_REQUEST, "Not Acceptable: Accept must list text/event-stream"
            )
            return
        session_key = exchange.headers.get("mcp-session-id")
        if not session_key:
            # 2026-07-28 has no GET stream; legacy agents need a session for one.
            await exchange.respond_error(
                405,
                jsonrpc.INVALID_REQUEST,
                "Method Not Allowed: no standalone stream without a session",
                headers=[(b"allow", b"POST, DELETE")],
            )
            return
        session = await self.session(session_key)
        if session is None:
            await exchange.respond_error(404, jsonrpc.INVALID_REQUEST, "Session not found")
            return
        if not session.upstream_session_id and protocol.is_modern_version(
            session.upstream_protocol_version
        ):
            await exchange.respond_error(
                405,
                jsonrpc.INVALID_REQUEST,
                "Method Not Allowed: the upstream has no standalone stream",
                headers=[(b"allow", b"POST, DELETE")],
            )
            return
        extra = {}
        if "last-event-id" in exchange.headers:
            extra["last-event-id"] = exchange.headers["last-event-id"]
        try:
            reply = await self.upstream.send(
                "GET",
                session_id=session.upstream_session_id,
                protocol_version=session.upstream_protocol_version,
                extra=extra,
                accept="text/event-stream",
            )
        except UpstreamFailure as failure:
            await exchange.respond_json(502, failure.to_error(None))
            return
        if reply.status != 200 or not reply.is_sse:
            await reply.aclose()
            status = reply.status if reply.status in (404, 405) else 502
            await exchange.respond_error(
                status,
                jsonrpc.INVALID_REQUEST,
                f"The upstream refused the standalone stream (HTTP {reply.status})",
                headers=[(b"allow", b"POST, DELETE")] if status == 405 else None,
            )
            return

        stream_masker = await _stream_masker(self.connection.id)

        async def relay() -> None:
            await exchange.start_stream()
            async for event, message in reply.events():
                if message is None:
                    if event.id is not None or event.retry is not None:
                        await exchange.send_event(event)
                    continue
                if message.is_response:
                    await recorder.record_resumed_outcome(
                        session.key_digest, message.id, message.payload
                    )
                payload = await self._to_agent(message, masker=stream_masker)
                await exchange.send_event(
                    sse.Event(data=jsonrpc.dumps(payload).decode(), id=event.id)
                )

        try:
            await self._until_disconnect(relay())
        except UpstreamFailure:
            pass
        finally:
            await reply.aclose()
            await exchange.end_stream()

    async def delete(self) -> None:
        exchange = self.exchange
        session_key = exchange.headers.get("mcp-session-id")
        if not session_key:
            await exchange.respond_error(
                400, jsonrpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required"
            )
            return
        session = await self.session(session_key)
        if session is None:
            await exchange.respond_error(404, jsonrpc.INVALID_REQUEST, "Session not found")
            return
        await store.end_session(session.key_digest)
        if session.upstream_session_id:
            await self.upstream.end_session(
                LegacySession(session.upstream_session_id, session.upstream_protocol_version, {})
            )
        await exchange.respond(200)

    # -- legacy era ----------------------------------------------------------------

    async def session(self, key: str) -> store.SessionInfo | None:
        if len(key) > 200:
            return None
        session = await store.get_session(key)
        # A session id is only valid with the token that created it, on its connection.
        if (
            session is None
            or session.token_id != self.identity.token_id
            or session.subject != self.identity.subject
            or session.connection_id != self.connection.id
        ):
            return None
        return session

    async def legacy_initialize(self, message: Message) -> None:
        call = self._call(message, "legacy")
        params = message.params
        requested = params.get("protocolVersion")
        if not isinstance(requested, str) or not message.is_request:
            await self.exchange.respond_error(
                400, jsonrpc.INVALID_PARAMS, "initialize needs params.protocolVersion", message.id
            )
            return
        if not await self._admit(call):
            return
        try:
            try:
                upstream_session = await self.upstream.initialize(params)
                result = upstream_session.initialize_result
                upstream_id = upstream_session.session_id or ""
                upstream_version = upstream_session.protocol_version
            except InitializeRefused as refused:
                # A 2026-07-28-only upstream: the gateway holds the legacy session itself.
                discover = await self.upstream.discover_result()
                if discover is None:
                    await self._finish_with_error(
                        call,
                        Outcome.ERROR,
                        jsonrpc.error(
                            message.id,
                            int(refused.error.get("code", jsonrpc.UPSTREAM_PROTOCOL_ERROR)),
                            str(refused.error.get("message", "initialize refused upstream")),
                        ),
                    )
                    return
                result = protocol.initialize_from_discover(discover, requested)
                upstream_id, upstream_version = "", protocol.MODERN_VERSION
        except UpstreamFailure as failure:
            await self._finish_with_error(
                call, Outcome(failure.outcome), failure.to_error(message.id)
            )
            return
        key = secrets.token_urlsafe(32)
        await store.create_session(
            key,
            connection_id=self.connection.id,
            token_id=self.identity.token_id,
            subject=self.identity.subject,
            protocol_version=str(result.get("protocolVersion", requested)),
            initialize_params=params,
            upstream_session_id=upstream_id,
            upstream_protocol_version=upstream_version,
        )
        call.session_digest = digest(key)
        response = {"jsonrpc": "2.0", "id": message.id, "result": result}
        response = await pipeline.mask(call, response)
        await self.exchange.respond_json(200, response, [(b"mcp-session-id", key.encode())])
        await pipeline.record_outcome(call, Outcome.OK, response)

    async def legacy(self, key: str, session: store.SessionInfo, message: Message) -> None:
        translated = not session.upstream_session_id and protocol.is_modern_version(
            session.upstream_protocol_version
        )
        if message.is_response or message.is_notification:
            note = self._call(message, "legacy")
            note.session_digest = session.key_digest
            if not await self._record_message(note):
                return
        if message.is_response:
            await self._legacy_answer(session, message, translated)
            return
        if message.is_notification:
            if translated:
                # 2026-07-28 has no client-to-server notifications; cancelling is closing.
                await self.exchange.respond(202)
                return
            await self._forward_one_way(session, message.payload)
            return

        call = self._call(message, "legacy")
        call.session_digest = session.key_digest
        if not await self._admit(call):
            return
        payload = message.payload
        extra: dict[str, str] | None = None
        if translated:
            params = protocol.modern_params(message.params, session.initialize_params)
            payload = {**payload, "params": params}
            extra = protocol.modern_headers(message.method or "", params)

        async def post() -> Reply:
            return await self._post_in_session(session, payload, extra)

        async def cancel() -> None:
            if not translated:
                note = {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": message.id, "reason": "client disconnected"},
                }
                with contextlib.suppress(UpstreamFailure, SessionExpired):
                    reply = await self._post_in_session(session, note, None)
                    await reply.aclose()

        await self._forward(
            call,
            post,
            on_disconnect=cancel,
            legacy_agent=translated,
        )

    async def _legacy_answer(
        self, session: store.SessionInfo, message: Message, translated: bool
    ) -> None:
        """The agent answers a server-to-client request (elicitation, sampling, roots)."""
        upstream_id = _upstream_id(message.id)
        if translated or upstream_id is None:
            await self.exchange.respond_error(
                400,
                jsonrpc.INVALID_REQUEST,
                "No pending server request with this id",
                message.id,
            )
            return
        await self._forward_one_way(session, {**message.payload, "id": upstream_id})

    async def _forward_one_way(self, session: store.SessionInfo, payload: dict[str, Any]) -> None:
        try:
            reply = await self._post_in_session(session, payload, None)
        except UpstreamFailure as failure:
            await self.exchange.respond_json(502, failure.to_error(None))
            return
        except SessionExpired:
            await self.exchange.respond_error(
                404, jsonrpc.INVALID_REQUEST, "Session not found upstream: initialize again"
            )
            return
        status = reply.status
        body = await reply.read_body()
        await reply.aclose()
        if status < 300:
            await self.exchange.respond(202)
        else:
            await self.exchange.respond(status, body)

    async def _post_in_session(
        self, session: store.SessionInfo, payload: dict[str, Any], extra: dict[str, str] | None
    ) -> Reply:
        """POST in the upstream session, re-initializing it once if the upstream lost it."""
        for attempt in range(2):
            try:
                return await self.upstream.post(
                    payload,
                    session_id=session.upstream_session_id or None,
                    protocol_version=session.upstream_protocol_version,
                    extra=extra,
                )
            except SessionExpired:
                if attempt:
                    raise
                log.info("upstream %s lost a session; re-initializing", self.connection.slug)
                try:
                    renewed = await self.upstream.initialize(session.initialize_params)
                except InitializeRefused as refused:
                    raise UpstreamFailure(
                        jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                        f"upstream {self.connection.slug} refused to re-initialize: {refused}",
                    ) from None
                session = dataclasses.replace(
                    session,
                    upstream_session_id=renewed.session_id or "",
                    upstream_protocol_version=renewed.protocol_version,
                )
                await store.set_upstream_session(
                    session.key_digest, session.upstream_session_id, renewed.protocol_version
                )
        raise AssertionError("unreachable")

    # -- 2026-07-28 era ------------------------------------------------------------

    async def modern(self, message: Message) -> None:
        exchange = self.exchange
        if not message.is_request:
            # The core protocol defines no client-to-server notifications on this wire.
            await exchange.respond(202)
            return
        call = self._call(message, "modern")
        try:
            upstream_is_modern = await self.upstream.is_modern()
        except UpstreamFailure as failure:
            if await self._admit(call):
                await self._finish_with_error(
                    call, Outcome(failure.outcome), failure.to_error(message.id)
                )
            return
        # server/discover goes to a legacy upstream too, so that an agent that probes
        # for the era (like the SDK's auto mode) learns what the upstream really speaks.
        if upstream_is_modern or message.method == "server/discover":
            await self._modern_passthrough(call)
        else:
            await self._modern_to_legacy(call)

    async def _modern_passthrough(self, call: Call) -> None:
        headers = self.exchange.headers
        extra = {
            name: headers[name] for name in protocol.MODERN_FORWARDED_HEADERS if name in headers
        }
        extra.update(
            {
                name: value
                for name, value in headers.items()
                if name.startswith(protocol.MCP_PARAM_PREFIX)
            }
        )
        version = headers.get("mcp-protocol-version") or protocol.MODERN_VERSION
        if not await self._admit(call):
            return

        async def post() -> Reply:
            try:
                return await self.upstream.post(
                    call.message.payload, protocol_version=version, extra=extra
                )
            except SessionExpired:  # pragma: no cover - no session is sent
                raise UpstreamFailure(jsonrpc.UPSTREAM_PROTOCOL_ERROR, "unexpected 404") from None

        await self._forward(call, post)

    async def _modern_to_legacy(self, call: Call) -> None:
        """A 2026-07-28 agent, a legacy upstream: the gateway's own session carries the call."""
        message = call.message
        if not await self._admit(call):
            return
        try:
            shared = await self.upstream.shared_session()
        except (UpstreamFailure, InitializeRefused, SessionExpired) as exc:
            failure = (
                exc
                if isinstance(exc, UpstreamFailure)
                else UpstreamFailure(
                    jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                    f"upstream {self.connection.slug} refused initialize: {exc}",
                )
            )
            await self._finish_with_error(
                call, Outcome(failure.outcome), failure.to_error(message.id)
            )
            return
        # Agents' ids may collide in the shared session: give the upstream one of ours.
        gateway_id = f"gw-{secrets.token_hex(8)}"
        payload = {
            **message.payload,
            "id": gateway_id,
            "params": protocol.legacy_params(message.params),
        }
        session_box = [shared]

        async def post() -> Reply:
            for attempt in range(2):
                try:
                    return await self.upstream.post(
                        payload,
                        session_id=session_box[0].session_id,
                        protocol_version=session_box[0].protocol_version,
                    )
                except SessionExpired:
                    if attempt:
                        raise UpstreamFailure(
                            jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                            f"upstream {self.connection.slug} keeps losing its session",
                        ) from None
                    try:
                        session_box[0] = await self.upstream.shared_session(renew=session_box[0])
                    except InitializeRefused as refused:
                        raise UpstreamFailure(
                            jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                            f"upstream {self.connection.slug} refused initialize: {refused}",
                        ) from None
            raise AssertionError("unreachable")

        async def cancel() -> None:
            note = {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": gateway_id, "reason": "client disconnected"},
            }
            with contextlib.suppress(UpstreamFailure, SessionExpired):
                reply = await self.upstream.post(
                    note,
                    session_id=session_box[0].session_id,
                    protocol_version=session_box[0].protocol_version,
                )
                await reply.aclose()

        await self._forward(
            call, post, on_disconnect=cancel, upstream_request_id=gateway_id, modern_agent=True
        )

    # -- the shared path of a request ----------------------------------------------

    def _call(self, message: Message, era: str) -> Call:
        return Call(
            identity=self.identity,
            connection=self.connection,
            message=message,
            era=era,
            client_address=self.exchange.client_address,
            user_agent=self.exchange.headers.get("user-agent", "")[:500],
        )

    async def _admit(self, call: Call) -> bool:
        """Policy, then the write-ahead audit record. False when the call must not go on."""
        await pipeline.prepare(call)
        decision, reason = await pipeline.decide(call)
        if decision is Decision.DENY:
            response = jsonrpc.error(
                call.message.id,
                jsonrpc.DENIED_BY_POLICY,
                f"Denied by gateway policy: {reason}" if reason else "Denied by gateway policy",
            )
            await self.exchange.respond_json(200, response)
            await pipeline.record_outcome(call, Outcome.DENIED, response)
            return False
        try:
            await pipeline.record_request(call)
        except Exception:
            log.exception("audit write failed; refusing the call")
            await self.exchange.respond_error(
                503,
                jsonrpc.INTERNAL_ERROR,
                "The gateway cannot record this call right now, so it was not forwarded",
                call.message.id,
            )
            return False
        if decision is Decision.HOLD:
            return await self._hold(call)
        return True

    async def _hold(self, call: Call) -> bool:
        """A held call waits, its stream kept alive, until an approver decides or the hold
        time ends. True when it may go upstream."""
        if await pipeline.reuse_approval(call):
            return True
        exchange = self.exchange
        try:
            approval_id = await pipeline.hold(call)
        except Exception:
            log.exception("could not create an approval request")
            response = jsonrpc.error(
                call.message.id,
                jsonrpc.APPROVAL_UNAVAILABLE,
                "This call needs approval, but the request could not be created; try again",
            )
            await exchange.respond_json(503, response)
            await pipeline.record_outcome(call, Outcome.ERROR, response)
            return False
        await exchange.start_stream()
        meta = call.message.params.get("_meta")
        progress_token = meta.get("progressToken") if isinstance(meta, dict) else None
        statuses: list[str] = []

        async def wait() -> None:
            waiter = asyncio.ensure_future(
                pipeline.await_decision(call, approval_id, settings.APPROVALS["HOLD_SECONDS"])
            )
            waited = 0.0
            try:
                while True:
                    done, _ = await asyncio.wait({waiter}, timeout=KEEPALIVE_SECONDS)
                    if done:
                        statuses.append(waiter.result())
                        return
                    waited += KEEPALIVE_SECONDS
                    await exchange.send_comment(f"waiting for approval {approval_id}")
                    if progress_token is not None:
                        await exchange.send_json_event(
                            {
                                "jsonrpc": "2.0",
                                "method": "notifications/progress",
                                "params": {
                                    "progressToken": progress_token,
                                    "progress": waited,
                                    "message": f"Waiting for approval (request #{approval_id})",
                                },
                            }
                        )
            finally:
                waiter.cancel()

        if await self._until_disconnect(wait()):
            await pipeline.record_outcome(call, Outcome.CLIENT_DISCONNECTED, None)
            return False
        status = statuses[0]
        if status == "approved":
            return True
        if status == "pending":
            response: dict[str, Any] = {
                "jsonrpc": "2.0",
                "id": call.message.id,
                "result": {
                    "content": [
                        {
                            "type": "text",
                            "text": (
                                f"This call needs a person's approval (request #{approval_id}, "
                                f"{_base_url(exchange)}/approvals/#approval-{approval_id}) "
                                "and none has decided yet. Retry the identical call later: "
                                "once approved, it goes through."
                            ),
                        }
                    ],
                    "isError": True,
                },
            }
            outcome = Outcome.TIMEOUT
        else:
            response = jsonrpc.error(
                call.message.id,
                jsonrpc.DENIED_BY_POLICY,
                await _refusal(approval_id, status),
            )
            outcome = Outcome.EXPIRED if status == "expired" else Outcome.DENIED
        await exchange.send_json_event(response)
        await exchange.end_stream()
        await pipeline.record_outcome(call, outcome, response)
        return False

    async def _record_message(self, call: Call) -> bool:
        try:
            await pipeline.prepare(call)
            await pipeline.record_message(call)
        except Exception:
            log.exception("audit write failed; refusing the message")
            await self.exchange.respond_error(
                503,
                jsonrpc.INTERNAL_ERROR,
                "The gateway cannot record this message right now, so it was not forwarded",
            )
            return False
        return True

    async def _finish_with_error(
        self, call: Call, outcome: Outcome, response: dict[str, Any]
    ) -> None:
        await self.exchange.respond_json(200, response)
        await pipeline.record_outcome(call, outcome, response)

    async def _to_agent(
        self,
        message: Message,
        call: Call | None = None,
        *,
        final: bool = False,
        legacy_agent: bool = False,
        modern_agent: bool = False,
        size_hint: int = 0,
        masker: Masker | None = None,
    ) -> dict[str, Any]:
        """An upstream message as the agent must see it, masked."""
        payload = message.payload
        if message.is_request:
            payload = {**payload, "id": _relayed_id(message.id)}
        elif final and call is not None:
            payload = {**payload, "id": call.message.id}
            if call.message.method == "tools/list" and "result" in payload:
                payload = await pipeline.filter_tool_list(call, payload)
            result = payload.get("result")
            if isinstance(result, dict):
                if legacy_agent:
                    payload["result"] = protocol.legacy_result(result)
                elif modern_agent:
                    payload["result"] = protocol.modern_result(call.message.method or "", result)
        if call is not None:
            untranslated = final and not (legacy_agent or modern_agent)
            reusable = untranslated and call.message.method == "tools/call"
            return await pipeline.mask(call, payload, size_hint, final=reusable)
        if masker is not None and not masker.empty:
            return masking.mask_payload(masker, payload, Report())
        return payload

    async def _until_disconnect(self, work: Awaitable[None]) -> bool:
        """Run work until it ends or the agent goes away; True if the agent went away.

        The work runs in this request's task; a watcher cancels it when the agent goes
        away. A cancellation that is not the watcher's (the request torn down) goes on."""
        task = asyncio.current_task()
        assert task is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            await self.exchange.watch_disconnect()
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await work
        except asyncio.CancelledError:
            if gone and task.uncancel() == 0:
                return True
            raise
        except Exception:
            if gone:  # the work failed as it was cancelled: the agent went away
                task.uncancel()
                return True
            raise
        finally:
            watcher.cancel()
        if gone:  # the work ended without noticing the cancellation
            task.uncancel()
            return True
        return False

    async def _forward(
        self,
        call: Call,
        post: Callable[[], Awaitable[Reply]],
        *,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
        upstream_request_id: jsonrpc.JsonId = None,
        legacy_agent: bool = False,
        modern_agent: bool = False,
    ) -> None:
        """Send the request upstream and relay what comes back, as it comes."""
        exchange = self.exchange
        expected_id = upstream_request_id if upstream_request_id is not None else call.message.id
        # The final response as the upstream sent it: the audit trail masks it itself,
        # with every rule in scope.
        final: list[dict[str, Any]] = []
        translation = {"legacy_agent": legacy_agent, "modern_agent": modern_agent}
        resumable: list[str | None] = []

        async def work() -> None:
            reply = await post()
            try:
                if not reply.is_sse:
                    message = await reply.read_message()
                    if message is None:
                        raise UpstreamFailure(
                            jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                            f"upstream {self.connection.slug} answered HTTP {reply.status} "
                            "without a body",
                        )
                    # A JSON reply is the answer to this request, whatever its id says
                    # (an upstream's HTTP-level rejection carries id null).
                    payload = await self._to_agent(
                        message,
                        call,
                        final=message.is_response,
                        size_hint=reply.size,
                        **translation,
                    )
                    final.append(message.payload)
                    if exchange.started:  # a held call's stream is already open
                        await exchange.send_json_event(payload)
                        await exchange.end_stream()
                    else:
                        await exchange.respond_json(reply.status, payload)
                    return
                await exchange.start_stream()
                async for event, message in reply.events(settings.GATEWAY["UPSTREAM_TIMEOUT"]):
                    if message is None:
                        # Priming events (an id, empty data) and retry hints make the
                        # stream resumable; they pass through as they are.
                        if event.id is not None or event.retry is not None:
                            await exchange.send_event(event)
                            resumable.append(event.id)
                        continue
                    if event.id is not None:
                        resumable.append(event.id)
                    is_final = message.is_response and message.id == expected_id
                    payload = await self._to_agent(
                        message,
                        call,
                        final=is_final,
                        size_hint=len(event.data),
                        **translation,
                    )
                    await exchange.send_event(
                        sse.Event(data=jsonrpc.dumps(payload).decode(), id=event.id)
                    )
                    if is_final:
                        final.append(message.payload)
                        break
                if not final and resumable:
                    # The upstream closed the stream mid-call, as it may when it supports
                    # resumption: the agent resumes with GET and Last-Event-ID.
                    await exchange.end_stream()
                    return
                if not final:
                    raise UpstreamFailure(
                        jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                        f"upstream {self.connection.slug} closed its stream without a response",
                    )
                await exchange.end_stream()
            finally:
                await reply.aclose()

        try:
            disconnected = await self._until_disconnect(work())
        except UpstreamFailure as failure:
            error = failure.to_error(call.message.id)
            if not exchange.started:
                await exchange.respond_json(200, error)
            else:
                await exchange.send_event(sse.Event(data=jsonrpc.dumps(error).decode()))
                await exchange.end_stream()
            await pipeline.record_outcome(call, Outcome(failure.outcome), error)
            return
        except SessionExpired:
            error = jsonrpc.error(
                call.message.id, jsonrpc.UPSTREAM_PROTOCOL_ERROR, "Upstream session lost"
            )
            await exchange.respond_json(200, error)
            await pipeline.record_outcome(call, Outcome.UPSTREAM_ERROR, error)
            return
        if disconnected:
            if on_disconnect is not None:
                await on_disconnect()
            await pipeline.record_outcome(call, Outcome.CLIENT_DISCONNECTED, None)
            return
        if final:
            await pipeline.record_outcome(call, pipeline.outcome_of(final[0]), final[0])
        # Otherwise the answer arrives on the agent's resumed stream (see get()).
