"""Load generators for the gateway benchmark, and the raw HTTP they share.

Both replay pre-built HTTP/1.1 requests over keep-alive connections, closed-loop (each
connection sends its next request when the previous answer has arrived):

- `wrk` (the Debian package) with `bench/wrk/mcp.lua`: C, far cheaper than what it
  measures; used whenever it is installed;
- a small asyncio generator in this module, the fallback: raw sockets, no HTTP library,
  one coroutine per connection.

An answer counts as an error unless it is HTTP 200 without a JSON-RPC error object.
"""

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LUA_SCRIPT = Path(__file__).resolve().parent / "wrk" / "mcp.lua"
ERROR_MARK = b'"error":{'


@dataclass
class LoadResult:
    calls: int
    errors: int
    seconds: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    sample_error: str = ""

    @property
    def rate(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


def wrk_path() -> str | None:
    return shutil.which("wrk")


def build_request(
    host: str, port: int, path: str, headers: dict[str, str], body: bytes, method: str = "POST"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines.extend(f"{name}: {value}" for name, value in headers.items())
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, status: int, headers: dict[str, str]) -> bytes:
    """A response body: Content-Length, chunked, or (last resort) until close."""
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", ""):
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    if status in (204, 304) or status < 200:
        return b""
    return await reader.read()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response."""
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    return status, headers, await read_body(reader, status, headers)


async def exchange(host: str, port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        return await read_response(reader)
    finally:
        writer.close()


def _percentile(ordered: list[int], share: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] / 1e6


async def _python_load(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float
) -> LoadResult:
    latencies: list[int] = []
    errors = 0
    sample = ""
    start_line = asyncio.Event()
    deadline = 0.0

    async def connection(slot: int) -> None:
        nonlocal errors, sample
        raw = requests[slot % len(requests)]
        reader, writer = await asyncio.open_connection(host, port)
        clock = time.perf_counter_ns
        try:
            await start_line.wait()
            while time.monotonic() < deadline:
                began = clock()
                writer.write(raw)
                status, _headers, body = await read_response(reader)
                latencies.append(clock() - began)
                if status != 200 or ERROR_MARK in body:
                    errors += 1
                    if not sample:
                        sample = f"{status} {body[:200].decode(errors='replace')}"
        finally:
            writer.close()

    tasks = [asyncio.create_task(connection(slot)) for slot in range(concurrency)]
    await asyncio.sleep(0.05)  # let every connection open before the clock starts
    began = time.monotonic()
    deadline = began + seconds
    start_line.set()
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - began
    latencies.sort()
    return LoadResult(
        calls=len(latencies),
        errors=errors,
        seconds=elapsed,
        p50_ms=_percentile(latencies, 0.50),
        p95_ms=_percentile(latencies, 0.95),
        p99_ms=_percentile(latencies, 0.99),
        sample_error=sample,
    )


def python_load(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float
) -> LoadResult:
    """Connection i sends requests[i % len(requests)] over and over for `seconds`."""
    return asyncio.run(_python_load(host, port, requests, concurrency, seconds))


BENCH_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)
ERROR_LINE = re.compile(r"^BENCH_ERROR ?(.*)$", re.MULTILINE)


def wrk_load(
    host: str, port: int, requests: list[bytes], concurrency: int, seconds: float
) -> LoadResult:
    """The same, with wrk: thread i of T takes requests i, i+T, ... (see the Lua script)."""
    threads = max(1, min(concurrency, os.cpu_count() or 1))
    with tempfile.NamedTemporaryFile("wb", prefix="mcpgw-wrk-", suffix=".bin") as handle:
        handle.write(b"\0".join(requests))
        handle.flush()
        command = [
            wrk_path() or "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            # wrk takes whole seconds only.
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA_SCRIPT),
            f"http://{host}:{port}/",
            "--",
            handle.name,
            str(threads),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    match = BENCH_LINE.search(done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    values = dict(pair.split("=", 1) for pair in match.group(1).split())
    error_line = ERROR_LINE.search(done.stdout)
    return LoadResult(
        # Answers that never came (socket errors, timeouts) are errors too.
        calls=int(values["requests"]),
        errors=int(values["errors"]) + int(values["socket_errors"]),
        seconds=int(values["duration_us"]) / 1e6,
        p50_ms=float(values["p50_us"]) / 1000,
        p95_ms=float(values["p95_us"]) / 1000,
        p99_ms=float(values["p99_us"]) / 1000,
        sample_error=(error_line.group(1).strip() if error_line else ""),
    )
