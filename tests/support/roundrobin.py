"""A small HTTP/1.1 reverse proxy on loopback, as a load balancer in front of several
gateway processes.

Each request goes to the next backend in turn (over a new backend connection), also
requests on one kept-alive client connection. Headers and bodies pass through byte for
byte, with nothing added or removed. A request body is read whole before it is sent on
(agents send small JSON-RPC messages; it is also recorded); responses are relayed as
they arrive (chunk by chunk for Server-Sent Events), never buffered; a `101 Switching
Protocols` answer turns the connection into a tunnel (WebSocket). When the client goes away in
the middle of a response, the backend connection is closed too, as a load balancer
does. As an HTTP forward proxy, it sends a request for an absolute URL on to its backend
in origin form. `route` may pin requests: it returns a key for the requests to pin (the
same key always reaches the same backend) or None for round robin.

Every request is recorded as a `Hit` (backend, method, target, headers, body, status),
so a test can see which process served what, including a request still in flight.

    with RoundRobinProxy([port_a, port_b, port_c]) as proxy:
        ... proxy.url ... proxy.hits() ... proxy.counts()

The proxy runs its own event loop in a thread and stops when the `with` block ends.
"""

import asyncio
import contextlib
import threading
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

HEAD_LIMIT = 64 * 1024
BODY_PREVIEW = 64 * 1024
# What the response relay reports when the backend switched protocols.
UPGRADED = object()


class _Closed(Exception):
    """The peer closed its connection before a complete message."""


class _Reader:
    """A stream reader with a buffer the proxy controls (for head parsing and pipelining)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.buffer = bytearray()

    async def fill(self) -> bool:
        data = await self.reader.read(65536)
        if not data:
            return False
        self.buffer += data
        return True

    async def head(self) -> bytes | None:
        """Everything up to and including the blank line; None at a clean end of stream."""
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self.buffer[: end + 4])
                del self.buffer[: end + 4]
                return head
            if len(self.buffer) > HEAD_LIMIT:
                raise _Closed("header section too large")
            if not await self.fill():
                if self.buffer:
                    raise _Closed("closed inside a header section")
                return None

    async def line(self) -> bytes:
        while True:
            end = self.buffer.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buffer[: end + 2])
                del self.buffer[: end + 2]
                return line
            if not await self.fill():
                raise _Closed("closed inside a line")

    async def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self.fill():
                raise _Closed("closed inside a body")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def some(self, limit: int) -> bytes:
        """What is available now (at least one byte), up to limit; b"" at end of stream."""
        if not self.buffer and not await self.fill():
            return b""
        data = bytes(self.buffer[:limit])
        del self.buffer[:limit]
        return data


@dataclass
class Hit:
    """One request as the proxy passed it on."""

    backend: int
    method: str
    target: str
    headers: dict[str, str]
    body: bytes = b""
    status: int | None = None
    response_headers: dict[str, str] = field(default_factory=dict)
    finished: bool = False

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return lines[0], headers


def _tokens(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


async def _copy_chunked(source: _Reader, sink: asyncio.StreamWriter | None) -> bytes:
    """Pass a chunked body on as it arrives; returns the decoded body (for the record)."""
    decoded = bytearray()
    while True:
        size_line = await source.line()
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if sink is not None:
            sink.write(size_line)
        if size == 0:
            while True:  # trailer section, up to its blank line
                trailer = await source.line()
                if sink is not None:
                    sink.write(trailer)
                if trailer == b"\r\n":
                    break
            if sink is not None:
                await sink.drain()
            return bytes(decoded)
        chunk = await source.exactly(size + 2)
        if len(decoded) < BODY_PREVIEW:
            decoded += chunk[:-2]
        if sink is not None:
            sink.write(chunk)
            await sink.drain()


async def _copy_length(source: _Reader, sink: asyncio.StreamWriter, size: int) -> None:
    while size > 0:
        data = await source.some(size)
        if not data:
            raise _Closed("closed inside a body")
        sink.write(data)
        await sink.drain()
        size -= len(data)


async def _copy_to_end(source: _Reader, sink: asyncio.StreamWriter) -> None:
    while data := await source.some(65536):
        sink.write(data)
        await sink.drain()


class RoundRobinProxy:
    def __init__(
        self,
        backends: list[int],
        route: Callable[[Hit], str | None] | None = None,
    ) -> None:
        self.backends = list(backends)
        self.route = route
        self.port = 0
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._turn = 0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hits(self) -> list[Hit]:
        with self._lock:
            return list(self._hits)

    def counts(self, keep: Callable[[Hit], bool] = lambda hit: True) -> Counter[int]:
        """Requests per backend (its index in `backends`)."""
        return Counter(hit.backend for hit in self.hits() if keep(hit))

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> "RoundRobinProxy":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="round-robin-proxy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._failure is not None:
            raise RuntimeError("the proxy did not start") from self._failure
        if not self.port:
            raise RuntimeError("the proxy did not start within 10 s")

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(15)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported to start()
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        connections: set[asyncio.Task[None]] = set()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            connections.add(task)
            try:
                await self._serve(reader, writer)
            except asyncio.CancelledError:
                pass  # stopping: asyncio's stream server would log a cancelled handler
            finally:
                connections.discard(task)

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(connections):
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

    # -- one client connection -------------------------------------------------------

    def _choose(self, hit: Hit) -> int:
        key = self.route(hit) if self.route is not None else None
        if key is not None:
            return zlib.crc32(key.encode()) % len(self.backends)
        with self._lock:
            backend = self._turn % len(self.backends)
            self._turn += 1
        return backend

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Reader(reader)
        try:
            while True:
                head = await client.head()
                if head is None:
                    return
                request_line, headers = _parse_head(head)
                method, target, version = request_line.split(" ", 2)
                hit = Hit(backend=-1, method=method, target=target, headers=headers)
                if target.startswith("http://"):
                    # A client using this as its HTTP proxy sends the absolute URL; sent
                    # on in origin form (/path), as a forward proxy does.
                    path = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
                    head = head.replace(
                        request_line.encode(), f"{method} {path} {version}".encode(), 1
                    )
                if "chunked" in _tokens(headers.get("transfer-encoding")):
                    raw_body = None
                else:
                    hit.body = await client.exactly(int(headers.get("content-length") or 0))
                    raw_body = hit.body
                hit.backend = self._choose(hit)
                with self._lock:
                    self._hits.append(hit)
                keep_alive = await self._forward(hit, head, raw_body, client, writer)
                if (
                    not keep_alive
                    or version == "HTTP/1.0"
                    or "close" in _tokens(headers.get("connection"))
                ):
                    return
        except (_Closed, ConnectionError, ValueError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _forward(
        self,
        hit: Hit,
        head: bytes,
        raw_body: bytes | None,
        client: _Reader,
        client_writer: asyncio.StreamWriter,
    ) -> bool:
        """Send one request to its backend and relay the answer. True to keep the client
        connection for another request."""
        try:
            up_reader, up_writer = await asyncio.open_connection(
                "127.0.0.1", self.backends[hit.backend]
            )
        except OSError:
            client_writer.write(
                b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            await client_writer.drain()
            hit.status, hit.finished = 502, True
            return False
        upstream = _Reader(up_reader)
        try:
            up_writer.write(head)
            if raw_body is None:
                hit.body = await _copy_chunked(client, up_writer)
            else:
                up_writer.write(raw_body)
            await up_writer.drain()

            relay = asyncio.ensure_future(self._relay(hit, upstream, client_writer))
            # The client leaving (end of its stream) ends the request upstream as well.
            # Bytes it sends meanwhile (a pipelined request) stay in its buffer.
            watch = asyncio.ensure_future(_until_closed(client))
            try:
                await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                watch.cancel()
                gone = not relay.done()
                if gone:
                    relay.cancel()
                await asyncio.gather(watch, relay, return_exceptions=True)
            if gone:
                return False
            keep = relay.result()
            if keep is UPGRADED:
                await _tunnel(client, client_writer, upstream, up_writer)
                return False
            return bool(keep)
        finally:
            hit.finished = True
            up_writer.close()
            with contextlib.suppress(Exception):
                await up_writer.wait_closed()

    async def _relay(
        self, hit: Hit, upstream: _Reader, client_writer: asyncio.StreamWriter
    ) -> bool | object:
        head = await upstream.head()
        if head is None:
            raise _Closed("the backend closed without an answer")
        status_line, response_headers = _parse_head(head)
        hit.status = int(status_line.split(" ", 2)[1])
        hit.response_headers = response_headers
        client_writer.write(head)
        await client_writer.drain()
        if hit.status == 101:
            return UPGRADED
        if hit.method == "HEAD" or hit.status in (204, 304) or hit.status < 200:
            return True
        if "chunked" in _tokens(response_headers.get("transfer-encoding")):
            await _copy_chunked(upstream, client_writer)
        elif "content-length" in response_headers:
            await _copy_length(upstream, client_writer, int(response_headers["content-length"]))
        else:
            await _copy_to_end(upstream, client_writer)
            return False
        return "close" not in _tokens(response_headers.get("connection"))


async def _until_closed(client: _Reader) -> None:
    while await client.fill():
        pass


async def _tunnel(
    client: _Reader,
    client_writer: asyncio.StreamWriter,
    upstream: _Reader,
    upstream_writer: asyncio.StreamWriter,
) -> None:
    """Both directions as they are, until either side closes (after a 101 answer)."""

    async def pipe(source: _Reader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, _Closed):
            await _copy_to_end(source, sink)

    directions = {
        asyncio.ensure_future(pipe(client, upstream_writer)),
        asyncio.ensure_future(pipe(upstream, client_writer)),
    }
    try:
        await asyncio.wait(directions, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in directions:
            task.cancel()
        await asyncio.gather(*directions, return_exceptions=True)
