"""The gateway reaches HTTP upstreams through the proxy the environment names
(HTTP_PROXY, NO_PROXY), as any HTTP client of the host does."""

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, add_connection, issue_token, start_gateway, stop
from tests.support.roundrobin import RoundRobinProxy
from tests.test_proxy_sdk import raw_initialize

pytestmark = pytest.mark.django_db(transaction=True)

ADD = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "add", "arguments": {"a": 2, "b": 3}},
}


@pytest.fixture
def proxy(demo_upstream: Server) -> Iterator[RoundRobinProxy]:
    with RoundRobinProxy([demo_upstream.port]) as forward_proxy:
        yield forward_proxy


async def add_through_a_gateway(tmp_path: Path, upstream: Server, **env: str) -> None:
    """A gateway started with `env` (both spellings of each variable, so that one left in
    the test's own environment cannot interfere) calls the upstream's add tool."""
    add_connection("proxied", upstream.url)
    env = {**env, **{name.lower(): value for name, value in env.items()}}
    gateway = start_gateway(tmp_path, **env)
    try:
        url = f"{gateway.url}/mcp/proxied"
        async with httpx.AsyncClient(timeout=30) as http:
            headers = await raw_initialize(http, url, issue_token("alice"))
            response = await http.post(url, headers=headers, json=ADD)
    finally:
        stop(gateway.process)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        answer = json.loads(events[-1])
    else:
        answer = response.json()
    assert answer["result"]["structuredContent"] == {"result": 5}, answer


async def test_calls_go_through_the_proxy_the_environment_names(
    alice, demo_upstream, proxy, tmp_path
):
    await add_through_a_gateway(tmp_path, demo_upstream, HTTP_PROXY=proxy.url, NO_PROXY="")
    # Every request to the upstream (initialize, the notification, the call) went through
    # the proxy, for the upstream's absolute URL.
    targets = [hit.target for hit in proxy.hits()]
    assert len(targets) >= 3, targets
    assert set(targets) == {demo_upstream.url}
    assert [hit.status for hit in proxy.hits()].count(None) == 0


async def test_no_proxy_reaches_the_upstream_directly(alice, demo_upstream, proxy, tmp_path):
    await add_through_a_gateway(tmp_path, demo_upstream, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
    assert proxy.hits() == []
