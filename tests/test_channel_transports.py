"""Agents on the legacy HTTP+SSE transport and on WebSocket get the same gateway: the
same authentication, policy, approvals, audit and masking as Streamable HTTP."""

import asyncio
import json
import time

import pytest
import websockets
from mcp import Client
from mcp.client.sse import sse_client

from approvals.models import Approval
from audit.models import AuditRecord, Kind
from tests.conftest import add_connection, issue_token
from tests.test_held_calls import bob, decide_when_pending, policy  # noqa: F401

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("masking_defaults")]


@pytest.fixture
def demo(alice, gateway, shared_upstream) -> tuple[str, str]:
    add_connection("demo", shared_upstream.url)
    return gateway.url, issue_token("alice", "--run", "channels")


def outcomes(target: str, count: int) -> list[AuditRecord]:
    for _ in range(100):
        found = list(AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, target=target))
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return list(AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, target=target))


async def test_legacy_sse_client(demo):
    base, token = demo
    transport = sse_client(f"{base}/mcp/demo/sse", headers={"Authorization": f"Bearer {token}"})
    async with Client(transport, mode="legacy") as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        result = await client.call_tool("customer", {"customer_id": 1})
    assert "add" in tools
    assert result.structured_content["name"] == "Ada Lovelace"
    assert result.structured_content["email"] == "[EMAIL]"
    assert outcomes("customer", 1)[0].era == "legacy"


async def test_sse_stream_needs_a_token(demo):
    import httpx

    base, _token = demo
    response = httpx.get(f"{base}/mcp/demo/sse")
    assert response.status_code == 401


class WebSocketAgent:
    def __init__(self, socket) -> None:  # type: ignore[no-untyped-def]
        self.socket = socket
        self.next_id = 0

    async def request(self, method: str, params: dict | None = None) -> dict:
        self.next_id += 1
        message = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params or {}}
        await self.socket.send(json.dumps(message))
        while True:
            answer = json.loads(await asyncio.wait_for(self.socket.recv(), 30))
            if answer.get("id") == self.next_id and "method" not in answer:
                return answer

    async def notify(self, method: str) -> None:
        await self.socket.send(json.dumps({"jsonrpc": "2.0", "method": method}))


async def open_agent(base: str, slug: str, token: str):  # type: ignore[no-untyped-def]
    socket = await websockets.connect(
        f"{base.replace('http', 'ws')}/ws/mcp/{slug}",
        subprotocols=["mcp"],
        additional_headers={"Authorization": f"Bearer {token}"},
    )
    agent = WebSocketAgent(socket)
    init = await agent.request(
        "initialize",
        {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "ws", "version": "1"},
        },
    )
    assert init["result"]["serverInfo"]["name"] == "demo"
    await agent.notify("notifications/initialized")
    return agent


async def test_websocket_agent_uses_tools_with_masking_and_audit(demo):
    base, token = demo
    agent = await open_agent(base, "demo", token)
    try:
        listed = await agent.request("tools/list")
        assert "add" in {t["name"] for t in listed["result"]["tools"]}
        added = await agent.request("tools/call", {"name": "add", "arguments": {"a": 40, "b": 2}})
        assert added["result"]["structuredContent"] == {"result": 42}
        customer = await agent.request(
            "tools/call", {"name": "customer", "arguments": {"customer_id": 1}}
        )
        assert customer["result"]["structuredContent"][
            "email"
        ] == "[EMAIL]" or "ada" not in json.dumps(customer)
    finally:
        await agent.socket.close()
    (outcome,) = outcomes("add", 1)
    assert outcome.outcome == "ok" and outcome.run_label == "channels" and outcome.session


async def test_websocket_needs_the_mcp_subprotocol_and_a_token(demo):
    base, _token = demo
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await websockets.connect(f"{base.replace('http', 'ws')}/ws/mcp/demo")
    socket = await websockets.connect(
        f"{base.replace('http', 'ws')}/ws/mcp/demo", subprotocols=["mcp"]
    )
    await socket.send(
        json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "x", "version": "1"},
                },
            }
        )
    )
    answer = json.loads(await asyncio.wait_for(socket.recv(), 10))
    await socket.close()
    assert "Unauthorized" in answer["error"]["message"]


@pytest.mark.parametrize("transport", ["sse", "websocket"])
async def test_held_call_behaves_the_same_on_every_transport(demo, bob, transport):  # noqa: F811
    base, token = demo
    policy("demo", ("add", "hold"))
    approver = asyncio.create_task(asyncio.to_thread(decide_when_pending, bob, True))
    if transport == "sse":
        client_cm = Client(
            sse_client(f"{base}/mcp/demo/sse", headers={"Authorization": f"Bearer {token}"}),
            mode="legacy",
        )
        async with client_cm as client:
            result = await client.call_tool("add", {"a": 1, "b": 2})
        value = result.structured_content["result"]
    else:
        agent = await open_agent(base, "demo", token)
        try:
            answer = await agent.request(
                "tools/call", {"name": "add", "arguments": {"a": 1, "b": 2}}
            )
        finally:
            await agent.socket.close()
        value = answer["result"]["structuredContent"]["result"]
    (approval_id,) = await approver
    assert value == 3
    (outcome,) = outcomes("add", 1)
    assert (outcome.outcome, outcome.approval_id) == ("ok", approval_id)
    assert Approval.objects.get(pk=approval_id).status == "approved"
