"""The reference server from npm (@modelcontextprotocol/server-everything) behind the gateway."""

import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.conftest import ROOT, Server, add_connection, free_port, issue_token, stop, wait_for_port
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)

NODE = ROOT / ".tools" / "node" / "node_modules" / "node" / "bin" / "node"
EVERYTHING = (
    ROOT
    / ".tools"
    / "node"
    / "node_modules"
    / "@modelcontextprotocol"
    / "server-everything"
    / "dist"
    / "index.js"
)


@pytest.fixture(scope="module")
def everything() -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [
            str(NODE),
            "--require",
            str(ROOT / "tests" / "support" / "loopback.cjs"),
            str(EVERYTHING),
            "streamableHttp",
        ],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    yield Server(f"http://127.0.0.1:{port}/mcp", port, process)
    stop(process)


@pytest.mark.parametrize("mode", ["auto", "legacy", "2026-07-28"])
async def test_everything_server_through_the_gateway(alice, gateway, everything, mode):
    add_connection("everything", everything.url)
    token = issue_token("alice", "--run", f"everything-{mode}")
    progress: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(value)

    async with mcp_client(f"{gateway.url}/mcp/everything", token, mode) as client:
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
