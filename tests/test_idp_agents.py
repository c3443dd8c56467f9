"""Agents calling with access tokens from the organisation's IdP (JWT), end to end."""

import time

import httpx
import pytest

from audit.models import AuditRecord, Kind
from tests.conftest import add_connection, start_gateway, stop
from tests.support.clients import mcp_client
from tests.test_jwt_agents import LocalProvider

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def provider():  # type: ignore[no-untyped-def]
    local = LocalProvider()
    yield local
    local.stop()


@pytest.fixture(scope="module")
def idp_gateway(django_db_setup, django_db_blocker, tmp_path_factory, provider):  # type: ignore[no-untyped-def]
    server = start_gateway(
        tmp_path_factory.mktemp("idp"),
        OIDC_DISCOVERY_URL=provider.issuer,
        OIDC_RP_CLIENT_ID="mcp-gateway-console",
        OIDC_ROLE_MAP="admin=gw-admins",
    )
    yield server
    stop(server.process)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_agent_with_an_idp_token_uses_the_connection(
    alice, idp_gateway, shared_upstream, provider, mode
):
    add_connection("demo", shared_upstream.url)
    resource = f"{idp_gateway.url}/mcp/demo"
    token = provider.token(aud=resource, sub="agent-42", run="nightly-9", email="bot@example.com")
    async with mcp_client(resource, token, mode) as client:
        result = await client.call_tool("add", {"a": 2, "b": 2})
    assert result.structured_content == {"result": 4}
    for _ in range(100):
        outcome = AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, target="add").first()
        if outcome:
            break
        time.sleep(0.05)
    assert outcome.username == "bot@example.com"
    assert outcome.subject == f"{provider.issuer} agent-42"
    assert outcome.run_label == "nightly-9"
    assert outcome.token == "oidc:agent-42"


def test_idp_token_for_another_resource_is_refused(alice, idp_gateway, shared_upstream, provider):
    add_connection("demo", shared_upstream.url)
    token = provider.token(aud="https://other.example.com/api")
    response = httpx.post(
        f"{idp_gateway.url}/mcp/demo",
        headers={
            "Authorization": f"Bearer {token}",
            "Accept": "application/json, text/event-stream",
            "Content-Type": "application/json",
        },
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
