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


def gateway_with(tmp_path: Path, **env: str) -> Server:
    # Both spellings, so that one left in the test's own environment cannot interfere.
    env = {**env, **{name.lower(): value for name, value in env.items()}}
    return start_gateway(tmp_path, **env)


async def call_add(gateway: Server) -> dict:
    url = f"{gateway.url}/mcp/proxied"
    async with httpx.AsyncClient(timeout=30) as http:
        headers = await raw_initialize(http, url, issue_token("alice"))
        response = await http.post(url, headers=headers, json=ADD)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        events = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
        return json.loads(events[-1])
    return response.json()


async def test_calls_go_through_the_proxy_the_environment_names(
    alice, demo_upstream, proxy, tmp_path
):
    add_connection("proxied", demo_upstream.url)
    gateway = gateway_with(tmp_path, HTTP_PROXY=proxy.url, NO_PROXY="")
    try:
        answer = await call_add(gateway)
    finally:
        stop(gateway.process)
    assert answer["result"]["structuredContent"] == {"result": 5}, answer
    # Every request to the upstream (initialize, the notification, the call) went through
    # the proxy, for the upstream's absolute URL.
    targets = [hit.target for hit in proxy.hits()]
    assert len(targets) >= 3, targets
    assert set(targets) == {demo_upstream.url}
    assert [hit.status for hit in proxy.hits()].count(None) == 0


async def test_no_proxy_reaches_the_upstream_directly(alice, demo_upstream, proxy, tmp_path):
    add_connection("proxied", demo_upstream.url)
    gateway = gateway_with(tmp_path, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1")
    try:
        answer = await call_add(gateway)
    finally:
        stop(gateway.process)
    assert answer["result"]["structuredContent"] == {"result": 5}, answer
    assert proxy.hits() == []
