"""What gateway processes keep in memory to admit calls, and how changes reach them.

A gateway process keeps tokens, connections, grants, policy and sessions between calls
(gateway/admission.py). Whatever changes them, and however, every process must stop using
the old value: the console's actions, a raw SQL statement typed by an operator, a test
flush. These tests change things from this (test) process while a real gateway process
serves calls that were just admitted with the old values.
"""

import asyncio
import time
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.db import connection as db

from approvals.actions import set_policy
from approvals.policy import PolicySpec, RuleSpec
from gateway import admission
from gateway.models import AgentToken, Connection, DownstreamSession
from tests.conftest import Server, add_connection, issue_token
from tests.test_proxy_sdk import raw_initialize

pytestmark = pytest.mark.django_db(transaction=True)

# A change reaches every process in milliseconds; this is only how long a test waits
# before it calls the change lost.
PROPAGATION_LIMIT = 10.0


def modern_call(tool: str, arguments: dict[str, Any], id: int = 1) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {
            "name": tool,
            "arguments": arguments,
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
            },
        },
    }


def modern_headers(token: str, tool: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }


async def add(http: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    return await http.post(
        url, headers=modern_headers(token, "add"), json=modern_call("add", {"a": 2, "b": 3})
    )


async def until_answer(
    http: httpx.AsyncClient, url: str, token: str, accept: Any
) -> tuple[httpx.Response, float]:
    """Call until the answer satisfies accept; returns it and how long the change took."""
    started = time.monotonic()
    while True:
        response = await add(http, url, token)
        if accept(response):
            return response, time.monotonic() - started
        if time.monotonic() - started > PROPAGATION_LIMIT:
            raise AssertionError(f"the change did not reach the gateway: {response.text}")
        await asyncio.sleep(0.005)


def answered(response: httpx.Response) -> bool:
    return response.status_code == 200 and "result" in response.json()


@pytest.fixture
def demo(alice, gateway: Server, shared_upstream: Server) -> dict[str, str]:
    add_connection("demo", shared_upstream.url)
    return {"url": f"{gateway.url}/mcp/demo", "token": issue_token("alice")}


async def warm(http: httpx.AsyncClient, url: str, token: str) -> None:
    for _ in range(3):
        response = await add(http, url, token)
        assert answered(response), response.text


async def test_a_revoked_token_is_refused_by_a_process_that_just_admitted_it(demo):
    async with httpx.AsyncClient(timeout=30) as http:
        await warm(http, demo["url"], demo["token"])
        from gateway.actions import revoke_token

        token = await sync_to_async(AgentToken.objects.get)()
        await sync_to_async(revoke_token)(token)
        response, _ = await until_answer(
            http, demo["url"], demo["token"], lambda r: r.status_code != 200
        )
        assert response.status_code == 401
        # And it stays refused.
        for _ in range(5):
            assert (await add(http, demo["url"], demo["token"])).status_code == 401


async def test_a_token_that_expires_is_refused_once_it_has_expired(demo, gateway):
    """Expiry changes no row: the kept identity must not outlive the token."""
    token = issue_token("alice", "--ttl", "3")
    async with httpx.AsyncClient(timeout=30) as http:
        await warm(http, demo["url"], token)
        expires_at = await sync_to_async(
            lambda: AgentToken.objects.get(digest=AgentToken.digest_of(token)).expires_at
        )()
        while db_now() < expires_at:
            await asyncio.sleep(0.1)
        assert (await add(http, demo["url"], token)).status_code == 401


async def test_changes_made_with_plain_sql_reach_the_gateway(demo):
    """An operator's UPDATE in psql counts as much as the console's buttons."""
    async with httpx.AsyncClient(timeout=30) as http:
        await warm(http, demo["url"], demo["token"])

        def deactivate() -> None:
            with db.cursor() as cursor:
                cursor.execute("UPDATE auth_user SET is_active = false WHERE username = 'alice'")

        await sync_to_async(deactivate)()
        response, _ = await until_answer(
            http, demo["url"], demo["token"], lambda r: r.status_code != 200
        )
        assert response.status_code == 401


async def test_a_policy_change_applies_to_the_next_calls(demo):
    async with httpx.AsyncClient(timeout=30) as http:
        await warm(http, demo["url"], demo["token"])

        def deny_add() -> None:
            spec = PolicySpec(default_action="allow", rules=(RuleSpec("add", "deny"),))
            set_policy(Connection.objects.get(slug="demo"), spec, actor=None)

        await sync_to_async(deny_add)()
        response, _ = await until_answer(
            http, demo["url"], demo["token"], lambda r: "error" in r.json()
        )
        assert "Denied by gateway policy" in response.json()["error"]["message"]


async def test_disabling_a_connection_applies_to_the_next_calls(demo):
    async with httpx.AsyncClient(timeout=30) as http:
        await warm(http, demo["url"], demo["token"])
        await sync_to_async(Connection.objects.filter(slug="demo").update)(enabled=False)
        response, _ = await until_answer(
            http, demo["url"], demo["token"], lambda r: r.status_code != 200
        )
        assert response.status_code == 503


async def test_a_session_ended_elsewhere_is_gone_for_every_process(demo):
    async with httpx.AsyncClient(timeout=30) as http:
        headers = await raw_initialize(http, demo["url"], demo["token"])
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call"}
        call["params"] = {"name": "add", "arguments": {"a": 1, "b": 1}}
        for _ in range(3):
            answer = await http.post(demo["url"], headers=headers, json=call)
            assert answer.status_code == 200 and '"result"' in answer.text, answer.text
        # Another process (here: this one) ends the session in the shared database.
        await sync_to_async(DownstreamSession.objects.update)(ended_at=db_now())
        started = time.monotonic()
        while (await http.post(demo["url"], headers=headers, json=call)).status_code != 404:
            assert time.monotonic() - started < PROPAGATION_LIMIT, "session still served"
            await asyncio.sleep(0.005)


def db_now() -> Any:
    from django.utils.timezone import now

    return now()


def test_changes_through_this_process_drop_kept_values_at_once(alice):
    """Without notifications (SQLite), saves through the ORM still drop what they touch."""
    admission.IDENTITIES.put("some digest", "identity", time.monotonic())
    admission.POLICIES.put((1, alice.pk), "policy", time.monotonic())
    admission.CONNECTIONS.put("demo", "connection", time.monotonic())
    user = get_user_model().objects.get(pk=alice.pk)
    user.first_name = "Ada"
    user.save()
    assert admission.IDENTITIES.get("some digest", 60) != "identity"
    # A user's change does not touch what is kept of connections.
    assert admission.CONNECTIONS.get("demo", 60) == "connection"
    user.groups.create(name="ops")
    assert admission.POLICIES.get((1, alice.pk), 60) != "policy"


async def test_a_process_that_hears_no_changes_keeps_no_access_values_and_catalogs_briefly():
    """Until its listener hears notifications (at start, or when it lost them), a process
    on Postgres reads tokens, grants and policy for every call; tool catalogs and masking
    rules it keeps GATEWAY_ADMISSION_CACHE_SECONDS, as on SQLite."""
    from django.conf import settings

    seconds = settings.GATEWAY["ADMISSION_CACHE_SECONDS"]
    try:
        # The first look starts this loop's listener, which is not listening yet.
        identities = admission._max_age(admission.IDENTITIES)
        catalogs = admission._max_age(admission.CATALOGS)
        rules = admission.keep_seconds()
    finally:
        await admission.stop()
    assert catalogs == rules == seconds > 0
    assert identities == (0.0 if db.vendor == "postgresql" else seconds)
