"""What the gateway adds to the server that serves it (uvicorn, `mcpgw.serve`).

Request heads: httptools keeps a header whole until it ends, whatever its size, and uvicorn
sets no limit, so a client could make the process buffer megabytes of headers on every
connection it opens. `HttpProtocol` refuses a request whose head (request line and
headers) goes past MAX_HEAD_BYTES with 431, before the application sees it.

Answers: uvicorn writes a response's head as soon as the application starts it and the
body in a write of its own, so every answer costs two system calls and reaches the client
as two TCP segments. `HttpProtocol` gives each response a transport that holds the head
until the next write and sends both in one (`HeadWithBody`).

Access log: uvicorn emits a request's line before it writes the answer; `AccessLogHandler`
writes it after the answer has left, with the other lines of the same turn of the event
loop in one write.

Start: the log says which event loop serves (uvloop or asyncio; see `mcpgw.serve`).

Shutdown: uvicorn stops on SIGTERM or SIGINT: it stops accepting connections, lets the
responses under way end (for `--timeout-graceful-shutdown`, then cancels them) and then
sends the lifespan's shutdown event. The gateway then writes the audit records that wait
to share a commit (`audit.writer.flush`), then ends the upstream sessions and server
processes this process opened for itself (`gateway.upstream.close_all`): the session it
keeps per upstream for stateless agents gets its DELETE, as the MCP specification asks of
a client that no longer needs a session. Agents' own sessions are left alone: another
process behind the load balancer may go on serving them.
"""

import asyncio
import http
import logging
from importlib.metadata import version
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway import jsonrpc

log = logging.getLogger(__name__)

# The most a request's head may take (Twisted, under daphne, allowed 16 KiB of headers);
# room for large bearer tokens and many Mcp-Param-* headers.
MAX_HEAD_BYTES = 64 * 1024
HEAD_END = b"\r\n\r\n"


_HEAD_TOO_LARGE = jsonrpc.dumps(
    jsonrpc.error(
        None,
        jsonrpc.INVALID_REQUEST,
        f"Request header fields too large: more than {MAX_HEAD_BYTES} bytes",
    )
)
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_HEAD_TOO_LARGE), _HEAD_TOO_LARGE)
)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a request's head limited to MAX_HEAD_BYTES."""

    _in_head = True  # between a request's first byte and the end of its headers
    _head_seen = 0  # bytes received since the request began
    _tail = b""  # the last bytes received, for an end of the head split between reads

    def data_received(self, data: bytes) -> None:
        # Once refused, the connection is closed: no more reads reach here.
        if self._in_head:
            start = self._head_seen - len(self._tail)  # where tail + data begins
            self._head_seen += len(data)
            if self._head_seen > MAX_HEAD_BYTES:
                # The read may hold the end of the head and then the body.
                end = (self._tail + data).find(HEAD_END)
                if end < 0 or start + end + len(HEAD_END) > MAX_HEAD_BYTES:
                    self._refuse_head()
                    return
            self._tail = data[-3:]
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        before = self.cycle
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not before and cycle is not None:  # not an upgrade (WebSocket)
            cycle.transport = HeadWithBody(self.transport, self.loop)

    def on_message_complete(self) -> None:
        self._in_head, self._head_seen, self._tail = True, 0, b""
        super().on_message_complete()

    def _refuse_head(self) -> None:
        self.logger.warning(
            "%s - request head over %d bytes refused with 431",
            f"{self.client[0]}:{self.client[1]}" if self.client else "-",
            MAX_HEAD_BYTES,
        )
        self.transport.write(HEAD_TOO_LARGE)
        self.transport.close()


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class HeadWithBody:
    """The connection's transport as one of uvicorn's response cycles writes to it: the
    response's head waits for the cycle's next write and leaves with it, in one system
    call; a head whose body does not follow in the same turn of the event loop (a stream's,
    which waits for its first event) leaves at the end of that turn. Everything else is
    the transport's own."""

    __slots__ = ("_held", "_loop", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.writelines((held, data))
        elif self._started or data == CONTINUE:
            self._transport.write(data)
        else:
            self._started = True  # the first write of a response is its head
            self._held = data
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class AccessFormatter(logging.Formatter):
    """uvicorn's access log line, `%(client_addr)s - "%(request_line)s" %(status_code)s`,
    made from the record's arguments (client address, method, path and query, HTTP
    version, status) without uvicorn's formatter's two copies of each record and its
    lookup of the status's phrase for every line."""

    _statuses: dict[int, str] = {}

    def formatMessage(self, record: logging.LogRecord) -> str:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            client_addr, method, path, http_version, status = args
            record.client_addr = client_addr
            record.request_line = f"{method} {path} HTTP/{http_version}"
            record.status_code = self._status(status)
        return super().formatMessage(record)

    @classmethod
    def _status(cls, code: int) -> str:
        text = cls._statuses.get(code)
        if text is None:
            try:
                phrase = http.HTTPStatus(code).phrase
            except ValueError:
                phrase = ""
            text = cls._statuses[code] = f"{code} {phrase}"
        return text


class AccessLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's handler: a line emitted on a running event loop is formatted and
    written once the loop's current callback has run, so after a JSON answer it describes
    has left (uvicorn emits it before it writes the response's head; a stream's head, held
    by `HeadWithBody`, leaves in the same turn of the loop), and with the others of the
    same turn of the loop in one write. A line emitted where no loop runs is written at
    once, after those still waiting; `flush` and `close` (and so the end of the process)
    write those waiting too. Each line keeps the time it was emitted at."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self._waiting: list[logging.LogRecord] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that will write them

    def emit(self, record: logging.LogRecord) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._waiting and loop is not self._loop:
            self._write_waiting()
        if loop is None:
            super().emit(record)
            return
        self._waiting.append(record)
        if len(self._waiting) == 1:
            self._loop = loop
            loop.call_soon(self._write_waiting)

    def _write_waiting(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            records, self._waiting, self._loop = self._waiting, [], None
            if not records:
                return
            lines = []
            for record in records:
                try:
                    lines.append(self.format(record) + self.terminator)
                except Exception:
                    self.handleError(record)
            try:
                self.stream.write("".join(lines))
                super().flush()
            except Exception:
                self.handleError(records[-1])

    def flush(self) -> None:
        self._write_waiting()
        super().flush()

    def close(self) -> None:
        self._write_waiting()
        super().close()


# How long shutdown waits for the last audit records, and for upstreams to end their
# sessions.
SHUTDOWN_SECONDS = 5.0


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    if type(loop).__module__.partition(".")[0] == "uvloop":
        return f"uvloop {version('uvloop')}"
    return "asyncio"


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            log.info("serving on the %s event loop", event_loop_name(asyncio.get_running_loop()))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await end_process()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def end_process() -> None:
    from audit import writer
    from gateway import upstream

    try:
        # Outcome records that wait to share a commit are written first.
        await asyncio.wait_for(writer.flush(), SHUTDOWN_SECONDS)
    except Exception:
        log.warning("writing the last audit records at shutdown failed", exc_info=True)
    try:
        await asyncio.wait_for(upstream.close_all(), SHUTDOWN_SECONDS)
    except Exception:  # shutdown goes on whatever an upstream does
        log.warning("ending upstream sessions at shutdown failed", exc_info=True)
