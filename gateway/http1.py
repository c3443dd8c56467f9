"""The gateway's HTTP/1.1 client for upstreams over plain HTTP.

A pool of keep-alive connections per upstream and process, an asyncio protocol per
connection and httptools' compiled parser for the answers: one write per request, the
answer's body handed over as it arrives. It does what the upstream hop needs and nothing
else (no redirects, cookies, compression or retries); `gateway.upstream` uses it for
`http://` upstreams reached without a proxy, and aiohttp for the rest (TLS, proxies).

Timeouts: a free connection is waited for `wait_timeout`, a new one connected within
`connect_timeout`; the answer's head, and each part of its body, must come within
`read_timeout`.
"""

import asyncio
import collections
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import httptools
import yarl

# An answer's status line and headers: more than this and the upstream is cut off.
MAX_HEAD = 64 * 1024
# Bytes of a streamed body held for a reader that is slower than the upstream, before the
# connection stops reading (the upstream then waits on its own socket).
STREAM_BUFFER = 256 * 1024
# Idle keep-alive connections are closed after this many seconds (as aiohttp does).
KEEP_ALIVE = 15.0


class HttpError(Exception):
    """The request got no (complete) answer."""


class ConnectFailed(HttpError):
    """No connection could be made: the host does not resolve, or refuses or fails it."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.host = host
        self.port = port
        self.error = error
        if isinstance(error, socket.gaierror):
            reason = f"the host name {host} does not resolve"
        else:
            detail = os.strerror(error.errno) if error.errno else str(error)
            reason = f"cannot connect to {host}:{port} ({detail.lower()})"
        super().__init__(reason)


class ConnectTimeout(HttpError, TimeoutError):
    """The connection was not made within the connect timeout."""


class PoolTimeout(HttpError, TimeoutError):
    """Every connection of the pool stayed busy for the whole wait."""


class ReadTimeout(HttpError, TimeoutError):
    """The answer's head, or the next part of its body, did not come in time."""


class Disconnected(HttpError):
    """The upstream closed the connection before the answer's end."""


class BadAnswer(HttpError):
    """The upstream's bytes are not an HTTP/1.1 answer."""


class BadRequest(HttpError, ValueError):
    """The request cannot be written (a header with a line break or a NUL)."""


def _head(method: str, target: str, host: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}"]
    for name, value in headers.items():
        line = f"{name}: {value}"
        if "\r" in line or "\n" in line or "\0" in line:
            raise BadRequest(f"the header {name!r} holds a line break or a NUL")
        lines.append(line)
    if length or method == "POST":
        lines.append(f"content-length: {length}")
    lines.append("\r\n")
    # As aiohttp did: UTF-8 for what is not ASCII (a credential an admin typed, say).
    return "\r\n".join(lines).encode()


class Response:
    """An answer whose head has come; its body is read with `read` or `iter_any`.

    `content` is the response itself, so that code written for aiohttp's answers
    (`response.content.iter_any()`, `.is_eof()`) reads this one alike."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_connection",
        "_error",
        "_released",
        "_waiter",
        "_whole",
        "headers",
        "status",
    )

    def __init__(self, connection: "_Connection", status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        # A reader of the whole body: never stop reading for it.
        self._whole = False
        self._released = False

    @property
    def content(self) -> "Response":
        return self

    def is_eof(self) -> bool:
        """The whole body has arrived."""
        return self._complete

    async def read(self) -> bytes:
        self._whole = True
        self._connection.resume()
        while not self._complete:
            await self._wait()
        chunks, self._chunks = self._chunks, collections.deque()
        self._buffered = 0
        if len(chunks) == 1:
            return chunks[0]
        return b"".join(chunks)

    async def iter_any(self) -> AsyncIterator[bytes]:
        """Each part of the body as it arrives."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < STREAM_BUFFER // 4:
                    self._connection.resume()
                yield chunk
            elif self._complete:
                return
            else:
                await self._wait()

    def release(self) -> None:
        """Give the connection back: to the pool if the answer was read to its end and the
        upstream keeps the connection open, closed otherwise."""
        if not self._released:
            self._released = True
            self._connection.finished(self)

    # -- fed by the connection ---------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        self._waiter = loop.create_future()
        timer = loop.call_later(
            self._connection.pool.read_timeout, _time_out, self._waiter, "sent nothing for"
        )
        try:
            await self._waiter
        finally:
            timer.cancel()
            self._waiter = None
        if self._error is not None and not self._chunks and not self._complete:
            raise self._error

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        if self._buffered > STREAM_BUFFER and not self._whole:
            self._connection.pause()
        self._wake()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _time_out(waiter: asyncio.Future[Any], what: str) -> None:
    if not waiter.done():
        waiter.set_exception(ReadTimeout(f"the upstream {what} the read timeout"))


class _Connection(asyncio.Protocol):
    """One TCP connection to the upstream, one request at a time."""

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._parser: Any = None
        # A request is out and its answer not yet complete.
        self._active = False
        # Bytes received while the head was incomplete; the headers' own size.
        self._head_size = 0
        self._header_size = 0
        self._headers: dict[str, str] = {}
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._until_close = False
        self._keep_alive = False
        self._paused = False

    # -- the request ---------------------------------------------------------------

    async def request(self, data: bytes, body: bytes | None) -> Response:
        assert self.transport is not None
        self._active = True
        self._head_size = self._header_size = 0
        self._headers = {}
        self._response = None
        self._keep_alive = False
        loop = asyncio.get_running_loop()
        self._head = head = loop.create_future()
        # The transport keeps what the socket does not take at once (a body is at most
        # what an agent may send); the answer's timer runs from here, as for a stalled read.
        if body and len(body) > 65536:
            self.transport.writelines((data, body))
        else:
            self.transport.write(data + body if body else data)
        timer = loop.call_later(self.pool.read_timeout, _time_out, head, "did not answer within")
        try:
            return await head
        finally:
            timer.cancel()

    def finished(self, response: Response) -> None:
        reusable = response._complete and self._keep_alive and not self.closed and not self._paused
        self._response = None
        self.pool.release(self, reusable)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # One parser for the connection's answers, one after the other.
        self._parser = httptools.HttpResponseParser(self)

    def data_received(self, data: bytes) -> None:
        if not self._active:
            # Bytes with no request outstanding: the connection cannot be trusted.
            self.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._failed(BadAnswer("the upstream switched protocols (HTTP 101)"))
            return
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if not isinstance(cause, BadAnswer):
                cause = BadAnswer(f"the upstream's answer is not valid HTTP ({exc})")
            self._failed(cause)
            return
        if self._response is None:
            self._head_size += len(data)
            if self._head_size > MAX_HEAD:
                self._failed(BadAnswer(f"the upstream sent an HTTP head over {MAX_HEAD} bytes"))

    def connection_lost(self, exc: Exception | None) -> None:
        closed_here, self.closed = self.closed, True
        self._active = False
        self.pool.discard(self)
        response = self._response
        if response is not None and not response._complete:
            if closed_here:
                response._fail(Disconnected("the gateway closed the connection mid-answer"))
            elif self._until_close and exc is None:
                response._finish()  # the end of a body that lasts until the close
            else:
                response._fail(Disconnected("the upstream closed the connection mid-answer"))
        head = self._head
        if head is not None and not head.done():
            head.set_exception(Disconnected("the upstream closed the connection unanswered"))

    # -- httptools callbacks ------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._response is not None:
            return  # a chunked body's trailer: not part of the answer's headers
        self._header_size += len(name) + len(value)
        if self._header_size > MAX_HEAD:
            raise BadAnswer(f"the upstream sent an HTTP head over {MAX_HEAD} bytes")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

    def on_headers_complete(self) -> None:
        if not self._active:
            raise BadAnswer("the upstream sent a second answer")
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue): the real one follows.
            self._headers = {}
            self._head_size = self._header_size = 0
            return
        headers = self._headers
        self._until_close = (
            "content-length" not in headers
            and "chunked" not in headers.get("transfer-encoding", "").lower()
            and status not in (204, 304)
        )
        self._response = response = Response(self, status, headers)
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        if self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        response = self._response
        if response is None:
            return  # the end of an interim answer
        self._keep_alive = self._parser.should_keep_alive()
        self._active = False
        # The answer is whole: a read stopped for a slow reader goes on (the connection may
        # serve the next call).
        self.resume()
        response._finish()

    def _failed(self, error: HttpError) -> None:
        head = self._head
        if head is not None and not head.done():
            head.set_exception(error)
        if self._response is not None:
            self._response._fail(error)
        self.close()


class Pool:
    """Keep-alive connections to one upstream, at most `limit` in use at once (None: no
    limit); with `keep_alive` False, each connection serves one request."""

    def __init__(
        self,
        url: str,
        *,
        limit: int | None,
        keep_alive: bool,
        wait_timeout: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        parsed = yarl.URL(url)
        if parsed.scheme != "http" or not parsed.raw_host:
            raise ValueError(f"not a plain http URL: {url}")
        self.host = parsed.raw_host
        self.port = parsed.port or 80
        self.target = parsed.raw_path_qs or "/"
        self.authority = parsed.host_port_subcomponent or self.host
        self.limit = limit
        self.keep_alive = keep_alive
        self.wait_timeout = wait_timeout
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.closed = False
        # Every open connection; the idle ones, the most recently used last.
        self._open: set[_Connection] = set()
        self._idle: list[_Connection] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._busy = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def request(
        self, method: str, headers: dict[str, str], body: bytes | None = None
    ) -> Response:
        """Send a request; return when the answer's head has come. The caller must
        `release` the answer."""
        data = _head(method, self.target, self.authority, headers, len(body) if body else 0)
        connection = await self._acquire()
        try:
            return await connection.request(data, body)
        except BaseException:
            # No answer, or the caller went away mid-request: the connection is spent.
            self.release(connection, False)
            raise

    async def _acquire(self) -> _Connection:
        if self.closed:
            raise HttpError("the client is closed")
        loop = asyncio.get_running_loop()
        # First a place among the `limit` requests in use (in turn, when they are all
        # taken), then a connection for it: an idle one, or a new one.
        if self.limit is not None and self._busy >= self.limit:
            await self._wait_for_a_place(loop)
        else:
            self._busy += 1
        try:
            # Idle connections past KEEP_ALIVE are closed by `_close_expired`.
            while self._idle:
                connection = self._idle.pop()
                if not connection.closed:
                    return connection
            _transport, connection = await asyncio.wait_for(
                loop.create_connection(lambda: _Connection(self), self.host, self.port),
                self.connect_timeout,
            )
            if self.closed:
                connection.close()
                raise HttpError("the client is closed")
            self._open.add(connection)
        except BaseException as exc:
            self._give_back()
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(
                    f"no connection to {self.host}:{self.port} within {self.connect_timeout:g} s"
                ) from None
            if isinstance(exc, OSError):
                raise ConnectFailed(self.host, self.port, exc) from None
            raise
        return connection

    async def _wait_for_a_place(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait in turn until a request in use hands its place over (`_give_back`)."""
        waiter = loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.wait_timeout):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # Handed a place just as the wait ended: pass it on.
                self._give_back()
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise PoolTimeout(
                    f"{self.limit} requests open and none finished within {self.wait_timeout:g} s"
                ) from None
            raise

    def release(self, connection: _Connection, reusable: bool) -> None:
        if reusable and self.keep_alive and not self.closed and not connection.closed:
            loop = asyncio.get_running_loop()
            connection.idle_since = loop.time()
            self._idle.append(connection)
            if self._sweep is None:
                self._sweep = loop.call_later(KEEP_ALIVE, self._close_expired)
        else:
            connection.close()
        self._give_back()

    def _close_expired(self) -> None:
        """Close the connections idle for KEEP_ALIVE seconds (the oldest are first)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._idle and now - self._idle[0].idle_since >= KEEP_ALIVE:
            self._idle.pop(0).close()
        if self._idle:
            wait = KEEP_ALIVE - (now - self._idle[0].idle_since)
            self._sweep = loop.call_later(wait, self._close_expired)

    def _give_back(self) -> None:
        """A request is done with its place: the first waiting one gets it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._busy -= 1

    def discard(self, connection: _Connection) -> None:
        """A connection closed (by either side): it leaves the pool."""
        self._open.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)

    def close(self) -> None:
        """Close every connection, those in use too (their answers end with
        `Disconnected`): after an edit of the connection, nothing goes on with the old URL
        or credentials."""
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle = []
        for connection in list(self._open):
            connection.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(HttpError("the client is closed"))
