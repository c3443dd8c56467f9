"""A real SDK client uses a real upstream through the gateway, in every protocol era."""

import asyncio

import httpx
import mcp_types as types
import pytest

from tests.conftest import Server, add_connection, issue_token, start_demo, stop
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)

MODES = ["legacy", "2026-07-28", "auto"]


async def answer_name(context, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"name": "Ada"})


@pytest.fixture
def demo(alice, gateway: Server, demo_upstream: Server) -> tuple[str, str]:
    add_connection("demo", demo_upstream.url, "X-Upstream-Key: upstream-secret-1")
    return f"{gateway.url}/mcp/demo", issue_token("alice", "--run", "sdk-test")


@pytest.mark.parametrize("mode", MODES)
async def test_client_uses_upstream_tools_as_if_direct(demo, mode):
    url, token = demo
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with mcp_client(url, token, mode, elicitation_callback=answer_name) as client:
        expected_era = "2025-11-25" if mode == "legacy" else "2026-07-28"
        assert client.protocol_version == expected_era
        tools = await client.list_tools()
        assert {t.name for t in tools.tools} >= {"add", "weather", "boom", "slow", "ask"}

        added = await client.call_tool("add", {"a": 2, "b": 40})
        assert added.is_error is False
        assert added.structured_content == {"result": 42}
        assert added.content[0].text == "42"

        weather = await client.call_tool("weather", {"city": "Oslo"})
        assert weather.structured_content == {"city": "Oslo", "temp_c": 21.5}

        failed = await client.call_tool("boom", {"msg": "kaput"})
        assert failed.is_error is True
        assert "boom: kaput" in failed.content[0].text

        slow = await client.call_tool("slow", {"steps": 3}, progress_callback=on_progress)
        assert slow.structured_content == {"result": "done 3"}
        assert [p[0] for p in progress] == [1, 2, 3]
        assert progress[-1][2] == "step 3"

        # Asking the user: an elicitation request (legacy) or an input-required
        # result and retry (2026-07-28) both pass through the gateway.
        asked = await client.call_tool("ask", {})
        assert asked.structured_content == {"result": "hello Ada"}

        resource = await client.read_resource("demo://greeting")
        assert resource.contents[0].text == "hello from the demo resource"
        prompt = await client.get_prompt("review", {"code": "x = 1"})
        assert "x = 1" in prompt.messages[0].content.text


async def test_server_initiated_elicitation_reaches_the_legacy_client(demo):
    url, token = demo
    asked: list[str] = []

    async def on_elicit(context, params: types.ElicitRequestParams) -> types.ElicitResult:
        asked.append(params.message)
        return types.ElicitResult(action="accept", content={"name": "Grace"})

    async with mcp_client(url, token, "legacy", elicitation_callback=on_elicit) as client:
        result = await client.call_tool("ask_legacy", {})
    assert asked == ["What is your name?"]
    assert result.structured_content == {"result": "accept:name='Grace'"}


async def test_upstream_gets_connection_credentials_never_the_agent_token(demo, demo_upstream):
    url, token = demo
    for mode in MODES:
        async with mcp_client(url, token, mode) as client:
            await client.call_tool("add", {"a": 1, "b": 1})
    seen = demo_upstream.seen()
    assert seen
    for request in seen:
        assert request["headers"].get("x-upstream-key") == "upstream-secret-1"
        assert token not in str(request["headers"])
        assert "authorization" not in request["headers"]


async def test_a_cookie_an_upstream_sets_is_never_sent_back(alice, gateway):
    """One upstream client serves every agent of a connection: a cookie set in an answer to
    one agent must not travel with another agent's requests (nor with the same agent's)."""
    upstream = start_demo("--set-cookie")
    try:
        # By a name: aiohttp's cookie jars keep no cookie from a bare IP address.
        add_connection("cookies", upstream.url.replace("127.0.0.1", "localhost"))
        url = f"{gateway.url}/mcp/cookies"
        for agent in ("first-agent", "second-agent"):
            token = issue_token("alice", "--run", agent)
            for mode in MODES:
                async with mcp_client(url, token, mode) as client:
                    added = await client.call_tool("add", {"a": 1, "b": 2})
                    assert added.structured_content == {"result": 3}
        seen = upstream.seen()
        answered = httpx.get(upstream.url, headers={"accept": "application/json"})
    finally:
        stop(upstream.process)
    assert answered.headers["set-cookie"].startswith("upstream-session=answer-")
    assert len([r for r in seen if r["rpc_method"] == "tools/call"]) == 6
    assert [r["headers"]["cookie"] for r in seen if "cookie" in r["headers"]] == []


async def test_one_upstream_session_per_agent_session_not_per_call(demo, demo_upstream):
    url, token = demo
    async with mcp_client(url, token, "legacy") as client:
        for i in range(5):
            await client.call_tool("add", {"a": i, "b": 1})
    initializes = [r for r in demo_upstream.seen() if r["rpc_method"] == "initialize"]
    assert len(initializes) == 1


@pytest.fixture
def old(alice, gateway, legacy_upstream) -> tuple[str, str]:
    """A connection to an upstream that predates 2026-07-28."""
    add_connection("old", legacy_upstream.url)
    return f"{gateway.url}/mcp/old", issue_token("alice")


async def test_stateless_clients_share_one_session_with_a_legacy_upstream(old, legacy_upstream):
    url, token = old

    async def use() -> list[int]:
        async with mcp_client(url, token, "2026-07-28") as client:
            tools = await client.list_tools()
            assert "add" in {t.name for t in tools.tools}
            results = await asyncio.gather(
                *(client.call_tool("add", {"a": i, "b": i}) for i in range(5))
            )
            return [r.structured_content["result"] for r in results]

    first, second = await asyncio.gather(use(), use())
    assert first == second == [0, 2, 4, 6, 8]
    initializes = [r for r in legacy_upstream.seen() if r["rpc_method"] == "initialize"]
    assert len(initializes) == 1


async def test_auto_mode_sees_a_legacy_upstream_as_legacy(old):
    url, token = old
    async with mcp_client(url, token, "auto") as client:
        assert client.protocol_version == "2025-11-25"
        result = await client.call_tool("add", {"a": 1, "b": 2})
    assert result.structured_content == {"result": 3}


@pytest.fixture
def json_connection(alice, gateway, json_upstream) -> tuple[str, str]:
    add_connection("json", json_upstream.url)
    return f"{gateway.url}/mcp/json", issue_token("alice")


async def test_json_answering_upstream(json_connection):
    url, token = json_connection
    for mode in MODES:
        async with mcp_client(url, token, mode) as client:
            result = await client.call_tool("weather", {"city": "Rome"})
        assert result.structured_content == {"city": "Rome", "temp_c": 21.5}


async def test_closing_the_client_ends_both_sessions(demo, demo_upstream):
    url, token = demo
    async with mcp_client(url, token, "legacy") as client:
        await client.call_tool("add", {"a": 1, "b": 1})
    assert [r for r in demo_upstream.seen() if r["method"] == "DELETE"]


async def test_deleted_session_is_gone(demo, demo_upstream):
    url, token = demo
    async with httpx.AsyncClient(timeout=10) as http:
        session_headers = await raw_initialize(http, url, token)
        deleted = await http.delete(url, headers=session_headers)
        assert deleted.status_code == 200
        again = await http.post(url, headers=session_headers, json=LIST_TOOLS)
    assert again.status_code == 404
    assert [r for r in demo_upstream.seen() if r["method"] == "DELETE"]


@pytest.fixture
def flaky(alice, gateway):  # type: ignore[no-untyped-def]
    upstream = start_demo()
    add_connection("flaky", upstream.url)
    box = {"upstream": upstream, "url": f"{gateway.url}/mcp/flaky", "token": issue_token("alice")}
    yield box
    stop(box["upstream"].process)


async def test_upstream_restart_is_invisible_to_the_agent(flaky):
    async with mcp_client(flaky["url"], flaky["token"], "legacy") as client:
        await client.call_tool("add", {"a": 1, "b": 1})
        # The upstream restarts and forgets its sessions: its next answer is a 404.
        port = flaky["upstream"].port
        stop(flaky["upstream"].process)
        flaky["upstream"] = start_demo_on(port)
        result = await client.call_tool("add", {"a": 2, "b": 2})
    assert result.structured_content == {"result": 4}
    # The restarted upstream refused the old session, so the gateway opened a new one
    # and sent the call again.
    assert [r["rpc_method"] for r in flaky["upstream"].seen()][:4] == [
        "tools/call",
        "initialize",
        "notifications/initialized",
        "tools/call",
    ]


def start_demo_on(port: int) -> Server:
    import subprocess
    import sys

    from tests.conftest import FIXTURES, wait_for_port

    process = subprocess.Popen(
        [sys.executable, str(FIXTURES / "demo_server.py"), "--port", str(port)]
    )
    wait_for_port(port, process)
    return Server(f"http://127.0.0.1:{port}/mcp", port, process)


LIST_TOOLS = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


async def raw_initialize(http: httpx.AsyncClient, url: str, token: str) -> dict[str, str]:
    """A legacy-era handshake by hand; returns the headers for requests in the session."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    init = await http.post(
        url,
        headers=headers,
        json={
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        },
    )
    assert init.status_code == 200, init.text
    session_headers = {
        **headers,
        "Mcp-Session-Id": init.headers["mcp-session-id"],
        "MCP-Protocol-Version": "2025-11-25",
    }
    ack = await http.post(
        url, headers=session_headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"}
    )
    assert ack.status_code == 202
    return session_headers


async def test_disconnecting_agent_cancels_the_upstream_call(demo, demo_upstream):
    url, token = demo
    call = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "sleep", "arguments": {"seconds": 30}},
    }
    async with httpx.AsyncClient(timeout=10) as http:
        session_headers = await raw_initialize(http, url, token)
        with pytest.raises(httpx.ReadTimeout):
            await http.post(url, headers=session_headers, json=call, timeout=1.0)

    def cancelled() -> list[dict]:
        return [r for r in demo_upstream.seen() if r["rpc_method"] == "notifications/cancelled"]

    for _ in range(50):
        if cancelled():
            break
        await asyncio.sleep(0.1)
    assert cancelled()
