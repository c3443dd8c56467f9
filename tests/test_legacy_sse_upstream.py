"""Upstreams on the legacy HTTP+SSE transport, and era detection of stdio upstreams.

The SSE fixture (tests/fixtures/sse_faulty.py) misbehaves on purpose; the reference
server over SSE is exercised in test_server_everything.py.
"""

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from django.core.management import CommandError, call_command
from mcp.shared.exceptions import MCPError

from tests.conftest import FIXTURES, Server, free_port, issue_token, stop, wait_for_port
from tests.support.clients import mcp_client
from tests.test_admission_cache import modern_call, modern_headers

pytestmark = pytest.mark.django_db(transaction=True)

UPSTREAM_SECRET = "Bearer upstream-secret-for-sse"


def start_sse_fixture(endpoint: str = "same", *flags: str) -> tuple[Server, int]:
    port, catcher = free_port(), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(FIXTURES / "sse_faulty.py"),
            "--port",
            str(port),
            "--catcher-port",
            str(catcher),
            "--endpoint",
            endpoint,
            *flags,
        ]
    )
    wait_for_port(port, process)
    wait_for_port(catcher, process)
    return Server(f"http://127.0.0.1:{port}/sse", port, process), catcher


@pytest.fixture
def sse_upstream() -> Iterator[Server]:
    server, _catcher = start_sse_fixture()
    yield server
    stop(server.process)


def sse_connection(slug: str, url: str) -> None:
    call_command(
        "add_connection",
        "--slug",
        slug,
        "--transport",
        "sse",
        "--url",
        url,
        "--header",
        f"Authorization: {UPSTREAM_SECRET}",
    )


def errors(exc: BaseException) -> list[str]:
    """The messages of an exception and of everything in it (the client raises groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return [text for inner in exc.exceptions for text in errors(inner)]
    return [str(exc)]


def streams(server: Server, state: str) -> int:
    return sum(1 for entry in server.seen() if entry.get("stream") == state)


async def wait_until(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.1)
    return False


def test_add_connection_needs_a_url_for_sse(alice):
    with pytest.raises(CommandError, match="--url is required"):
        call_command("add_connection", "--slug", "nourl", "--transport", "sse")


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_calls_go_over_the_stream_with_the_connections_credentials(
    alice, gateway, sse_upstream, mode
):
    sse_connection("sse-work", sse_upstream.url)
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/sse-work", token, mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert tools == {"work", "drop", "silent", "note"}
        results = await asyncio.gather(*(client.call_tool("work", {}) for _ in range(5)))
        assert [r.content[0].text for r in results] == ["worked"] * 5
    requests = [entry for entry in sse_upstream.seen() if "method" in entry]
    assert {(r["method"], r["path"]) for r in requests} >= {("GET", "/sse"), ("POST", "/message")}
    # The upstream's credential goes on the GET and on every POST; the agent's token never.
    assert {r["authorization"] for r in requests} == {UPSTREAM_SECRET}


async def test_session_end_closes_the_upstream_stream(alice, gateway, sse_upstream):
    sse_connection("sse-end", sse_upstream.url)
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/sse-end", token, "legacy") as client:
        assert (await client.call_tool("work", {})).content[0].text == "worked"
        assert streams(sse_upstream, "opened") == 1
        assert streams(sse_upstream, "closed") == 0
    # The client's DELETE ends the gateway session and the upstream stream with it.
    assert await wait_until(lambda: streams(sse_upstream, "closed") == 1)


async def test_endpoint_on_another_origin_is_refused(alice, gateway):
    server, catcher = start_sse_fixture("cross-origin")
    try:
        sse_connection("sse-hostile", server.url)
        token = issue_token("alice")
        for mode in ("legacy", "2026-07-28"):
            with pytest.raises(BaseException) as raised:
                async with mcp_client(f"{gateway.url}/mcp/sse-hostile", token, mode) as client:
                    await client.call_tool("work", {})
            assert "another origin" in " ".join(errors(raised.value))
        seen = server.seen()
        assert any(entry.get("path") == "/sse" for entry in seen)
        # Nothing, least of all the credentials, was sent to the other origin.
        assert [entry for entry in seen if entry.get("port") == catcher] == []
        assert all(entry.get("method") != "POST" for entry in seen)
    finally:
        stop(server.process)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_dropped_stream_gives_a_clear_error_and_the_next_call_a_fresh_session(
    alice, gateway, sse_upstream, mode
):
    sse_connection("sse-drop", sse_upstream.url)
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/sse-drop", token, mode) as client:
        assert (await client.call_tool("work", {})).content[0].text == "worked"
        opened = streams(sse_upstream, "opened")
        with pytest.raises(MCPError, match="closed its event stream"):
            await client.call_tool("drop", {})
        assert (await client.call_tool("work", {})).content[0].text == "worked"
        # A fresh stream for the session; for a stateless agent the era is detected
        # again first (on a stream of its own), as after any failure.
        fresh = 1 if mode == "legacy" else 2
        assert streams(sse_upstream, "opened") == opened + fresh


async def test_silent_upstream_times_out_with_a_clear_error(alice, gateway, sse_upstream):
    # The test gateway waits 5 s for an upstream (GATEWAY_UPSTREAM_TIMEOUT).
    sse_connection("sse-silent", sse_upstream.url)
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/sse-silent", token, "legacy") as client:
        with pytest.raises(MCPError, match="stopped answering"):
            await client.call_tool("silent", {})
        # The session survives a slow call.
        assert (await client.call_tool("work", {})).content[0].text == "worked"


async def test_unreachable_sse_upstream_gives_a_clear_error(alice, gateway):
    sse_connection("sse-gone", f"http://127.0.0.1:{free_port()}/sse")
    token = issue_token("alice")
    with pytest.raises(BaseException) as raised:
        async with mcp_client(f"{gateway.url}/mcp/sse-gone", token, "legacy") as client:
            await client.list_tools()
    assert "unreachable" in " ".join(errors(raised.value))


# -- era detection --------------------------------------------------------------------


async def test_modern_sse_server_is_spoken_to_without_a_session(alice, gateway):
    server, _catcher = start_sse_fixture("same", "--modern")
    try:
        sse_connection("sse-modern", server.url)
        token = issue_token("alice")
        async with mcp_client(f"{gateway.url}/mcp/sse-modern", token, "2026-07-28") as client:
            results = await asyncio.gather(*(client.call_tool("work", {}) for _ in range(3)))
            assert [r.content[0].text for r in results] == ["worked"] * 3
        methods = [entry["rpc"] for entry in server.seen() if entry.get("method") == "POST"]
        assert methods.count("server/discover") == 1
        assert "initialize" not in methods
        assert methods.count("tools/call") == 3
    finally:
        stop(server.process)


async def test_legacy_sse_server_is_detected_once_and_served_in_a_shared_session(
    alice, gateway, sse_upstream
):
    sse_connection("sse-legacy", sse_upstream.url)
    token = issue_token("alice")
    url = f"{gateway.url}/mcp/sse-legacy"
    for _ in range(2):
        async with mcp_client(url, token, "2026-07-28") as client:
            assert (await client.call_tool("work", {})).content[0].text == "worked"
    methods = [entry["rpc"] for entry in sse_upstream.seen() if entry.get("method") == "POST"]
    # Probed once (cached), then one session the gateway holds for stateless agents.
    assert methods.count("server/discover") == 1
    assert methods.count("initialize") == 1
    assert streams(sse_upstream, "opened") == 2


def stdio_connection(slug: str, *args: str) -> None:
    options = ["--slug", slug, "--transport", "stdio", "--command", sys.executable]
    call_command("add_connection", *options, *(f"--arg={arg}" for arg in args))


@pytest.mark.parametrize("mode", ["2026-07-28", "legacy", "auto"])
async def test_modern_stdio_server_is_spoken_to_in_its_era(alice, gateway, mode):
    # The server refuses initialize: every call works only if the gateway detected it.
    stdio_connection("modern-stdio", str(FIXTURES / "stdio_modern.py"))
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/modern-stdio", token, mode) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"era", "count"}
        era = await client.call_tool("era", {})
        assert era.content[0].text == "2026-07-28"


async def test_stateless_agents_sharing_a_modern_stdio_process_get_their_own_progress(
    alice, gateway
):
    stdio_connection("modern-count", str(FIXTURES / "stdio_modern.py"))
    token = issue_token("alice")
    url = f"{gateway.url}/mcp/modern-count"
    progress: dict[str, list[float]] = {"first": [], "second": []}

    async def run(name: str) -> str:
        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            progress[name].append(value)

        async with mcp_client(url, token, "2026-07-28") as client:
            result = await client.call_tool("count", {"delay": 0.2}, progress_callback=on_progress)
            return result.content[0].text

    # Both clients number their requests alike: the gateway keeps them apart.
    texts = await asyncio.gather(run("first"), run("second"))
    assert all(text.startswith("counted with token") for text in texts)
    assert progress == {"first": [1, 2, 3], "second": [1, 2, 3]}


async def test_legacy_stdio_server_stays_legacy_for_modern_agents(alice, gateway):
    # Its mode name is its own: other tests count the processes of theirs.
    stdio_connection("legacy-stdio", str(FIXTURES / "stdio_faulty.py"), "stateless")
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/legacy-stdio", token, "2026-07-28") as client:
        assert (await client.call_tool("work", {})).content[0].text == "worked"


def test_sse_connection_through_the_console_api(alice, client):
    client.force_login(alice)
    response = client.post(
        "/api/connections/",
        {"slug": "api-sse", "transport": "sse", "url": "http://127.0.0.1:9/sse"},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["transport"] == "sse"
    missing = client.post(
        "/api/connections/",
        {"slug": "api-sse-2", "transport": "sse"},
        content_type="application/json",
    )
    assert missing.status_code == 400
    assert "url" in missing.json()


def logged_notes(sse_body: str) -> list[str]:
    """The data of the log messages in a call's SSE answer."""
    notes = []
    for line in sse_body.splitlines():
        if line.startswith("data:") and line[5:].strip():
            message = json.loads(line[5:])
            if message.get("method") == "notifications/message":
                notes.append(message["params"]["data"])
    return notes


async def stateless_answer(url: str, token: str, tool: str, note: str = "") -> str:
    """The body of a 2026-07-28 call's answer (no session)."""
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.post(
            url, headers=modern_headers(token, tool), json=modern_call(tool, {"note": note})
        )
    assert answer.status_code == 200, answer.text
    assert '"result"' in answer.text, answer.text
    return answer.text


async def stateless_call(url: str, token: str, tool: str, note: str) -> list[str]:
    """A 2026-07-28 call (no session); the notes logged to its caller."""
    return logged_notes(await stateless_answer(url, token, tool, note))


async def refused_server_requests(
    transport: str, server: Server | None, url: str, token: str
) -> set[str]:
    """The ids of the server's own requests that the gateway answered with -32600: as the
    SSE fixture saw them POSTed, or as the stdio fixture's `answers` tool reports them."""
    if server is not None:
        responses = [entry["response"] for entry in server.seen() if entry.get("response")]
    else:
        body = await stateless_answer(url, token, "answers")
        result = next(
            json.loads(line[5:])["result"]
            for line in body.splitlines()
            if line.startswith("data:") and '"result"' in line
        )
        responses = json.loads(result["content"][0]["text"])
    return {
        response["id"]
        for response in responses
        if response.get("error", {}).get("code") == -32600
        and "no agent to pass ping to" in response["error"]["message"]
    }


@pytest.mark.parametrize("transport", ["sse", "stdio"])
async def test_stateless_agents_sharing_an_upstream_session_never_get_each_others_logs(
    alice, gateway, transport, request
):
    # A 2024-11-05 server's log messages name no request. Stateless agents' calls share the
    # session the gateway keeps with it: a log message may go to a call only when that call
    # is alone in flight.
    server: Server | None = None
    if transport == "sse":
        server, _catcher = start_sse_fixture()
        request.addfinalizer(lambda: stop(server.process))
        sse_connection("chatty", server.url)
        tool = "note"
    else:
        stdio_connection("chatty", str(FIXTURES / "stdio_faulty.py"), "chatty")
        tool = "work"
    url = f"{gateway.url}/mcp/chatty"
    first, second = issue_token("alice", "--run", "first"), issue_token("alice", "--run", "second")

    assert await stateless_call(url, first, tool, "alone") == ["alone"]
    notes = await asyncio.gather(
        stateless_call(url, first, tool, "from first"),
        stateless_call(url, second, tool, "from second"),
    )
    assert "from second" not in notes[0]
    assert "from first" not in notes[1]
    # With each log message the server sent a ping of its own. The one sent while both
    # calls were in flight went to no agent, so the gateway answered it with an error
    # instead of leaving the server waiting; the others went to the agent's call.
    refused = await refused_server_requests(transport, server, url, first)
    assert len(refused & {"ping-from first", "ping-from second"}) == 1, refused
    assert "ping-alone" not in refused


async def test_a_server_request_nobody_can_take_is_answered_with_an_error():
    # What a stdio or HTTP+SSE upstream sends naming no call, with no call in flight and no
    # agent listening: a notification is dropped, a request answered so the server does not
    # wait; with a listener, both go to it.
    from gateway.jsonrpc import Message
    from gateway.replies import unclaimed_to

    sent: list[dict] = []

    async def reply(payload: dict) -> None:
        sent.append(payload)

    roots = Message({"jsonrpc": "2.0", "id": 7, "method": "roots/list"})
    log = Message({"jsonrpc": "2.0", "method": "notifications/message", "params": {}})
    for message in (log, roots):
        assert unclaimed_to(message, [], [], shared=False, upstream="u", reply=reply) == []
    await asyncio.sleep(0)
    assert sent == [
        {
            "jsonrpc": "2.0",
            "id": 7,
            "error": {
                "code": -32600,
                "message": "The gateway has no agent to pass roots/list to: no call is in "
                "flight and no agent listens.",
            },
        }
    ]
    listener: asyncio.Queue = asyncio.Queue()
    assert unclaimed_to(roots, [], [listener], shared=False, upstream="u", reply=reply) == [
        listener
    ]
    await asyncio.sleep(0)
    assert len(sent) == 1
