"""What the audit trail records: every call with one outcome, and console actions."""

import time

import httpx
import pytest
from django.core.management import call_command
from django.test import Client

from audit.models import AuditRecord, Kind
from gateway.actions import revoke_token
from gateway.models import AgentToken
from tests.conftest import add_connection, free_port, issue_token
from tests.support.clients import mcp_client
from tests.test_proxy_sdk import raw_initialize

pytestmark = pytest.mark.django_db(transaction=True)


def calls(**filters) -> list[AuditRecord]:
    return list(AuditRecord.objects.filter(**filters).order_by("seq"))


def outcomes(count: int, **filters) -> list[AuditRecord]:
    """Outcome records are written just after the agent got its answer: wait for them."""
    for _ in range(100):
        found = calls(kind=Kind.CALL_OUTCOME, **filters)
        if len(found) >= count:
            return found
        time.sleep(0.05)
    return calls(kind=Kind.CALL_OUTCOME, **filters)


@pytest.fixture
def demo(alice, gateway, shared_upstream) -> tuple[str, str]:
    add_connection("demo", shared_upstream.url, "X-Upstream-Key: upstream-secret-1")
    return f"{gateway.url}/mcp/demo", issue_token("alice", "--run", "nightly-7")


async def test_each_call_is_recorded_before_and_after(demo):
    url, token = demo
    async with mcp_client(url, token, "legacy") as client:
        await client.call_tool("add", {"a": 20, "b": 22})
        await client.call_tool("boom", {"msg": "bad"})

    requests = calls(kind=Kind.CALL_REQUEST, method="tools/call")
    recorded = outcomes(2, method="tools/call")
    assert [r.target for r in requests] == ["add", "boom"]
    assert requests[0].arguments == {"a": 20, "b": 22}
    assert requests[0].username == "alice"
    assert requests[0].run_label == "nightly-7"
    assert requests[0].token.startswith("mgw_")
    assert requests[0].connection == "demo"
    assert requests[0].session
    by_call = {o.call_id: o for o in recorded}
    added = by_call[requests[0].call_id]
    assert added.outcome == "ok"
    assert added.result["structuredContent"] == {"result": 42}
    assert added.seq > requests[0].seq
    assert added.latency_ms > 0
    assert by_call[requests[1].call_id].outcome == "error"
    # initialize and tools/list are recorded too.
    assert calls(kind=Kind.CALL_REQUEST, method="initialize")
    # Nothing secret is recorded.
    everything = repr(list(AuditRecord.objects.values()))
    assert token not in everything and "upstream-secret-1" not in everything


async def test_modern_calls_are_recorded_too(demo):
    url, token = demo
    async with mcp_client(url, token, "2026-07-28") as client:
        await client.call_tool("add", {"a": 1, "b": 2})
    outcome = outcomes(1, method="tools/call")[0]
    assert (outcome.era, outcome.outcome, outcome.session) == ("modern", "ok", "")


def test_unreachable_upstream_is_recorded_as_upstream_error(alice, gateway):
    add_connection("down", f"http://127.0.0.1:{free_port()}/mcp")
    headers = {
        "Authorization": f"Bearer {issue_token('alice')}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    response = httpx.post(
        f"{gateway.url}/mcp/down",
        headers=headers,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        },
    )
    assert "error" in response.json()
    (outcome,) = outcomes(1)
    assert outcome.outcome == "upstream_error"
    assert "unreachable" in outcome.result["error"]["message"]


async def test_client_disconnect_is_recorded(demo):
    url, token = demo
    async with httpx.AsyncClient(timeout=10) as http:
        session_headers = await raw_initialize(http, url, token)
        with pytest.raises(httpx.ReadTimeout):
            await http.post(
                url,
                headers=session_headers,
                json={
                    "jsonrpc": "2.0",
                    "id": 5,
                    "method": "tools/call",
                    "params": {"name": "sleep", "arguments": {"seconds": 20}},
                },
                timeout=1.0,
            )
    (outcome,) = outcomes(1, method="tools/call")
    assert outcome.outcome == "client_disconnected"


def test_console_actions_are_events(alice):
    client = Client()
    client.post("/login/", {"username": "alice", "password": "wrong"})
    client.post("/login/", {"username": "alice", "password": "pw-alice-1"})
    client.post("/logout/")
    add_connection("crm", "http://127.0.0.1:9000/mcp", "Authorization: Bearer canary-credential-9")
    add_connection("crm", "http://127.0.0.1:9001/mcp")
    issue_token("alice", "--run", "r1")
    revoke_token(AgentToken.objects.get())

    events = [(r.event, r.username) for r in calls(kind=Kind.EVENT)]
    assert events == [
        ("auth.login_failed", ""),
        ("auth.login", "alice"),
        ("auth.logout", "alice"),
        ("connection.created", ""),
        ("connection.updated", ""),
        ("token.issued", ""),
        ("token.revoked", ""),
    ]
    failed = calls(event="auth.login_failed")[0]
    assert failed.details == {"username": "alice"}
    updated = calls(event="connection.updated")[0]
    assert updated.details["before"]["url"] == "http://127.0.0.1:9000/mcp"
    assert updated.details["after"]["credential_headers"] == ["Authorization"]
    everything = repr(list(AuditRecord.objects.values()))
    assert "canary-credential-9" not in everything and "wrong" not in everything


def test_chain_of_recorded_calls_verifies(alice, capsys):
    add_connection("crm", "http://127.0.0.1:9000/mcp")
    issue_token("alice")
    call_command("audit_verify")
    assert "OK: 2 records verified" in capsys.readouterr().out
