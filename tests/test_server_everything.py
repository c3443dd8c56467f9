"""The reference server from npm (@modelcontextprotocol/server-everything) behind the
gateway, on each of its transports: Streamable HTTP, HTTP+SSE and stdio."""

import pytest
from django.core.management import call_command

from tests.conftest import EVERYTHING, NODE, add_connection, issue_token
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)


def register(upstream: str, request: pytest.FixtureRequest) -> str:
    """A connection to the reference server on the given transport; returns its slug."""
    slug = f"everything-{upstream}"
    if upstream == "http":
        add_connection(slug, request.getfixturevalue("everything").url)
    elif upstream == "sse":
        url = request.getfixturevalue("everything_sse").url
        call_command("add_connection", "--slug", slug, "--transport", "sse", "--url", url)
    else:
        call_command(
            "add_connection",
            "--slug",
            slug,
            "--transport",
            "stdio",
            "--command",
            str(NODE),
            f"--arg={EVERYTHING}",
            "--arg=stdio",
        )
    return slug


@pytest.mark.parametrize("mode", ["auto", "legacy", "2026-07-28"])
@pytest.mark.parametrize("upstream", ["http", "sse", "stdio"])
async def test_everything_server_through_the_gateway(alice, gateway, request, upstream, mode):
    slug = register(upstream, request)
    token = issue_token("alice", "--run", f"everything-{upstream}-{mode}")
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with mcp_client(f"{gateway.url}/mcp/{slug}", token, mode) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {
            "echo",
            "get-sum",
            "get-structured-content",
            "trigger-long-running-operation",
        } <= tools

        echo = await client.call_tool("echo", {"message": "through the gateway"})
        assert echo.content[0].text == "Echo: through the gateway"

        total = await client.call_tool("get-sum", {"a": 19, "b": 23})
        assert "42" in total.content[0].text

        structured = await client.call_tool("get-structured-content", {"location": "New York"})
        assert structured.structured_content["temperature"] is not None

        long = await client.call_tool(
            "trigger-long-running-operation",
            {"duration": 1, "steps": 3},
            progress_callback=on_progress,
        )
        assert long.is_error in (False, None)
        assert progress == [1, 2, 3]
