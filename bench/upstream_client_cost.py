"""CPU time per upstream request: the gateway's own client for plain-HTTP upstreams
(`gateway.http1`), aiohttp as the gateway uses it for TLS and proxied upstreams, and a bare
asyncio protocol with httptools' response parser.

    uv run python -m bench.upstream_client_cost [--requests N] [--rounds N] [--result-bytes N]

All run on uvloop's event loop and POST the benchmark's tools/call to its own
`bench.upstream_fast` over one keep-alive connection, one request at a time, and read the
whole answer; the rounds alternate between them. The figures are this process's CPU time
per request (`time.process_time`, system calls included): what the upstream hop's HTTP
handling costs a call, apart from the rest of the gateway.

The bare protocol is no client the gateway could use (no pool, timeouts, TLS, proxies,
chunked or streamed answers, or errors): it is the floor that any client stands on.
"""

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httptools
import uvloop

from bench.gateway_bench import free_port, wait_for_port
from gateway import http1

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
BODY = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": "fetch_report",
            "arguments": {"customer": "c-001", "limit": 10},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"},
        },
    }
).encode()
# The headers gateway.upstream sends with a 2026-07-28 call.
HEADERS = {
    "accept": "application/json, text/event-stream",
    "user-agent": "mcp-gateway/0.1",
    "mcp-protocol-version": "2026-07-28",
    "mcp-method": "tools/call",
    "mcp-name": "fetch_report",
    "content-type": "application/json",
}


class BareClient(asyncio.Protocol):
    """One keep-alive connection; one request at a time; answers with Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future[bytes] | None = None
        self.chunks: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.answer is not None
        self.answer.set_result(b"".join(self.chunks))

    async def post(self, port: int) -> bytes:
        assert self.transport is not None
        self.chunks = []
        self.answer = asyncio.get_running_loop().create_future()
        head = f"POST /mcp HTTP/1.1\r\nhost: {HOST}:{port}\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in HEADERS.items()
        )
        head += f"content-length: {len(BODY)}\r\n\r\n"
        self.transport.write(head.encode() + BODY)
        return await self.answer


def _per_request(start: float, requests: int) -> float:
    return (time.process_time() - start) / requests * 1e6


async def measure(port: int, requests: int, rounds: int) -> list[tuple[str, float, int]]:
    url = f"http://{HOST}:{port}/mcp"
    timeout = aiohttp.ClientTimeout(total=None, connect=30, sock_connect=10, sock_read=30)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=200, limit_per_host=0),
        timeout=timeout,
        cookie_jar=aiohttp.DummyCookieJar(),
    )

    async def with_aiohttp() -> bytes:
        response = await session.request(
            "POST",
            url,
            data=BODY,
            headers=HEADERS,
            allow_redirects=False,
            proxy=None,
            proxy_auth=None,
        )
        body = await response.read()
        response.release()
        return body

    # As gateway.upstream makes it for the calls of an http:// upstream.
    pool = http1.Pool(
        url, limit=200, keep_alive=True, wait_timeout=30, connect_timeout=10, read_timeout=30
    )

    async def with_http1() -> bytes:
        response = await pool.request("POST", dict(HEADERS), BODY)
        body = await response.read()
        response.release()
        return body

    loop = asyncio.get_running_loop()
    _transport, bare = await loop.create_connection(BareClient, HOST, port)
    clients = [
        ("gateway.http1", with_http1),
        ("aiohttp", with_aiohttp),
        ("bare protocol", lambda: bare.post(port)),
    ]
    results: list[tuple[str, float, int]] = []
    try:
        for _ in range(min(requests, 300)):  # warm-up
            for _name, send in clients:
                await send()
        for _ in range(rounds):
            for name, send in clients:
                start = time.process_time()
                for _ in range(requests):
                    body = await send()
                results.append((name, _per_request(start, requests), len(body)))
    finally:
        await session.close()
        pool.close()
        _transport.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per client and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--result-bytes", type=int, default=10 * 1024)
    options = parser.parse_args()
    port = free_port()
    command = [sys.executable, "-m", "bench.upstream_fast", "--port", str(port)]
    command += ["--result-bytes", str(options.result_bytes)]
    upstream = subprocess.Popen(command, cwd=ROOT)  # noqa: S603 - our own interpreter
    try:
        wait_for_port(port, upstream)
        results = uvloop.run(measure(port, options.requests, options.rounds))
    finally:
        upstream.terminate()
        upstream.wait(10)
    print(f"{options.requests} requests per client and round, answers of {results[0][2]} bytes")
    for n, (name, micros, size) in enumerate(results):
        if size != results[0][2]:
            raise SystemExit(f"{name} read {size} bytes, not {results[0][2]}")
        print(f"round {n // 3 + 1}: {name:<14} {micros:7.1f} µs CPU per request")


if __name__ == "__main__":
    main()
