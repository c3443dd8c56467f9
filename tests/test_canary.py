"""Canaries: secrets planted in upstream credentials and in tokens never appear in the
database dump, the exports, the logs or the records shipped to a SIEM."""

import secrets
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command

from tests.conftest import Server, add_connection, issue_token
from tests.support.clients import mcp_client
from tests.test_siem import HttpReceiver

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    http = HttpReceiver()
    yield http
    http.stop()


async def test_planted_secrets_never_leak(
    alice, gateway: Server, gateway_data_dir: Path, shared_upstream, receiver
):
    upstream_secret = f"CANARY-UPSTREAM-{secrets.token_hex(8)}"
    add_connection("crm", shared_upstream.url, f"X-Api-Key: {upstream_secret}")
    agent_token = issue_token("alice", "--run", "canary-run")
    api_token = issue_token("alice", "--scope", "api")
    canaries = [upstream_secret, agent_token, api_token]
    # The token's secret part, in case only a piece of it is written somewhere.
    canaries += [t.split("_", 2)[2] for t in (agent_token, api_token)]

    for mode in ("legacy", "2026-07-28"):
        async with mcp_client(f"{gateway.url}/mcp/crm", agent_token, mode) as client:
            await client.call_tool("add", {"a": 1, "b": 2})
            await client.call_tool("boom", {"msg": "failure path"})
    # A bad token and a bad request are logged too; neither may echo a secret.
    httpx.post(
        f"{gateway.url}/mcp/crm", headers={"Authorization": f"Bearer {agent_token}x"}, json={}
    )
    time.sleep(0.5)  # outcome records are written just after the answers

    call_command("audit_sink", "add", "--name", "siem", "--http", receiver.url, stdout=None)
    call_command("audit_sink", "forward")
    shipped = b"".join(post.body for post in receiver.posts).decode()
    assert "tools/call" in shipped

    headers = {"Authorization": f"Bearer {api_token}"}
    csv_export = httpx.get(f"{gateway.url}/api/audit/export.csv", headers=headers)
    jsonl_export = httpx.get(f"{gateway.url}/api/audit/export.jsonl", headers=headers)
    assert csv_export.status_code == jsonl_export.status_code == 200
    assert "tools/call" in csv_export.text and "tools/call" in jsonl_export.text

    db = settings.DATABASES["default"]
    dump = subprocess.run(
        [
            "pg_dump",
            "-h",
            db["HOST"] or "127.0.0.1",
            "-p",
            str(db["PORT"] or 5432),
            "-U",
            db["USER"] or "postgres",
            db["NAME"],
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "canary-run" in dump  # the dump holds the data

    logs = "".join(
        path.read_text(errors="replace") for path in gateway_data_dir.glob("gateway-*.log")
    )
    places = {
        "database dump": dump,
        "CSV export": csv_export.text,
        "JSONL export": jsonl_export.text,
        "SIEM records": shipped,
        "gateway log": logs,
    }
    for place, text in places.items():
        for canary in canaries:
            assert canary not in text, f"a planted secret appears in the {place}"
