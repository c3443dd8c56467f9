"""Policy and human approval on the data path, with a real upstream and the SDK client."""

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from io import StringIO

import pytest
from django.contrib.auth.models import Group, User
from django.core.management import call_command
from django.test import Client
from mcp.shared.exceptions import MCPError

from approvals.actions import set_policy
from approvals.models import Approval
from approvals.policy import PolicySpec, RuleSpec
from audit.models import AuditRecord, Kind
from gateway.models import Connection
from tests.conftest import (
    FIXTURES,
    Server,
    add_connection,
    issue_token,
    start_demo,
    start_gateway,
    stop,
    wait_for_port,
)
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def bob(alice) -> User:
    user = User.objects.create_user("bob", password="pw-bob-1")
    user.groups.add(Group.objects.get_or_create(name="approver")[0])
    return user


def policy(slug: str, *rules: tuple[str, str], default: str = "allow") -> None:
    spec = PolicySpec(
        default_action=default, rules=tuple(RuleSpec(tool, action) for tool, action in rules)
    )
    set_policy(Connection.objects.get(slug=slug), spec, actor=None)


def decide_when_pending(user: User, approve: bool, reason: str = "", count: int = 1) -> list[int]:
    """Acts as an approver at the queue: waits for pending requests, decides each."""
    client = Client()
    client.force_login(user)
    decided: list[int] = []
    deadline = time.monotonic() + 20
    while len(decided) < count and time.monotonic() < deadline:
        for approval in Approval.objects.filter(status="pending").exclude(pk__in=decided):
            verb = "approve" if approve else "deny"
            response = client.post(
                f"/api/approvals/{approval.pk}/{verb}",
                {"reason": reason},
                content_type="application/json",
            )
            assert response.status_code == 200, response.content
            decided.append(approval.pk)
        time.sleep(0.05)
    return decided


def outcome_of(target: str) -> AuditRecord:
    for _ in range(100):
        record = (
            AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, target=target)
            .order_by("-seq")
            .first()
        )
        if record is not None:
            return record
        time.sleep(0.05)
    raise AssertionError(f"no outcome for {target}")


@pytest.fixture
def ops(alice, bob, gateway, shared_upstream) -> tuple[str, str]:
    add_connection("ops", shared_upstream.url)
    policy("ops", ("add", "hold"), ("boom", "deny"))
    return f"{gateway.url}/mcp/ops", issue_token("alice", "--run", "held-run")


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_held_call_waits_until_approved(ops, bob, mode):
    url, token = ops
    async with mcp_client(url, token, mode) as client:
        approver = asyncio.create_task(asyncio.to_thread(decide_when_pending, bob, True))
        started = time.monotonic()
        result = await client.call_tool("add", {"a": 2, "b": 3})
        waited = time.monotonic() - started
        (approval_id,) = await approver
    assert result.structured_content == {"result": 5}
    assert waited < 15
    approval = Approval.objects.get(pk=approval_id)
    assert (approval.status, approval.decided_by, approval.requester) == ("approved", bob, "alice")
    assert approval.arguments == {"a": 2, "b": 3}
    outcome = outcome_of("add")
    assert (outcome.outcome, outcome.approval_id) == ("ok", approval_id)


async def test_denied_call_gets_the_approvers_reason(ops, bob):
    url, token = ops
    async with mcp_client(url, token, "legacy") as client:
        approver = asyncio.create_task(
            asyncio.to_thread(decide_when_pending, bob, False, "not during the freeze")
        )
        with pytest.raises(MCPError, match="Denied by bob: not during the freeze"):
            await client.call_tool("add", {"a": 1, "b": 1})
        await approver
    assert outcome_of("add").outcome == "denied"


async def test_denied_tools_are_hidden_and_refused(ops):
    url, token = ops
    async with mcp_client(url, token, "2026-07-28") as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert "boom" not in tools and "add" in tools
        with pytest.raises(MCPError, match="Denied by gateway policy"):
            await client.call_tool("boom", {"msg": "x"})
    assert outcome_of("boom").outcome == "denied"


def test_self_approval_is_refused(ops, bob):
    url, token = ops
    alice = User.objects.get(username="alice")

    async def held_call() -> str:
        async with mcp_client(url, token, "legacy") as client:
            try:
                await client.call_tool("add", {"a": 5, "b": 5})
            except MCPError as exc:
                return str(exc)
        return "went through"

    results: list[str] = []
    caller = threading.Thread(target=lambda: results.append(asyncio.run(held_call())))
    caller.start()
    approval = wait_for_pending()
    client = Client()
    client.force_login(alice)
    response = client.post(
        f"/api/approvals/{approval}/approve", {}, content_type="application/json"
    )
    assert response.status_code in (403, 409)
    assert "yourself" in response.json()["detail"]
    assert Approval.objects.get(pk=approval).status == "pending"
    # Someone else may decide.
    decide_when_pending(bob, False, "asked to approve own call")
    caller.join(20)
    assert results and "asked to approve own call" in results[0]


def wait_for_pending() -> int:
    for _ in range(200):
        approval = Approval.objects.filter(status="pending").first()
        if approval:
            return approval.pk
        time.sleep(0.05)
    raise AssertionError("no approval request appeared")


@pytest.fixture(scope="module")
def quick_gateway(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Server]:
    """A gateway whose held calls wait only 2 s."""
    server = start_gateway(tmp_path_factory.mktemp("quick"), APPROVALS_HOLD_SECONDS="2")
    yield server
    stop(server.process)


async def test_timed_out_call_is_retried_identically_once_approved(
    alice, bob, quick_gateway, shared_upstream
):
    add_connection("ops", shared_upstream.url)
    policy("ops", ("add", "hold"))
    url, token = f"{quick_gateway.url}/mcp/ops", issue_token("alice")
    async with mcp_client(url, token, "legacy") as client:
        pending = await client.call_tool("add", {"a": 20, "b": 22})
        assert pending.is_error is True
        assert "needs a person's approval" in pending.content[0].text
        outcome = outcome_of("add")
        assert outcome.outcome == "timeout"
        await asyncio.to_thread(decide_when_pending, bob, True)

        retried = await client.call_tool("add", {"a": 20, "b": 22})
        assert retried.structured_content == {"result": 42}
        # The approval allowed one call: a second identical call is held again,
        # and so is a call with other arguments.
        again = await client.call_tool("add", {"a": 20, "b": 22})
        changed = await client.call_tool("add", {"a": 20, "b": 23})
    assert again.is_error is True and changed.is_error is True
    assert Approval.objects.filter(status="pending").count() == 2


async def test_destructive_tools_are_held_unless_a_rule_says_otherwise(
    alice, quick_gateway, shared_upstream
):
    add_connection("ops", shared_upstream.url)
    url, token = f"{quick_gateway.url}/mcp/ops", issue_token("alice")
    async with mcp_client(url, token, "legacy") as client:
        await client.list_tools()  # the gateway learns the tools' annotations
        held = await client.call_tool("delete_record", {"record_id": 7})
        assert held.is_error is True
        policy("ops", ("delete_*", "allow"))
        # The gateway keeps the policy until it hears of the change on its change channel.
        await asyncio.sleep(0.5)
        allowed = await client.call_tool("delete_record", {"record_id": 7})
    assert allowed.content[0].text == "deleted 7"


def start_variant(port: int, variant: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, str(FIXTURES / "demo_server.py"), "--port", str(port)],
        env={**os.environ, "DEMO_VARIANT": variant},
    )
    wait_for_port(port, process)
    return process


async def test_changed_or_new_tools_are_hidden_until_accepted(alice, gateway):
    upstream = start_demo()
    try:
        add_connection("pinned", upstream.url)
        url, token = f"{gateway.url}/mcp/pinned", issue_token("alice")
        async with mcp_client(url, token, "legacy") as client:
            await client.list_tools()
        call_command("approve_tools", "--connection", "pinned", "--yes", stdout=StringIO())

        stop(upstream.process)
        upstream.process = start_variant(upstream.port, "changed")
        # The gateway keeps the catalog until it hears of a change on its change channel.
        time.sleep(0.5)
        async with mcp_client(url, token, "legacy") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            assert "add" not in tools and "exfiltrate" not in tools and "weather" in tools
            with pytest.raises(MCPError, match="changed upstream since it was approved"):
                await client.call_tool("add", {"a": 1, "b": 1})
            with pytest.raises(MCPError, match="not approved"):
                await client.call_tool("exfiltrate", {"path": "/etc/passwd"})

        shown = StringIO()
        call_command("approve_tools", "--connection", "pinned", "--tool", "add", stdout=shown)
        assert "attacker.example" in shown.getvalue()  # the diff shows what changed
        # An admin reviews the change in the console and accepts it.
        admin = Client()
        admin.force_login(User.objects.get(username="alice"))
        page = admin.get("/connections/pinned/tools/").content.decode()
        assert "changed upstream" in page and "attacker.example" in page
        accepted = admin.post("/connections/pinned/tools/approve", {"tool": "add"})
        assert accepted.status_code == 302
        time.sleep(0.5)
        async with mcp_client(url, token, "legacy") as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("add", {"a": 1, "b": 1})
        assert "add" in tools and "exfiltrate" not in tools
        assert result.structured_content == {"result": 2}
        assert AuditRecord.objects.filter(event="tools.approved").count() == 2
    finally:
        stop(upstream.process)
