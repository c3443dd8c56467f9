"""A minimal MCP server for the gateway benchmark: its one tool does no work, fast.

    uv run python -m bench.upstream_fast --port P [--result-bytes N] [--server raw|uvicorn]

It serves /mcp for both protocol eras:

- legacy (up to 2025-11-25): `initialize` mints an `Mcp-Session-Id`; every later request
  must carry a session it minted (404 otherwise); `notifications/*` get 202; GET opens an
  idle SSE stream (for the idle-session measurements); DELETE ends the session;
- 2026-07-28: `server/discover`, and stateless requests whose `_meta` (or
  `MCP-Protocol-Version` header) names 2026-07-28.

Every answer is plain JSON (no SSE), built from bytes prepared at start-up: `tools/call`
of `fetch_report` returns one text block of --result-bytes bytes full of e-mail addresses
and payment card numbers, so that the gateway's masking has work to do.

The default server is a small HTTP/1.1 keep-alive server on asyncio's protocol API,
several times cheaper per request than uvicorn with h11 (httptools is not installed here),
so that a direct run measures the load generator and as little upstream as possible. The
same logic is also an ASGI app (`--server uvicorn`, or `bench.upstream_fast:app`).
"""

import argparse
import asyncio
import json
import os
import secrets
import signal
from collections.abc import Awaitable, Callable
from typing import Any

MODERN_VERSION = "2026-07-28"
LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
TOOL_NAME = "fetch_report"
TOOL = {
    "name": TOOL_NAME,
    "description": "Returns a customer report (the benchmark's tool: it does no work).",
    "inputSchema": {
        "type": "object",
        "properties": {"customer": {"type": "string"}, "limit": {"type": "integer"}},
        "required": ["customer"],
    },
}
SERVER_INFO = {"name": "bench-upstream", "version": "1.0"}
CAPABILITIES = {"tools": {"listChanged": False}}
PRIMING_EVENT = b"id: 0\ndata:\n\n"

# (status, headers, body); a GET stream is signalled with body None.
Answer = tuple[int, list[tuple[str, str]], bytes | None]


def report_text(size: int) -> str:
    """About `size` bytes of report lines, each with an e-mail address and a card number
    (Luhn-valid test numbers) among ordinary ids, dates and amounts."""
    cards = ("4111 1111 1111 1111", "5555555555554444", "3782 822463 10005", "6011000990139424")
    lines: list[str] = []
    total = 0
    n = 0
    while total < size:
        line = (
            f"order {100_000 + n}: customer c-{n % 97:03d} <user{n}.name@example.com> paid "
            f"{(n * 37) % 1000}.{n % 100:02d} EUR with card {cards[n % len(cards)]} "
            f"on 2026-0{1 + n % 9}-1{n % 10}; status shipped\n"
        )
        lines.append(line)
        total += len(line.encode())
        n += 1
    return "".join(lines)[:size]


class McpLogic:
    """The protocol, independent of the HTTP server that carries it."""

    def __init__(self, result_bytes: int) -> None:
        self.sessions: set[str] = set()
        content = [{"type": "text", "text": report_text(result_bytes)}]
        legacy = {"content": content, "isError": False}
        modern = {"resultType": "complete", **legacy}
        # The answer to tools/call is its id between two fixed pieces.
        self.call_suffix = {
            False: b',"result":' + _dumps(legacy) + b"}",
            True: b',"result":' + _dumps(modern) + b"}",
        }
        self.list_suffix = {
            False: b',"result":' + _dumps({"tools": [TOOL]}) + b"}",
            True: b',"result":'
            + _dumps({"resultType": "complete", "tools": [TOOL], "ttlMs": 0})
            + b"}",
        }

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if path.split("?")[0].rstrip("/") != "/mcp":
            return _error_answer(404, None, -32600, "Not found")
        session = headers.get("mcp-session-id")
        if method == "GET":
            if session is None or session not in self.sessions:
                return 405 if session is None else 404, [], b""
            return 200, [("content-type", "text/event-stream")], None
        if method == "DELETE":
            if session is None or session not in self.sessions:
                return 404, [], b""
            self.sessions.discard(session)
            return 200, [], b""
        if method != "POST":
            return 405, [("allow", "GET, POST, DELETE")], b""
        try:
            payload = json.loads(body)
        except ValueError:
            return _error_answer(400, None, -32700, "Parse error")
        if not isinstance(payload, dict):
            return _error_answer(400, None, -32600, "Batches are not supported")
        rpc_method = payload.get("method")
        if rpc_method is None:
            return 202, [], b""  # a response from the client
        request_id = payload.get("id")
        params = payload.get("params") if isinstance(payload.get("params"), dict) else {}
        meta = params.get("_meta") if isinstance(params.get("_meta"), dict) else {}
        version = meta.get("io.modelcontextprotocol/protocolVersion") or headers.get(
            "mcp-protocol-version"
        )
        modern = version == MODERN_VERSION and session is None
        if rpc_method == "initialize":
            requested = params.get("protocolVersion")
            new_session = secrets.token_hex(16)
            self.sessions.add(new_session)
            result = {
                "protocolVersion": requested if requested in LEGACY_VERSIONS else "2025-11-25",
                "capabilities": CAPABILITIES,
                "serverInfo": SERVER_INFO,
            }
            return _result_answer(request_id, result, [("mcp-session-id", new_session)])
        if rpc_method == "server/discover":
            result = {
                "resultType": "complete",
                "supportedVersions": [*LEGACY_VERSIONS, MODERN_VERSION],
                "capabilities": CAPABILITIES,
                "_meta": {"io.modelcontextprotocol/serverInfo": SERVER_INFO},
            }
            return _result_answer(request_id, result)
        if not modern:
            if session is None:
                return _error_answer(400, request_id, -32600, "Mcp-Session-Id is required")
            if session not in self.sessions:
                return _error_answer(404, request_id, -32600, "Session not found")
        if request_id is None:
            return 202, [], b""  # notifications
        if rpc_method == "tools/call":
            if params.get("name") != TOOL_NAME:
                return _error_answer(200, request_id, -32602, "Unknown tool")
            return 200, [], _with_id(request_id, self.call_suffix[modern])
        if rpc_method == "tools/list":
            return 200, [], _with_id(request_id, self.list_suffix[modern])
        if rpc_method == "ping":
            return _result_answer(request_id, {})
        return _error_answer(200, request_id, -32601, f"Method not found: {rpc_method}")


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _with_id(request_id: Any, suffix: bytes) -> bytes:
    return b'{"jsonrpc":"2.0","id":' + _dumps(request_id) + suffix


def _result_answer(
    request_id: Any, result: dict[str, Any], headers: list[tuple[str, str]] | None = None
) -> Answer:
    return 200, headers or [], _dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


def _error_answer(status: int, request_id: Any, code: int, message: str) -> Answer:
    error = {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}
    return status, [], _dumps(error)


REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Not Allowed"}


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies: what httpx, wrk and the
    benchmark's own load generator send."""

    def __init__(self, logic: McpLogic) -> None:
        self.logic = logic
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.streaming = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.streaming and self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", ""):
                self._send(411, [], b"", close=True)
                return
            total = end + 4 + int(headers.get("content-length") or 0)
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            status, extra, answer = self.logic.handle(method, target, headers, body)
            if answer is None:
                self._open_stream(extra)
                return
            self._send(status, extra, answer, close=headers.get("connection") == "close")

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes, close: bool) -> None:
        assert self.transport is not None
        head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        if body:
            head.append("content-type: application/json")
        head.append(f"content-length: {len(body)}")
        head.extend(f"{name}: {value}" for name, value in headers)
        if close:
            head.append("connection: close")
        self.transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
        if close:
            self.transport.close()

    def _open_stream(self, headers: list[tuple[str, str]]) -> None:
        """An idle SSE stream: a priming event (an id, no data, as resumable servers send),
        then nothing until the client goes away."""
        assert self.transport is not None
        self.streaming = True
        head = ["HTTP/1.1 200 OK", "cache-control: no-cache", "transfer-encoding: chunked"]
        head.extend(f"{name}: {value}" for name, value in headers)
        self.transport.write(
            "\r\n".join(head).encode()
            + b"\r\n\r\n"
            + f"{len(PRIMING_EVENT):x}\r\n".encode()
            + PRIMING_EVENT
            + b"\r\n"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def asgi_app(logic: McpLogic) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        chunks = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        status, extra, body = logic.handle(
            scope["method"], scope["path"], headers, b"".join(chunks)
        )
        raw_headers = [(k.encode(), v.encode()) for k, v in extra]
        if body:
            raw_headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        if body is None:
            await send({"type": "http.response.body", "body": PRIMING_EVENT, "more_body": True})
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await send({"type": "http.response.body", "body": body})

    return app


app = asgi_app(McpLogic(int(os.environ.get("BENCH_RESULT_BYTES", "200"))))


async def serve_raw(port: int, logic: McpLogic) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: HttpProtocol(logic), "127.0.0.1", port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--result-bytes", type=int, default=200, help="size of the tool's text")
    parser.add_argument("--server", choices=("raw", "uvicorn"), default="raw")
    options = parser.parse_args()
    logic = McpLogic(options.result_bytes)
    if options.server == "uvicorn":
        import uvicorn

        uvicorn.run(
            asgi_app(logic),
            host="127.0.0.1",
            port=options.port,
            log_level="warning",
            access_log=False,
            backlog=4096,
        )
    else:
        asyncio.run(serve_raw(options.port, logic))


if __name__ == "__main__":
    main()
