"""Sensitive values never leave the gateway unmasked: checked with a real upstream whose
tools return personal data, and the official SDK client (which validates
structuredContent against the tool's output schema)."""

import asyncio
import json
import time

import httpx
import pytest

from audit.models import AuditRecord, Kind
from masking.models import MaskingRule
from tests.conftest import add_connection, issue_token, start_gateway, stop
from tests.support.clients import mcp_client
from tests.test_proxy_sdk import raw_initialize

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("masking_defaults")]

RAW = [
    "ada.lovelace@example.com",
    "+44 20 7946 0958",
    "4111 1111 1111 1111",
    "4111111111111111",
    "536-22-8726",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "GB82 WEST 1234 5698 7654 32",
]


@pytest.fixture
def pii(alice, gateway, shared_upstream) -> tuple[str, str]:
    add_connection("crm", shared_upstream.url)
    return f"{gateway.url}/mcp/crm", issue_token("alice", "--run", "pii")


def audit_dump() -> str:
    for _ in range(100):
        if AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, method="tools/call").exists():
            break
        time.sleep(0.05)
    time.sleep(0.3)
    return repr(list(AuditRecord.objects.values("arguments", "result")))


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_agent_receives_masked_results(pii, mode):
    url, token = pii
    async with mcp_client(url, token, mode) as client:
        await client.list_tools()  # the gateway learns the output schemas
        result = await client.call_tool("customer", {"customer_id": 1})
        document = await client.call_tool("customer_document", {"customer_id": 1})
        resource = await client.read_resource("demo://customers/1")
        prompt = await client.get_prompt("contact", {"customer_id": "1"})

    structured = result.structured_content
    assert structured["name"] == "Ada Lovelace"
    assert structured["email"] == "[EMAIL]"
    assert structured["phone"] == "[PHONE]"
    assert structured["card"] == "****1111"
    # The schema says integer: a sensitive number stays a number.
    assert structured["account_number"] == 0
    assert structured["notes"][0] == "SSN on file: [US_SSN]"
    assert "sk_live_" not in structured["notes"][1]
    text = result.content[0].text
    embedded = document.content[1].resource.text
    everything = " ".join(
        [text, embedded, resource.contents[0].text, prompt.messages[0].content.text]
    )
    for value in RAW:
        assert value not in everything
    assert "[EMAIL]" in embedded and "[EMAIL]" in resource.contents[0].text
    assert "[IBAN]" in resource.contents[0].text or "****" in resource.contents[0].text

    stored = audit_dump()
    for value in RAW:
        assert value not in stored
    outcome = AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, target="customer").first()
    assert outcome.masking["values"] >= 6
    assert outcome.masking["rules"]["Email addresses"] >= 1


async def test_a_rule_may_let_a_value_through_to_the_agent_but_never_into_the_audit(pii):
    MaskingRule.objects.filter(name="Email addresses").update(mask_for_agent=False)
    # The gateway process hears of the change on its change channel.
    time.sleep(0.3)
    url, token = pii
    async with mcp_client(url, token, "legacy") as client:
        # The argument reaches the upstream unchanged: it echoes it back.
        echoed = await client.call_tool("weather", {"city": "bob@example.org"})
        result = await client.call_tool("customer", {"customer_id": 1})
    assert echoed.structured_content["city"] == "bob@example.org"
    assert result.structured_content["email"] == "ada.lovelace@example.com"
    assert result.structured_content["card"] == "****1111"
    stored = audit_dump()
    assert "bob@example.org" not in stored
    assert "ada.lovelace@example.com" not in stored


async def test_a_rule_change_applies_at_once_in_every_gateway_process(pii):
    """On Postgres the rules table notifies the gateway processes, which drop the rules
    they read (and otherwise keep them up to GATEWAY_ADMISSION_CACHE_MAX_AGE)."""
    url, token = pii
    async with mcp_client(url, token, "2026-07-28") as client:
        before = await client.call_tool("customer", {"customer_id": 1})
        # Rules just read: the process keeps them until it hears of a change.
        await asyncio.to_thread(
            lambda: MaskingRule.objects.filter(name="Email addresses").update(enabled=False)
        )
        await asyncio.sleep(0.3)
        after = await client.call_tool("customer", {"customer_id": 1})
    assert before.structured_content["email"] == "[EMAIL]"
    assert after.structured_content["email"] == "ada.lovelace@example.com"
    assert after.structured_content["card"] == "****1111"


async def test_a_process_that_never_saw_the_tool_list_still_keeps_results_schema_valid(
    pii, tmp_path
):
    """The tool list went through one gateway process, the call through another: the
    second masks structuredContent against the schema the catalog learnt from the first."""
    url, token = pii
    async with mcp_client(url, token, "legacy") as client:
        await client.list_tools()
    other = start_gateway(tmp_path)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            other_url = f"{other.url}/mcp/crm"
            headers = await raw_initialize(http, other_url, token)
            answer = await http.post(
                other_url,
                headers=headers,
                json={
                    "jsonrpc": "2.0",
                    "id": 5,
                    "method": "tools/call",
                    "params": {"name": "customer", "arguments": {"customer_id": 1}},
                },
            )
    finally:
        stop(other.process)
    data = next(line for line in answer.text.splitlines() if line.startswith("data:"))
    structured = json.loads(data.removeprefix("data:"))["result"]["structuredContent"]
    # The schema says integer: a string placeholder would fail the agent's validation.
    assert structured["account_number"] == 0
    # Integer or string: the masked value stays readable as masked.
    assert isinstance(structured["billing_card"], str) and "5105105105105100" not in str(
        structured["billing_card"]
    )
    assert structured["email"] == "[EMAIL]"
