"""Scale-out with real servers: three gateway processes (daphne) share Postgres and Redis
behind a round-robin reverse proxy (`tests/support/roundrobin.py`) that sends every new
HTTP request to the next process.

- A legacy-era session (gateway-minted Mcp-Session-Id, kept in Postgres) works whichever
  process each of its requests lands on; so does the stateless 2026-07-28 era.
- A held call waits on one process while the approval is decided on another; the call
  completes with the upstream's result and leaves exactly one request and one outcome
  record.
- The legacy HTTP+SSE transport keeps its channel in the process that holds the stream:
  its message POSTs must reach that process. A balancer pins `/mcp/<slug>/sse` and
  `/mcp/<slug>/messages` by the Authorization header (both must carry the same one).
"""

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import mcp_types as types
import pytest
from django.conf import settings
from mcp import Client
from mcp.client.sse import sse_client

from approvals.models import Approval
from audit.models import AuditRecord, Kind
from gateway.models import DownstreamSession, digest
from tests.conftest import Server, add_connection, issue_token, start_gateway, stop
from tests.support.clients import mcp_client
from tests.support.roundrobin import Hit, RoundRobinProxy
from tests.test_approvals_helpers import (
    end_stray_connections,  # noqa: F401 (fixture)
    fast_passwords,  # noqa: F401 (autouse)
    make_user,
)
from tests.test_held_calls import policy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]

PROCESSES = 3


@dataclass
class Fleet:
    """Gateway processes sharing the test database and one Redis."""

    servers: list[Server]

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]


def start_fleet(tmp_path: Path, redis_url: str, count: int = PROCESSES, **env: str) -> Fleet:
    # A channel prefix of their own keeps other test runs on the same Redis away.
    common = {"REDIS_URL": redis_url, "CHANNEL_PREFIX": f"mcpgw-so-{uuid.uuid4().hex[:8]}", **env}
    servers = []
    try:
        for index in range(count):
            data_dir = tmp_path / f"gw{index}"
            data_dir.mkdir(parents=True, exist_ok=True)
            servers.append(start_gateway(data_dir, **common))
    except BaseException:
        for server in servers:
            stop(server.process)
        raise
    return Fleet(servers)


def stop_fleet(fleet: Fleet) -> None:
    for server in fleet.servers:
        stop(server.process)


@pytest.fixture(scope="module")
def fleet(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (the Redis channel layer)")
    started = start_fleet(tmp_path_factory.mktemp("fleet"), settings.REDIS_URL)
    yield started
    stop_fleet(started)


@pytest.fixture
def proxy(fleet: Fleet) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy(fleet.ports) as balancer:
        yield balancer


@dataclass
class Setup:
    upstream: Server
    token: str
    approver_token: str

    def upstream_requests(self, rpc_method: str) -> list[dict[str, Any]]:
        return [r for r in self.upstream.seen() if r["rpc_method"] == rpc_method]


@pytest.fixture
def setup(alice: Any, demo_upstream: Server) -> Setup:
    """Connection `ops` on the demo upstream; alice's agent calls it, bob approves."""
    make_user("bob", "approver")
    add_connection("ops", demo_upstream.url)
    return Setup(
        upstream=demo_upstream,
        token=issue_token("alice", "--run", "scale-out"),
        approver_token=issue_token("bob", "--scope", "api", "--run", "approver-api"),
    )


async def eventually(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


def records(kind: str, target: str) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(kind=kind, target=target).order_by("seq"))


def rpc_method(hit: Hit) -> str | None:
    try:
        return json.loads(hit.body).get("method")
    except (ValueError, AttributeError):
        return None


# -- (a) one session, three processes ------------------------------------------------


async def test_legacy_session_works_whichever_process_serves_each_request(
    proxy: RoundRobinProxy, setup: Setup
) -> None:
    async def on_elicit(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async with mcp_client(
        f"{proxy.url}/mcp/ops", setup.token, "legacy", elicitation_callback=on_elicit
    ) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        sums = [
            (await client.call_tool("add", {"a": n, "b": 100})).structured_content for n in range(6)
        ]
        weather = await client.call_tool("weather", {"city": "Oslo"})
        # The upstream asks the agent a question on the call's stream (held open by one
        # process); the agent's answer is a new POST, which lands on another process and
        # reaches the upstream in the same session.
        asked = await client.call_tool("ask_legacy", {})

    assert {"add", "weather", "ask_legacy"} <= tools
    assert sums == [{"result": n + 100} for n in range(6)]
    assert weather.structured_content == {"city": "Oslo", "temp_c": 21.5}
    assert asked.structured_content == {"result": "accept:name='Grace'"}
    (ask,) = [hit for hit in proxy.hits() if b'"ask_legacy"' in hit.body]
    (answer,) = [hit for hit in proxy.hits() if b'"Grace"' in hit.body]
    assert answer.backend != ask.backend
    assert answer.status == 202

    (initialize,) = [hit for hit in proxy.hits() if rpc_method(hit) == "initialize"]
    key = initialize.response_headers["mcp-session-id"]
    in_session = [hit for hit in proxy.hits() if hit.header("mcp-session-id") == key]
    per_process = proxy.counts(lambda hit: hit.header("mcp-session-id") == key)
    print(f"\nlegacy session: requests per process {dict(sorted(per_process.items()))}")
    assert set(per_process) == set(range(PROCESSES)), per_process
    calls = [hit for hit in in_session if rpc_method(hit) == "tools/call"]
    assert len({hit.backend for hit in calls}) == PROCESSES
    assert all(hit.status == 200 for hit in calls)

    # The client ends its session on leaving; whichever process gets the DELETE ends it
    # in Postgres and upstream.
    (delete,) = [hit for hit in in_session if hit.method == "DELETE"]
    assert delete.status == 200
    session = await asyncio.to_thread(DownstreamSession.objects.get, key_digest=digest(key))
    assert session.ended_at is not None
    assert any(r["method"] == "DELETE" for r in setup.upstream.seen())
    # Every call went upstream in the one upstream session the session was mapped to.
    upstream_sessions = {
        r["headers"].get("mcp-session-id") for r in setup.upstream_requests("tools/call")
    }
    assert upstream_sessions == {session.upstream_session_id}

    outcomes = await eventually(
        lambda: len(records(Kind.CALL_OUTCOME, "add")) == 6 and records(Kind.CALL_OUTCOME, "add"),
        "the calls' outcomes were not all recorded",
    )
    assert {(o.outcome, o.era, o.session) for o in outcomes} == {("ok", "legacy", digest(key))}


async def test_stateless_era_spreads_over_the_processes(
    proxy: RoundRobinProxy, setup: Setup
) -> None:
    async with mcp_client(f"{proxy.url}/mcp/ops", setup.token, "2026-07-28") as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        sums = [
            (await client.call_tool("add", {"a": n, "b": 1})).structured_content for n in range(6)
        ]

    assert "add" in tools
    assert sums == [{"result": n + 1} for n in range(6)]
    calls = [hit for hit in proxy.hits() if rpc_method(hit) == "tools/call"]
    assert {hit.header("mcp-session-id") for hit in calls} == {None}
    per_process = proxy.counts(lambda hit: rpc_method(hit) == "tools/call")
    print(f"\n2026-07-28 calls per process {dict(sorted(per_process.items()))}")
    assert set(per_process) == set(range(PROCESSES)), per_process
    outcomes = await eventually(
        lambda: len(records(Kind.CALL_OUTCOME, "add")) == 6 and records(Kind.CALL_OUTCOME, "add"),
        "the calls' outcomes were not all recorded",
    )
    assert {(o.outcome, o.era) for o in outcomes} == {("ok", "modern")}


# -- (b) a held call waits on one process, the decision comes through another -------------


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_call_held_on_one_process_completes_when_approved_on_another(
    fleet: Fleet, proxy: RoundRobinProxy, setup: Setup, mode: str
) -> None:
    policy("ops", ("add", "hold"))

    async def agent() -> Any:
        async with mcp_client(f"{proxy.url}/mcp/ops", setup.token, mode) as client:
            return await client.call_tool("add", {"a": 19, "b": 23})

    call = asyncio.create_task(agent())
    approval_id = await eventually(
        lambda: Approval.objects.filter(status="pending").values_list("pk", flat=True).first(),
        "no approval request appeared",
    )
    # The proxy knows which process holds the waiting POST.
    (waiting,) = [
        hit for hit in proxy.hits() if rpc_method(hit) == "tools/call" and not hit.finished
    ]
    holder = waiting.backend
    decider = fleet.servers[(holder + 1) % PROCESSES]
    assert not call.done()
    assert setup.upstream_requests("tools/call") == []

    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            f"{decider.url}/api/approvals/{approval_id}/approve",
            json={"reason": "decided elsewhere"},
            headers={"Authorization": f"Bearer {setup.approver_token}"},
        )
    assert response.status_code == 200, response.text
    result = await asyncio.wait_for(call, 30)

    assert result.structured_content == {"result": 42}
    # Answered on the POST that waited, by the process that held it.
    await eventually(lambda: waiting.finished, "the held POST did not end")
    assert waiting.status == 200
    assert len(setup.upstream_requests("tools/call")) == 1
    approval = await asyncio.to_thread(Approval.objects.get, pk=approval_id)
    assert (approval.status, approval.decider, approval.reason) == (
        "approved",
        "bob",
        "decided elsewhere",
    )
    assert approval.used_at is not None

    outcome = await eventually(
        lambda: records(Kind.CALL_OUTCOME, "add"), "the call's outcome was not recorded"
    )
    requests = records(Kind.CALL_REQUEST, "add")
    assert len(requests) == 1 and len(outcome) == 1
    (request,), (outcome,) = requests, outcome
    assert request.call_id == outcome.call_id
    assert (outcome.outcome, outcome.approval_id) == ("ok", approval_id)
    assert request.arguments == {"a": 19, "b": 23}
    era = "legacy" if mode == "legacy" else "modern"
    assert request.era == outcome.era == era


# -- (c) the legacy HTTP+SSE transport --------------------------------------------------


class SseStream:
    """A raw `GET /mcp/<slug>/sse` stream, read event by event."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()

    async def event(self) -> tuple[str, str]:
        name, data = "message", []
        async for line in self.lines:
            if line == "" and data:
                return name, "\n".join(data)
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        raise AssertionError("the stream ended")


@pytest.fixture
async def sse_on_first_process(fleet: Fleet, setup: Setup) -> AsyncIterator[tuple[SseStream, str]]:
    headers = {"Authorization": f"Bearer {setup.token}", "Accept": "text/event-stream"}
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as http,
        http.stream("GET", f"{fleet.servers[0].url}/mcp/ops/sse", headers=headers) as response,
    ):
        assert response.status_code == 200
        stream = SseStream(response)
        name, endpoint = await stream.event()
        assert name == "endpoint" and endpoint.startswith("/mcp/ops/messages?session_id=")
        yield stream, endpoint


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2024-11-05",
        "capabilities": {},
        "clientInfo": {"name": "raw-sse", "version": "1"},
    },
}


async def test_sse_messages_must_reach_the_process_holding_the_stream(
    fleet: Fleet, setup: Setup, sse_on_first_process: tuple[SseStream, str]
) -> None:
    """The channel is an object in the memory of the process that accepted the stream:
    another process does not know its session_id and answers 404."""
    stream, endpoint = sse_on_first_process
    headers = {"Authorization": f"Bearer {setup.token}"}
    async with httpx.AsyncClient(timeout=30) as http:
        elsewhere = [
            await http.post(f"{server.url}{endpoint}", json=INITIALIZE, headers=headers)
            for server in fleet.servers[1:]
        ]
        holder = await http.post(
            f"{fleet.servers[0].url}{endpoint}", json=INITIALIZE, headers=headers
        )

    for response in elsewhere:
        assert response.status_code == 404
        assert response.json()["error"]["message"] == "Unknown or closed SSE session"
    assert holder.status_code == 202
    name, data = await asyncio.wait_for(stream.event(), 30)
    answer = json.loads(data)
    assert name == "message" and answer["id"] == 1
    assert answer["result"]["serverInfo"]["name"] == "demo"
    # The misrouted POSTs were refused before anything was forwarded or recorded.
    assert len(setup.upstream_requests("initialize")) == 1


def pin_sse_by_credentials(hit: Hit) -> str | None:
    """The routing rule for the legacy transport: the stream and its message POSTs carry
    the same Authorization header (the gateway insists on it), so hashing on it sends
    them to one process. Everything else goes round robin."""
    parts = hit.path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "mcp" and parts[2] in ("sse", "messages"):
        return hit.header("authorization") or ""
    return None


async def test_sse_session_through_a_balancer_that_pins_it(fleet: Fleet, setup: Setup) -> None:
    second_token = issue_token("alice", "--run", "scale-out-2")
    with RoundRobinProxy(fleet.ports, route=pin_sse_by_credentials) as proxy:
        for token, base in ((setup.token, 100), (second_token, 200)):
            transport = sse_client(
                f"{proxy.url}/mcp/ops/sse", headers={"Authorization": f"Bearer {token}"}
            )
            async with Client(transport, mode="legacy") as client:
                tools = {tool.name for tool in (await client.list_tools()).tools}
                sums = [
                    (await client.call_tool("add", {"a": n, "b": base})).structured_content
                    for n in range(3)
                ]
            assert "add" in tools
            assert sums == [{"result": n + base} for n in range(3)]
        # Meanwhile the Streamable HTTP endpoint still goes round robin.
        async with mcp_client(f"{proxy.url}/mcp/ops", setup.token, "2026-07-28") as client:
            for n in range(PROCESSES):
                assert (await client.call_tool("add", {"a": n, "b": 0})).structured_content == {
                    "result": n
                }

        for token in (setup.token, second_token):
            pinned = proxy.counts(
                lambda hit, token=token: pin_sse_by_credentials(hit) == f"Bearer {token}"
            )
            assert len(pinned) == 1 and sum(pinned.values()) >= 5, pinned
        streamable = proxy.counts(lambda hit: hit.path == "/mcp/ops")
        assert set(streamable) == set(range(PROCESSES)), streamable

    outcomes = await eventually(
        lambda: len(records(Kind.CALL_OUTCOME, "add")) == 9 and records(Kind.CALL_OUTCOME, "add"),
        "the calls' outcomes were not all recorded",
    )
    assert {o.outcome for o in outcomes} == {"ok"}


async def test_websocket_through_the_balancer_stays_on_one_process(
    proxy: RoundRobinProxy, setup: Setup
) -> None:
    from tests.test_channel_transports import open_agent

    agent = await open_agent(proxy.url, "ops", setup.token)
    try:
        answers = [
            await agent.request("tools/call", {"name": "add", "arguments": {"a": n, "b": 7}})
            for n in range(3)
        ]
    finally:
        await agent.socket.close()
    assert [a["result"]["structuredContent"] for a in answers] == [
        {"result": n + 7} for n in range(3)
    ]
    (upgrade,) = proxy.hits()
    assert (upgrade.path, upgrade.status) == ("/ws/mcp/ops", 101)
