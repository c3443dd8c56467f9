"""Clients for upstream MCP servers over Streamable HTTP.

One `Upstream` per connection and process holds a pooled HTTP client, so HTTP connections
are reused across calls: the gateway's own (`gateway.http1`) for `http://` upstreams
reached directly, aiohttp for `https://` upstreams and those behind a proxy. Legacy-era
upstream sessions are created once per downstream session (or once per connection for
stateless downstream clients) and reused for every call in them.
"""

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import aiohttp
import yarl
from aiohttp.helpers import get_env_proxy_for_url
from django.conf import settings

from . import http1, jsonrpc, protocol, sse
from .jsonrpc import Message
from .replies import DetectsEra

log = logging.getLogger(__name__)

USER_AGENT = "mcp-gateway/0.1"


class UpstreamFailure(Exception):
    """The upstream could not be reached or did not answer as an MCP server should."""

    def __init__(self, code: int, message: str, outcome: str = "upstream_error") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.outcome = outcome

    def to_error(self, id: jsonrpc.JsonId) -> dict[str, Any]:
        return jsonrpc.error(id, self.code, self.message)


class SessionExpired(Exception):
    """The upstream no longer knows the session (HTTP 404): it must be re-initialized."""


@dataclass(slots=True)
class Reply:
    """An upstream HTTP answer whose body has not been read yet."""

    response: aiohttp.ClientResponse | http1.Response
    name: str
    size: int = 0
    on_close: Callable[[], None] | None = None

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Any:
        return self.response.headers

    @property
    def is_sse(self) -> bool:
        return self.response.headers.get("content-type", "").startswith("text/event-stream")

    @property
    def session_id(self) -> str | None:
        return self.response.headers.get("mcp-session-id")

    async def read_body(self) -> bytes:
        return await self._read()

    async def read_message(self) -> Message | None:
        """The single JSON-RPC message of a JSON reply (None for an empty 202)."""
        body = await self._read()
        self.size = len(body)
        if not body.strip():
            return None
        try:
            return jsonrpc.validate(json.loads(body))
        except (ValueError, jsonrpc.InvalidMessage):
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                f"upstream {self.name} answered HTTP {self.status} with a body that is not "
                "a JSON-RPC message",
            ) from None

    async def events(
        self, idle_timeout: float | None = None
    ) -> AsyncIterator[tuple[sse.Event, Message | None]]:
        """Each SSE event with its JSON-RPC message (None for events without one).

        An answer's stream must produce a complete line at least every `idle_timeout`
        seconds (bytes trickling in without one do not count)."""
        try:
            async for event in sse.parse_events(self.response.content.iter_any(), idle_timeout):
                message = None
                if event.data:
                    try:
                        message = jsonrpc.validate(json.loads(event.data))
                    except (ValueError, jsonrpc.InvalidMessage):
                        log.warning("upstream %s sent an invalid SSE message; dropped", self.name)
                yield event, message
        except (TimeoutError, sse.StreamStalled):
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_TIMEOUT,
                f"upstream {self.name} stopped answering for "
                f"{settings.GATEWAY['UPSTREAM_TIMEOUT']:g} s",
                outcome="timeout",
            ) from None
        except _CLIENT_ERRORS as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.name} broke off its stream: {describe(exc)}",
            ) from None

    async def first_response(self) -> Message:
        """Read until the reply's JSON-RPC response (JSON or SSE), ignoring notifications;
        the reply is closed after it."""
        if not self.is_sse:
            message = await self.read_message()
            if message is None or not message.is_response:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_PROTOCOL_ERROR, f"upstream {self.name} sent no response"
                )
            return message
        try:
            async for _event, message in self.events():
                if message is not None and message.is_response:
                    return message
        finally:
            await self.aclose()
        raise UpstreamFailure(
            jsonrpc.UPSTREAM_PROTOCOL_ERROR,
            f"upstream {self.name} closed its stream without a response",
        )

    async def _read(self) -> bytes:
        try:
            if self.response.content.is_eof():
                # The whole body came with the head (most JSON answers): nothing to wait for.
                return await self.response.read()
            # A whole JSON answer within the timeout: an upstream trickling bytes is cut off.
            return await asyncio.wait_for(
                self.response.read(), settings.GATEWAY["UPSTREAM_TIMEOUT"]
            )
        except TimeoutError:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_TIMEOUT,
                f"upstream {self.name} did not answer within "
                f"{settings.GATEWAY['UPSTREAM_TIMEOUT']:g} s",
                outcome="timeout",
            ) from None
        except _CLIENT_ERRORS as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE, f"upstream {self.name}: {describe(exc)}"
            ) from None
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Give the connection back (closed, if the body was not read to its end)."""
        self.response.release()
        on_close, self.on_close = self.on_close, None
        if on_close is not None:
            on_close()


@lru_cache(maxsize=1024)
def _plain(url: str) -> bool:
    """Whether `gateway.http1` serves the URL: http://, no proxy, no credentials in it
    (aiohttp turns those into Basic authentication)."""
    parsed = yarl.URL(url)
    return (
        parsed.scheme == "http"
        and bool(parsed.raw_host)
        and parsed.raw_user is None
        and _proxy(url)[0] is None
    )


# What either client raises when a request gets no (complete) answer.
_CLIENT_ERRORS = (aiohttp.ClientError, http1.HttpError)


@lru_cache(maxsize=1024)
def _proxy(url: str) -> tuple[yarl.URL | None, aiohttp.BasicAuth | None]:
    """The proxy that HTTP_PROXY, HTTPS_PROXY and NO_PROXY (upper or lower case) name for
    `url`, as for any HTTP client of the host, and its credentials. Looked up once per URL:
    the environment of the process does not change. (aiohttp's `trust_env` would look it
    up, and ~/.netrc, in a worker thread for every request.)"""
    try:
        return get_env_proxy_for_url(yarl.URL(url))
    except LookupError:
        return None, None


def describe(exc: BaseException) -> str:
    """The first line of an error, short enough for a message to an agent."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def _why_unreachable(exc: aiohttp.ClientError | http1.HttpError) -> str:
    """The client's own words; aiohttp's without the "ssl:default" it adds for plain HTTP,
    where they are about failing to connect or to resolve the host."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"the host name {exc.host} does not resolve"
    if type(exc) is aiohttp.ClientConnectorError:
        code = exc.os_error.errno
        reason = os.strerror(code).lower() if code else describe(exc.os_error)
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    return describe(exc)


@dataclass(slots=True)
class LegacySession:
    """A legacy-era session the gateway holds with the upstream."""

    session_id: str | None
    protocol_version: str
    initialize_result: dict[str, Any]


@dataclass
class Upstream(DetectsEra):
    """The gateway's client for one connection's upstream, shared by all calls in a process."""

    slug: str
    url: str
    headers: dict[str, str]
    # The session used on behalf of stateless (modern) agents when the upstream is legacy.
    _shared_session: LegacySession | None = field(default=None, init=False)
    _shared_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    # The HTTP clients, made on first use on the event loop that uses them.
    _clients: dict[str, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession | http1.Pool]] = (
        field(default_factory=dict, init=False)
    )
    # Requests sent and not yet closed, to tell a full pool from a slow connect.
    _open: int = field(default=0, init=False)

    @property
    def name(self) -> str:
        return self.slug

    # -- raw HTTP ------------------------------------------------------------------

    def _client(self, kind: str) -> aiohttp.ClientSession | http1.Pool:
        loop = asyncio.get_running_loop()
        made = self._clients.get(kind)
        if made is not None and made[0] is loop and not made[1].closed:
            return made[1]
        gateway = settings.GATEWAY
        if _plain(self.url):
            # Calls share keep-alive connections, up to the limit; agents' GET streams
            # stay open for as long as the agent listens, one upstream connection each,
            # in a pool of their own, so that idle listeners never starve calls.
            calls = kind == "calls"
            pool = http1.Pool(
                self.url,
                limit=gateway["UPSTREAM_MAX_CONNECTIONS"] if calls else None,
                keep_alive=calls,
                wait_timeout=gateway["UPSTREAM_TIMEOUT"],
                connect_timeout=gateway["UPSTREAM_CONNECT_TIMEOUT"],
                read_timeout=gateway["UPSTREAM_TIMEOUT"],
            )
            self._clients[kind] = loop, pool
            return pool
        timeout = aiohttp.ClientTimeout(
            total=None,
            # Waiting for a free connection of the pool, and connecting.
            connect=gateway["UPSTREAM_TIMEOUT"],
            sock_connect=gateway["UPSTREAM_CONNECT_TIMEOUT"],
            # Waiting for the answer's head, and between reads of its body.
            sock_read=gateway["UPSTREAM_TIMEOUT"],
        )
        if kind == "calls":
            connector = aiohttp.TCPConnector(
                limit=gateway["UPSTREAM_MAX_CONNECTIONS"], limit_per_host=0
            )
        else:
            # Agents' GET streams stay open for as long as the agent listens, one upstream
            # connection each: they get a pool of their own, so that any number of idle
            # listeners can never starve calls of connections.
            connector = aiohttp.TCPConnector(limit=0, force_close=True)
        # Certificates are checked against the system's store (or SSL_CERT_FILE); the
        # proxy from the environment is given per request (`_proxy`). One client serves
        # every agent of the connection: a cookie an upstream sets in an answer to one agent
        # is never sent back with another's requests (no cookie jar).
        client = aiohttp.ClientSession(
            connector=connector, timeout=timeout, cookie_jar=aiohttp.DummyCookieJar()
        )
        self._clients[kind] = loop, client
        return client

    def _headers(
        self,
        *,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
        accept: str = "application/json, text/event-stream",
    ) -> dict[str, str]:
        headers = {"accept": accept, "user-agent": USER_AGENT}
        if extra:
            headers.update(extra)
        if session_id:
            headers["mcp-session-id"] = session_id
        if protocol_version:
            headers["mcp-protocol-version"] = protocol_version
        # The connection's own headers go last: they carry the upstream credentials, and
        # nothing from the agent may override them.
        headers.update(self.headers)
        return headers

    async def send(
        self,
        method: str,
        *,
        body: bytes | None = None,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
        accept: str = "application/json, text/event-stream",
    ) -> Reply:
        headers = self._headers(
            session_id=session_id, protocol_version=protocol_version, extra=extra, accept=accept
        )
        if body is not None:
            headers["content-type"] = "application/json"
        client = self._client("streams" if method == "GET" else "calls")
        counted = method != "GET"
        if counted:
            self._open += 1
        try:
            if type(client) is http1.Pool:
                response: aiohttp.ClientResponse | http1.Response = await client.request(
                    method, headers, body
                )
            else:
                proxy, proxy_auth = _proxy(self.url)
                response = await client.request(
                    method,
                    self.url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                )
        except BaseException as exc:
            if counted:
                self._open -= 1
            failure = self._failure(exc, pool_wait=counted) if isinstance(exc, Exception) else None
            if failure is None:
                raise
            raise failure from None
        reply = Reply(response, self.name, on_close=self._closed if counted else None)
        if response.status in (401, 403):
            await reply.aclose()
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.name} refused the gateway's credentials "
                f"(HTTP {response.status}); an admin must update the connection",
            )
        if response.status >= 500:
            await reply.aclose()
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.name} failed with HTTP {response.status}",
            )
        return reply

    def _closed(self) -> None:
        self._open -= 1

    def _failure(self, exc: Exception, *, pool_wait: bool) -> UpstreamFailure | None:
        """Why a request got no answer, as the agent is told it (None: not the upstream's
        doing, the exception goes on as it is)."""
        gateway = settings.GATEWAY
        if isinstance(exc, http1.BadRequest):
            return UpstreamFailure(jsonrpc.INVALID_REQUEST, f"cannot forward the request: {exc}")
        if isinstance(
            exc, (aiohttp.ConnectionTimeoutError, http1.ConnectTimeout, http1.PoolTimeout)
        ):
            # The other requests still open fill the pool: this one waited for a connection.
            if isinstance(exc, http1.PoolTimeout) or (
                isinstance(exc, aiohttp.ConnectionTimeoutError)
                and pool_wait
                and self._open >= gateway["UPSTREAM_MAX_CONNECTIONS"]
            ):
                return UpstreamFailure(
                    jsonrpc.UPSTREAM_UNAVAILABLE,
                    f"the gateway has {gateway['UPSTREAM_MAX_CONNECTIONS']} requests open to "
                    f"upstream {self.name} and no connection came free within "
                    f"{gateway['UPSTREAM_TIMEOUT']:g} s; try again later",
                )
            self.forget_era()
            return UpstreamFailure(
                jsonrpc.UPSTREAM_TIMEOUT,
                f"upstream {self.name} did not answer within "
                f"{gateway['UPSTREAM_CONNECT_TIMEOUT']:g} s (no connection)",
                outcome="upstream_error",
            )
        if isinstance(exc, TimeoutError):
            self.forget_era()
            return UpstreamFailure(
                jsonrpc.UPSTREAM_TIMEOUT,
                f"upstream {self.name} did not answer within {gateway['UPSTREAM_TIMEOUT']:g} s",
                outcome="timeout",
            )
        if isinstance(exc, _CLIENT_ERRORS):
            self.forget_era()
            return UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.name} is unreachable: {_why_unreachable(exc)}",
            )
        return None

    async def post(
        self,
        message: dict[str, Any] | bytes,
        *,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> Reply:
        body = message if isinstance(message, bytes) else jsonrpc.dumps(message)
        reply = await self.send(
            "POST",
            body=body,
            session_id=session_id,
            protocol_version=protocol_version,
            extra=extra,
        )
        if reply.status == 404 and session_id:
            await reply.aclose()
            raise SessionExpired
        return reply

    # -- era detection -------------------------------------------------------------

    async def _probe_discover(self) -> dict[str, Any] | None:
        request = protocol.discover_request("gateway-probe")
        reply = await self.post(
            request,
            protocol_version=protocol.MODERN_VERSION,
            extra=protocol.modern_headers("server/discover", None),
        )
        if reply.status >= 400 and not reply.headers.get("content-type", "").startswith(
            ("application/json", "text/event-stream")
        ):
            await reply.aclose()
            return None
        try:
            message = await reply.first_response()
        except UpstreamFailure:
            return None
        result = message.payload.get("result")
        if not isinstance(result, dict):
            return None
        versions = result.get("supportedVersions")
        if not isinstance(versions, list) or protocol.MODERN_VERSION not in versions:
            return None
        return result

    # -- legacy sessions -----------------------------------------------------------

    async def initialize(self, params: dict[str, Any]) -> LegacySession:
        """Open a legacy session upstream: initialize, then notifications/initialized."""
        request = {"jsonrpc": "2.0", "id": "gateway-init", "method": "initialize", "params": params}
        reply = await self.post(request)
        session_id = reply.session_id
        message = await reply.first_response()
        if reply.status >= 400 or "error" in message.payload:
            error = message.payload.get("error") or {}
            raise InitializeRefused(error if isinstance(error, dict) else {}, reply.status)
        result = message.payload["result"]
        if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                f"upstream {self.name} answered initialize without a protocol version",
            )
        session = LegacySession(session_id, result["protocolVersion"], result)
        ack = await self.post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"},
            session_id=session.session_id,
            protocol_version=session.protocol_version,
        )
        await ack.aclose()
        return session

    async def shared_session(self, *, renew: LegacySession | None = None) -> LegacySession:
        """The legacy session used for stateless agents, opened once per process."""
        async with self._shared_lock:
            if self._shared_session is None or self._shared_session is renew:
                self._shared_session = await self.initialize(protocol.gateway_initialize_params())
            return self._shared_session

    async def end_session(self, session: LegacySession) -> None:
        if not session.session_id:
            return
        with contextlib.suppress(UpstreamFailure):
            reply = await self.send(
                "DELETE", session_id=session.session_id, protocol_version=session.protocol_version
            )
            await reply.aclose()

    async def aclose(self) -> None:
        if self._shared_session is not None:
            await self.end_session(self._shared_session)
        clients, self._clients = self._clients, {}
        loop = asyncio.get_running_loop()
        for made_on, client in clients.values():
            if type(client) is http1.Pool:
                client.close()
            elif made_on is loop:
                await client.close()


class InitializeRefused(Exception):
    """The upstream refused initialize; it may be a 2026-07-28-only server."""

    def __init__(self, error: dict[str, Any], status: int) -> None:
        super().__init__(error.get("message", f"HTTP {status}"))
        self.error = error
        self.status = status


@dataclass(slots=True)
class _Entry:
    stamp: str
    upstream: Any


_registry: dict[int, _Entry] = {}


def upstream_for(connection: Any) -> Any:
    """The process's client for a connection (Streamable HTTP, HTTP+SSE or stdio), rebuilt
    when it was edited."""
    entry = _registry.get(connection.id)
    if entry is not None and entry.stamp == connection.stamp:
        return entry.upstream
    if entry is not None:
        asyncio.get_running_loop().create_task(entry.upstream.aclose())
    if connection.transport == "stdio":
        from .stdio import StdioUpstream

        upstream: Any = StdioUpstream(
            slug=connection.slug,
            command=connection.command,
            args=list(connection.args),
            cwd=connection.cwd,
            env=dict(connection.env),
            max_processes=connection.max_processes,
        )
    elif connection.transport == "sse":
        from .legacy_sse import LegacySseUpstream

        upstream = LegacySseUpstream(
            slug=connection.slug, url=connection.url, headers=connection.headers
        )
    else:
        upstream = Upstream(slug=connection.slug, url=connection.url, headers=connection.headers)
    _registry[connection.id] = _Entry(connection.stamp, upstream)
    return upstream


async def close_all() -> None:
    """End every upstream session and process (at shutdown)."""
    entries = list(_registry.values())
    _registry.clear()
    await asyncio.gather(*(e.upstream.aclose() for e in entries), return_exceptions=True)
