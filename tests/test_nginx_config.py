"""The load balancer of docker-compose.yml, for real: the committed deploy/nginx.conf runs
(Debian's nginx) in front of three gateway processes on loopback, and real clients go
through it: SDK sessions in both eras, a legacy HTTP+SSE session, a WebSocket.

Only what ties the file to Docker changes: the replicas (`server web:8000 resolve`)
become the three loopback ports, the listen address a free loopback port, and the access
log a file that also names each request's session and JSON-RPC method, so the test can
see where nginx sent what. Skipped where /usr/sbin/nginx is missing
(tests/support/install_system_tools.sh installs it).
"""

import asyncio
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.client.sse import sse_client

from tests.conftest import ROOT, Server, add_connection, free_port, issue_token, wait_for_port
from tests.support.clients import mcp_client
from tests.test_approvals_helpers import (
    end_stray_connections,  # noqa: F401 (fixture)
    fast_passwords,  # noqa: F401 (autouse)
)
from tests.test_scaleout import PROCESSES, Fleet, fleet  # noqa: F401 (fixture)

NGINX = Path("/usr/sbin/nginx")
CONFIG = ROOT / "deploy" / "nginx.conf"

pytestmark = [
    pytest.mark.skipif(not NGINX.exists(), reason="needs nginx (/usr/sbin/nginx)"),
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]

# One line per request: upstream, method, path, status, session, JSON-RPC method (in
# Mcp-Method, sent in the 2026-07-28 era) and the caller (X-Caller, set by the test to the
# token's public part).
TEST_LOG_FORMAT = (
    "log_format routing '$upstream_addr|$request_method|$uri|$status|"
    "$http_mcp_session_id|$http_mcp_method|$http_x_caller';"
)


def render(config: str, ports: list[int], listen: int, directory: Path) -> str:
    """The committed config, pointed at loopback processes and files of this test."""
    replicas = "\n".join(f"        server 127.0.0.1:{port};" for port in ports)
    rendered, count = re.subn(r"^\s*server web:8000 resolve;$", replicas, config, flags=re.M)
    assert count == 2, "both upstream blocks name the web replicas"
    rendered, count = re.subn(r"listen 8000;", f"listen 127.0.0.1:{listen};", rendered)
    assert count == 1
    temp_paths = "".join(
        f"    {name}_temp_path {directory / name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    rendered, count = re.subn(
        r"^\s*access_log /dev/stdout gateway;$",
        f"    {TEST_LOG_FORMAT}\n    access_log {directory / 'access.log'} routing;\n" + temp_paths,
        rendered,
        flags=re.M,
    )
    assert count == 1
    return rendered


@dataclass
class Front:
    url: str
    log: Path
    upstreams: dict[str, int]  # "127.0.0.1:port" -> index of the gateway process

    def lines(self) -> list[dict[str, str]]:
        names = ("upstream", "method", "path", "status", "session", "rpc", "caller")
        rows = []
        for line in self.log.read_text().splitlines():
            values = [value if value != "-" else "" for value in line.split("|")]
            rows.append(dict(zip(names, values, strict=True)))
        return rows

    def settled(self, done: Callable[[list[dict[str, str]]], bool]) -> list[dict[str, str]]:
        """The access log once `done` holds for it: nginx logs a stream when it has closed."""
        deadline = time.monotonic() + 15
        rows = self.lines()
        while not done(rows) and time.monotonic() < deadline:
            time.sleep(0.05)
            rows = self.lines()
        return rows

    def process(self, row: dict[str, str]) -> int:
        return self.upstreams[row["upstream"]]

    def errors(self) -> str:
        """nginx's error log (why it skipped a process, say)."""
        path = self.log.with_name("error.log")
        return path.read_text() if path.exists() else ""


def run_nginx(directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(NGINX), "-p", str(directory), "-c", str(directory / "nginx.conf"), *args],
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def front(fleet: Fleet, tmp_path: Path) -> Iterator[Front]:  # noqa: F811
    directory = tmp_path / "nginx"
    directory.mkdir()
    port = free_port()
    (directory / "nginx.conf").write_text(render(CONFIG.read_text(), fleet.ports, port, directory))
    pid = f"pid {directory / 'nginx.pid'};"
    checked = run_nginx(directory, "-e", str(directory / "error.log"), "-t", "-g", pid)
    assert checked.returncode == 0, checked.stderr.decode()
    process = subprocess.Popen(
        [
            str(NGINX),
            "-p",
            str(directory),
            "-c",
            str(directory / "nginx.conf"),
            "-e",
            str(directory / "error.log"),
            "-g",
            f"daemon off; {pid}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
        yield Front(
            url=f"http://127.0.0.1:{port}",
            log=directory / "access.log",
            upstreams={f"127.0.0.1:{p}": index for index, p in enumerate(fleet.ports)},
        )
    finally:
        process.terminate()  # a fast shutdown: open streams are closed
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def ops(alice: Any, demo_upstream: Server) -> tuple[str, str]:
    add_connection("ops", demo_upstream.url)
    return issue_token("alice", "--run", "nginx-1"), issue_token("alice", "--run", "nginx-2")


def caller(token: str) -> dict[str, str]:
    """Authorization, and the token's public part for the test's access log."""
    return {"Authorization": f"Bearer {token}", "X-Caller": token.split("_")[1]}


async def test_sdk_sessions_in_both_eras_through_nginx(front: Front, ops: tuple[str, str]) -> None:
    token, _other = ops
    async with mcp_client(f"{front.url}/mcp/ops", token, "legacy") as client:
        legacy = [
            (await client.call_tool("add", {"a": n, "b": 10})).structured_content for n in range(4)
        ]
        # The standalone GET stream is open now; it must not hold the calls back.
        slow = await client.call_tool("slow", {"steps": 3})
    async with mcp_client(f"{front.url}/mcp/ops", token, "2026-07-28") as client:
        modern = [
            (await client.call_tool("add", {"a": n, "b": 20})).structured_content
            for n in range(2 * PROCESSES)
        ]
    assert legacy == [{"result": n + 10} for n in range(4)]
    assert slow.content[0].text == "done 3"
    assert modern == [{"result": n + 20} for n in range(2 * PROCESSES)]

    rows = await asyncio.to_thread(
        front.settled,
        lambda rows: {"GET", "DELETE"} <= {row["method"] for row in rows if row["session"]},
    )
    in_session = [row for row in rows if row["session"]]
    assert len({row["session"] for row in in_session}) == 1
    pinned = {front.process(row) for row in in_session}
    print(f"\nlegacy session: {len(in_session)} requests, all on process {pinned}")
    assert len(pinned) == 1
    assert {row["method"] for row in in_session} >= {"POST", "GET", "DELETE"}
    modern_calls = [row for row in rows if row["rpc"] == "tools/call" and not row["session"]]
    spread = {front.process(row) for row in modern_calls}
    print(f"2026-07-28 calls on processes {sorted(spread)}")
    assert len(modern_calls) == 2 * PROCESSES
    assert spread == set(range(PROCESSES))
    # The standalone GET stream ends when the client leaves: 499 for nginx.
    assert {row["status"] for row in rows if row["method"] != "GET"} <= {"200", "202"}
    assert {row["status"] for row in rows if row["method"] == "GET"} <= {"200", "499"}


async def test_legacy_sse_sessions_are_pinned_by_credentials(
    front: Front, ops: tuple[str, str]
) -> None:
    for token, base in zip(ops, (100, 200), strict=True):
        transport = sse_client(f"{front.url}/mcp/ops/sse", headers=caller(token))
        async with Client(transport, mode="legacy") as client:
            sums = [
                (await client.call_tool("add", {"a": n, "b": base})).structured_content
                for n in range(PROCESSES + 1)
            ]
        assert sums == [{"result": n + base} for n in range(PROCESSES + 1)]

    markers = [token.split("_")[1] for token in ops]
    rows = await asyncio.to_thread(
        front.settled,
        lambda rows: all(
            any(row["caller"] == marker and row["method"] == "GET" for row in rows)
            for marker in markers
        ),
    )
    for token in ops:
        marker = token.split("_")[1]
        channel = [row for row in rows if row["caller"] == marker]
        assert {row["path"] for row in channel} == {"/mcp/ops/sse", "/mcp/ops/messages"}
        assert len({front.process(row) for row in channel}) == 1, channel
        assert {row["status"] for row in channel if row["method"] == "POST"} == {"202"}
        assert {row["status"] for row in channel if row["method"] == "GET"} <= {"200", "499"}


async def test_websocket_and_console_through_nginx(front: Front, ops: tuple[str, str]) -> None:
    from tests.test_channel_transports import open_agent

    token, _other = ops
    agent = await open_agent(front.url, "ops", token)
    try:
        answer = await agent.request("tools/call", {"name": "add", "arguments": {"a": 2, "b": 2}})
    finally:
        await agent.socket.close()
    assert answer["result"]["structuredContent"] == {"result": 4}
    # Requests without a session go round robin. Each nginx worker keeps its own turn, and
    # one that saw a process fail skips it for a few seconds: ask until every process has
    # answered, for at most 15 s.
    reached: set[int] = set()
    statuses = []
    deadline = time.monotonic() + 15
    async with httpx.AsyncClient() as http:
        while reached != set(range(PROCESSES)) and time.monotonic() < deadline:
            statuses.append((await http.get(f"{front.url}/healthz")).status_code)
            rows = await asyncio.to_thread(front.lines)
            reached = {front.process(row) for row in rows if row["path"] == "/healthz"}
    assert set(statuses) == {200}
    assert reached == set(range(PROCESSES)), front.errors()
    assert ("/ws/mcp/ops", "101") in {(row["path"], row["status"]) for row in rows}
