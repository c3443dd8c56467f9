"""HTTP upstreams that break: each call gets a clear error within the timeout, and the
gateway keeps no file handle behind."""

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from audit.models import AuditRecord, Kind
from tests.conftest import (
    FIXTURES,
    Server,
    add_connection,
    free_port,
    issue_token,
    stop,
    wait_for_port,
)
from tests.test_bad_input import MODERN_CALL, MODERN_HEADERS
from tests.test_proxy_sdk import raw_initialize

pytestmark = pytest.mark.django_db(transaction=True)

CALL = {
    "jsonrpc": "2.0",
    "id": 3,
    "method": "tools/call",
    "params": {"name": "work", "arguments": {}},
}


def faulty(mode: str) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(FIXTURES / "http_faulty.py"), "--port", str(port), "--mode", mode]
    )
    wait_for_port(port, process)
    return Server(f"http://127.0.0.1:{port}/mcp", port, process)


@pytest.fixture
def upstreams() -> Iterator[dict[str, Server]]:
    servers = {mode: faulty(mode) for mode in ("close", "trickle", "trickle-json")}
    yield servers
    for server in servers.values():
        stop(server.process)


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.mark.parametrize("mode", ["close", "trickle", "trickle-json"])
async def test_broken_upstream_gives_a_clear_error_in_time(alice, gateway, upstreams, mode):
    add_connection("faulty", upstreams[mode].url)
    url = f"{gateway.url}/mcp/faulty"
    async with httpx.AsyncClient(timeout=30) as http:
        headers = await raw_initialize(http, url, issue_token("alice"))
        started = time.monotonic()
        response = await http.post(url, headers=headers, json=CALL)
        elapsed = time.monotonic() - started
    # The test gateway allows an upstream 5 s of silence (GATEWAY_UPSTREAM_TIMEOUT).
    assert elapsed < 12
    text = response.text
    assert '"error"' in text and '"id":3' in text
    expected = "its stream" if mode == "close" else "5 s"
    assert expected in text


async def test_many_broken_calls_leave_no_file_handles(alice, gateway, upstreams):
    add_connection("faulty", upstreams["close"].url)
    url = f"{gateway.url}/mcp/faulty"
    async with httpx.AsyncClient(timeout=30) as http:
        headers = await raw_initialize(http, url, issue_token("alice"))
        await http.post(url, headers=headers, json=CALL)  # warm up pools and caches
        before = open_files(gateway.process.pid)
        for i in range(1000):
            response = await http.post(url, headers=headers, json={**CALL, "id": 100 + i})
            assert "its stream" in response.text
    time.sleep(0.5)
    after = open_files(gateway.process.pid)
    assert after <= before + 5, (before, after)


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose listener never accepts and whose queue is full: the kernel drops every
    further connection attempt, so a connect to it hangs (a host that is down or behind a
    firewall that drops packets)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    time.sleep(0.2)
    yield port
    for each in [*fillers, listener]:
        each.close()


async def test_an_upstream_that_takes_no_connection_fails_the_call_at_the_connect_timeout(
    alice, gateway, unaccepting_port
):
    add_connection("silent", f"http://127.0.0.1:{unaccepting_port}/mcp")
    url = f"{gateway.url}/mcp/silent"
    headers = {**MODERN_HEADERS, "Authorization": f"Bearer {issue_token('alice')}"}
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, headers=headers, json=MODERN_CALL)
    elapsed = time.monotonic() - started
    # The test gateway gives a connect 2 s (GATEWAY_UPSTREAM_CONNECT_TIMEOUT), and an
    # answer 5 s: the call ends at the first, not at the second.
    error = response.json()["error"]
    assert error["code"] == -32011, error
    assert "silent did not answer within 2 s (no connection)" in error["message"]
    assert elapsed < 9
    outcome = await asyncio.to_thread(
        lambda: AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME).latest("seq")
    )
    assert outcome.outcome == "upstream_error"
    assert "no connection" in outcome.result["error"]["message"]
