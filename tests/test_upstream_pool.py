"""Connections from one gateway process to one HTTP upstream: idle listeners never starve
calls, and a call that finds every connection busy gets a clear error, in time."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, add_connection, issue_token, start_gateway, stop
from tests.test_proxy_sdk import raw_initialize

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 2


@pytest.fixture
def small_pool_gateway(
    tmp_path: Path, django_db_setup: None, django_db_blocker: object
) -> AsyncIterator[Server]:
    server = start_gateway(
        tmp_path, GATEWAY_UPSTREAM_MAX_CONNECTIONS=str(LIMIT), GATEWAY_UPSTREAM_TIMEOUT="3"
    )
    yield server
    stop(server.process)


def call(tool: str, arguments: dict, id: int) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments},
    }


@contextlib.asynccontextmanager
async def listening(http: httpx.AsyncClient, url: str, headers: dict) -> AsyncIterator[None]:
    """An agent's GET stream, open (and idle) for the duration."""
    async with http.stream("GET", url, headers={**headers, "Accept": "text/event-stream"}) as r:
        assert r.status_code == 200, await r.aread()
        yield


async def test_idle_listeners_do_not_take_connections_from_calls(
    alice, small_pool_gateway, shared_upstream
):
    add_connection("demo", shared_upstream.url)
    url = f"{small_pool_gateway.url}/mcp/demo"
    token = issue_token("alice")
    async with httpx.AsyncClient(timeout=30) as http:
        sessions = [await raw_initialize(http, url, token) for _ in range(LIMIT * 3)]
        async with contextlib.AsyncExitStack() as stack:
            for headers in sessions:
                await stack.enter_async_context(listening(http, url, headers))
            # Three times as many open listeners as the pool has connections: calls
            # still go through, in every session.
            for n, headers in enumerate(sessions):
                answer = await http.post(
                    url, headers=headers, json=call("add", {"a": n, "b": 1}, n)
                )
                assert answer.status_code == 200 and f'"text":"{n + 1}"' in answer.text.replace(
                    " ", ""
                ), answer.text


async def test_a_call_that_finds_every_connection_busy_gets_a_clear_error(
    alice, small_pool_gateway, shared_upstream
):
    add_connection("demo", shared_upstream.url)
    url = f"{small_pool_gateway.url}/mcp/demo"
    token = issue_token("alice")
    async with httpx.AsyncClient(timeout=30) as http:
        headers = await raw_initialize(http, url, token)
        # LIMIT calls hold every connection for longer than the gateway's timeout (their
        # progress keeps each stream alive)...
        busy = []
        for n in range(LIMIT):
            slow = call("slow", {"steps": 160}, 100 + n)
            slow["params"]["_meta"] = {"progressToken": n}
            busy.append(asyncio.ensure_future(http.post(url, headers=headers, json=slow)))
        await asyncio.sleep(0.5)
        # ... so one more waits for a connection, and is told why it cannot have one.
        answer = await http.post(url, headers=headers, json=call("add", {"a": 1, "b": 1}, 7))
        assert answer.status_code == 200
        assert "no connection came free" in answer.text, answer.text
        for task in busy:
            assert "done 160" in (await task).text
