"""Bad input gets the protocol's answer: the right status and JSON-RPC error, never a 500."""

import time
from datetime import timedelta

import httpx
import pytest
from django.utils.timezone import now

from gateway.actions import revoke_token
from gateway.models import AgentToken, Connection
from tests.conftest import Server, add_connection, free_port, issue_token
from tests.test_proxy_sdk import raw_initialize

pytestmark = pytest.mark.django_db(transaction=True)

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MODERN_CALL = {
    "jsonrpc": "2.0",
    "id": 9,
    "method": "tools/call",
    "params": {
        "name": "sleep",
        "arguments": {"seconds": 30},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        },
    },
}
MODERN_HEADERS = {
    **HEADERS,
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "sleep",
}


@pytest.fixture
def setup(alice, gateway: Server, shared_upstream: Server) -> dict:
    add_connection("demo", shared_upstream.url)
    add_connection("other", shared_upstream.url)
    return {
        "url": f"{gateway.url}/mcp/demo",
        "base": gateway.url,
        "token": issue_token("alice"),
        "auth": {**HEADERS, "Authorization": f"Bearer {issue_token('alice')}"},
    }


def post(
    url: str, headers: dict, body: object = None, content: bytes | None = None
) -> httpx.Response:
    return httpx.post(url, headers=headers, json=body, content=content, timeout=30)


def error_code(response: httpx.Response) -> int:
    return response.json()["error"]["code"]


def test_no_token_gets_401_with_resource_metadata(setup):
    response = post(setup["url"], HEADERS, LIST_TOOLS)
    assert response.status_code == 401
    challenge = response.headers["www-authenticate"]
    metadata_url = f"{setup['base']}/.well-known/oauth-protected-resource/mcp/demo"
    assert challenge == f'Bearer resource_metadata="{metadata_url}"'
    metadata = httpx.get(metadata_url).json()
    assert metadata["resource"] == f"{setup['base']}/mcp/demo"
    assert metadata["bearer_methods_supported"] == ["header"]


def test_unknown_token_gets_401(setup):
    response = post(setup["url"], {**HEADERS, "Authorization": "Bearer mgw_nope_nope"}, LIST_TOOLS)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


def test_revoked_and_expired_tokens_get_401(setup):
    token = AgentToken.objects.filter(run_label="").first()
    revoke_token(token)
    assert post(setup["url"], setup["auth"], LIST_TOOLS).status_code == 401

    expiring = issue_token("alice", "--ttl", "60")
    AgentToken.objects.filter(revoked_at__isnull=True).update(
        expires_at=now() - timedelta(seconds=1)
    )
    response = post(setup["url"], {**HEADERS, "Authorization": f"Bearer {expiring}"}, LIST_TOOLS)
    assert response.status_code == 401


def test_token_for_another_connection_gets_403(setup):
    scoped = issue_token("alice", "--connection", "other")
    response = post(setup["url"], {**HEADERS, "Authorization": f"Bearer {scoped}"}, LIST_TOOLS)
    assert response.status_code == 403
    assert "not valid for 'demo'" in response.json()["error"]["message"]


def test_unknown_connection_gets_404(setup):
    response = post(f"{setup['base']}/mcp/nope", setup["auth"], LIST_TOOLS)
    assert response.status_code == 404


def test_disabled_connection_gets_a_clear_error(setup):
    Connection.objects.filter(slug="demo").update(enabled=False, updated_at=now())
    response = post(setup["url"], setup["auth"], LIST_TOOLS)
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "The connection 'demo' is disabled by an admin"


def test_malformed_json_is_a_parse_error(setup):
    response = post(setup["url"], setup["auth"], content=b'{"jsonrpc": "2.0", ')
    assert response.status_code == 400
    assert error_code(response) == -32700


@pytest.mark.parametrize(
    "body",
    [
        {"id": 1, "method": "tools/list"},
        {"jsonrpc": "1.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": {"x": 1}, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1, "method": 5},
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": [1]},
        {"jsonrpc": "2.0", "id": 1},
        "just a string",
    ],
)
def test_invalid_json_rpc_is_an_invalid_request(setup, body):
    response = post(setup["url"], setup["auth"], body)
    assert response.status_code == 400
    assert error_code(response) == -32600


def test_batch_is_refused(setup):
    response = post(setup["url"], setup["auth"], [LIST_TOOLS, LIST_TOOLS])
    assert response.status_code == 400
    assert "Batch" in response.json()["error"]["message"]


def test_wrong_accept_gets_406(setup):
    response = post(setup["url"], {**setup["auth"], "Accept": "text/html"}, LIST_TOOLS)
    assert response.status_code == 406


def test_wrong_content_type_gets_415(setup):
    response = post(setup["url"], {**setup["auth"], "Content-Type": "text/plain"}, content=b"{}")
    assert response.status_code == 415


def test_missing_session_gets_400_and_unknown_session_404(setup):
    response = post(setup["url"], setup["auth"], LIST_TOOLS)
    assert response.status_code == 400
    assert "Mcp-Session-Id" in response.json()["error"]["message"]
    response = post(setup["url"], {**setup["auth"], "Mcp-Session-Id": "made-up"}, LIST_TOOLS)
    assert response.status_code == 404


async def test_session_is_bound_to_its_token(setup):
    async with httpx.AsyncClient(timeout=10) as http:
        session_headers = await raw_initialize(http, setup["url"], setup["token"])
        own = await http.post(setup["url"], headers=session_headers, json=LIST_TOOLS)
        assert own.status_code == 200
        stolen = {**session_headers, "Authorization": setup["auth"]["Authorization"]}
        response = await http.post(setup["url"], headers=stolen, json=LIST_TOOLS)
    assert response.status_code == 404


def test_foreign_origin_gets_403(setup):
    response = post(
        setup["url"], {**setup["auth"], "Origin": "https://evil.example.com"}, LIST_TOOLS
    )
    assert response.status_code == 403


def test_foreign_host_is_refused(setup):
    headers = {**setup["auth"], "Host": "evil.example.com", "Origin": "http://evil.example.com"}
    response = post(setup["url"], headers, LIST_TOOLS)
    assert response.status_code == 400


def test_long_accept_and_host_values_are_judged_but_never_kept(setup):
    """Accept and Host checks are kept per value, for the values agents send again and
    again; values an agent could make as long as a request head are judged, not kept."""
    from gateway import endpoint

    long_accept = "text/x-" + "a" * 5000 + ", application/json, text/event-stream"
    response = post(setup["url"], {**setup["auth"], "Accept": long_accept}, LIST_TOOLS)
    assert response.status_code == 400  # past the Accept check: no session yet
    long_host = "a" * 5000 + ".example.com"
    response = post(setup["url"], {**setup["auth"], "Host": long_host}, LIST_TOOLS)
    assert response.status_code == 400
    assert "Host not allowed" in response.json()["error"]["message"]

    endpoint._accepts.kept.cache_clear()
    endpoint._valid_host.kept.cache_clear()
    assert endpoint._accepts(long_accept, "application/json")
    assert not endpoint._accepts("text/x-" + "a" * 5000, "application/json")
    assert endpoint._accepts("application/json", "application/json")
    assert endpoint._accepts.kept.cache_info().currsize == 1

    def exchange(host: str) -> endpoint.Exchange:
        scope = {"method": "POST", "headers": [(b"host", host.encode())]}
        return endpoint.Exchange(scope, None, None)  # type: ignore[arg-type]

    assert not endpoint._host_allowed(exchange(long_host))
    assert endpoint._host_allowed(exchange("127.0.0.1:8000"))
    assert endpoint._valid_host.kept.cache_info().currsize == 1


def test_body_over_the_limit_gets_413(setup):
    big = {**LIST_TOOLS, "params": {"pad": "x" * 70_000}}
    response = post(setup["url"], setup["auth"], big)
    assert response.status_code == 413


def test_unsupported_http_method_gets_405(setup):
    response = httpx.put(setup["url"], headers=setup["auth"], json=LIST_TOOLS)
    assert response.status_code == 405


def test_unreachable_upstream_is_a_json_rpc_error(alice, gateway):
    port = free_port()
    add_connection("down", f"http://127.0.0.1:{port}/mcp")
    headers = {**MODERN_HEADERS, "Authorization": f"Bearer {issue_token('alice')}"}
    started = time.monotonic()
    response = post(f"{gateway.url}/mcp/down", headers, MODERN_CALL)
    assert time.monotonic() - started < 10
    assert response.status_code == 200
    error = response.json()["error"]
    assert error["code"] == -32010
    assert error["message"] == (
        f"upstream down is unreachable: cannot connect to 127.0.0.1:{port} (connection refused)"
    )


def test_upstream_whose_host_does_not_resolve_is_a_json_rpc_error(alice, gateway):
    # .invalid never resolves (RFC 6761).
    add_connection("nowhere", "http://mcp.no-such-host.invalid/mcp")
    headers = {**MODERN_HEADERS, "Authorization": f"Bearer {issue_token('alice')}"}
    response = post(f"{gateway.url}/mcp/nowhere", headers, MODERN_CALL)
    error = response.json()["error"]
    assert error["code"] == -32010
    assert error["message"] == (
        "upstream nowhere is unreachable: the host name mcp.no-such-host.invalid does not resolve"
    )


def test_slow_upstream_times_out_with_a_json_rpc_error(setup):
    # The test gateway waits 5 s for an upstream (GATEWAY_UPSTREAM_TIMEOUT).
    started = time.monotonic()
    response = post(
        setup["url"],
        {**MODERN_HEADERS, "Authorization": setup["auth"]["Authorization"]},
        MODERN_CALL,
    )
    elapsed = time.monotonic() - started
    assert 4.5 < elapsed < 15
    body = response.text
    assert "-32011" in body
    assert "did not answer within 5 s" in body or "stopped answering for 5 s" in body
