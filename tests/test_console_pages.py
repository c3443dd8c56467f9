"""Console pages: the dashboard, connections with write-only credentials and "Test
connection", and run tokens shown once."""

import asyncio
import html
import re
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from django.test import Client
from django.utils.timezone import now

from audit import chain
from audit.models import AuditRecord
from gateway.models import AgentToken, Connection, ToolDefinition
from tests.conftest import Server, free_port, person
from tests.support.clients import mcp_client

SECRET = "sk-canary-7f3a9c1e5b2d"


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def browser(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(response: Any) -> str:
    return response.content.decode()


def new_connection_form(**overrides: str) -> dict[str, str]:
    data = {
        "slug": "crm",
        "name": "CRM",
        "transport": "streamable_http",
        "url": "http://127.0.0.1:9/mcp",
        "enabled": "on",
        "credentials-TOTAL_FORMS": "1",
        "credentials-INITIAL_FORMS": "0",
        "credentials-MIN_NUM_FORMS": "0",
        "credentials-MAX_NUM_FORMS": "20",
        "credentials-0-name": "X-Api-Key",
        "credentials-0-value": SECRET,
        "env-TOTAL_FORMS": "0",
        "env-INITIAL_FORMS": "0",
    }
    data.update(overrides)
    return data


def edit_form(connection: Connection, rows: list[tuple[str, str, bool]], **fields: str) -> dict:
    """The edit form as the browser posts it: one row per (name, value, remove)."""
    data = {
        "name": connection.name,
        "transport": connection.transport,
        "url": connection.url,
        "credentials-TOTAL_FORMS": str(len(rows)),
        "credentials-INITIAL_FORMS": str(len(connection.header_names)),
        "credentials-MIN_NUM_FORMS": "0",
        "credentials-MAX_NUM_FORMS": "20",
        "env-TOTAL_FORMS": "0",
        "env-INITIAL_FORMS": "0",
    }
    if connection.enabled:
        data["enabled"] = "on"
    for i, (name, value, remove) in enumerate(rows):
        data[f"credentials-{i}-name"] = name
        data[f"credentials-{i}-value"] = value
        if remove:
            data[f"credentials-{i}-DELETE"] = "on"
    data.update(fields)
    return data


def call(connection: str, tool: str, outcome: str = "ok", user: str = "alice") -> list[dict]:
    """The request and outcome records of one tool call, as the data path writes them."""
    fields = {
        "call_id": uuid.uuid4(),
        "username": user,
        "token": "mgw_0123456789ab…",
        "connection": connection,
        "method": "tools/call",
        "target": tool,
    }
    return [
        {**fields, "kind": "call.request", "arguments": {}},
        {**fields, "kind": "call.outcome", "outcome": outcome, "latency_ms": 3.0},
    ]


# -- dashboard ---------------------------------------------------------------------


def tile(body: str, name: str) -> str:
    match = re.search(rf'id="tile-{name}".*?class="tile-value">(\d+)', body, re.S)
    assert match, f"no {name} tile"
    return match.group(1)


def test_dashboard_counts_audit_records_of_the_last_day(db: None, monkeypatch: Any):
    alice = person("alice", admin=True)
    # A day and more ago: outside the window.
    old = now() - timedelta(hours=25)
    monkeypatch.setattr(chain, "now", lambda: old)
    chain.append_many(call("crm", "add") + call("crm", "delete_all", "denied"))
    monkeypatch.undo()
    rows = (
        call("crm", "add")
        + call("crm", "add", user="bob")
        + call("crm", "add")
        + call("crm", "search", "error")
        + call("erp", "delete_all", "denied", user="bob")[1:]
        + call("erp", "lookup", "upstream_error")
        + [{"kind": "event", "event": "connection.updated", "connection": "crm"}]
    )
    chain.append_many(rows)

    body = page(browser(alice).get("/"))

    assert tile(body, "calls") == "6"
    assert tile(body, "denied") == "1"
    assert tile(body, "errors") == "2"
    top_tools = body.split('id="top-tools"')[1].split("</ol>")[0]
    tools = re.findall(r'<span class="ranked-label"><code>([^<]+)</code>', top_tools)
    assert tools[0] == "add" and set(tools) == {"add", "search", "delete_all", "lookup"}
    callers = body.split('id="top-callers"')[1]
    assert callers.index("alice") < callers.index("bob")
    assert '<span class="ranked-count">4</span>' in callers  # alice: add, add, search, lookup


def test_dashboard_links_open_the_audit_browser_filtered(db: None):
    alice = person("alice", admin=True)
    chain.append_many(call("crm", "add") + call("crm", "wipe", "denied")[1:])
    client = browser(alice)
    body = page(client.get("/"))

    denied_link = html.unescape(re.search(r'href="([^"]+)" id="tile-denied"', body).group(1))
    query = parse_qs(urlparse(denied_link).query)
    assert urlparse(denied_link).path == "/audit/"
    assert query["outcome"] == ["denied"] and "since" in query
    listing = page(client.get(denied_link))
    assert "wipe" in listing and ">add<" not in listing

    tool_link = html.unescape(
        re.search(r'<a href="([^"]+)">\s*<span class="ranked-label"><code>add<', body).group(1)
    )
    assert "tool=add" in tool_link and "connection=crm" in tool_link
    assert client.get(tool_link).status_code == 200

    bar_links = [
        html.unescape(h) for h in re.findall(r'<a href="(/audit/\?[^"]+until=[^"]+)">', body)
    ]
    assert len(bar_links) == 3 * 96
    assert all(client.get(link).status_code == 200 for link in bar_links[-2:])


def test_dashboard_shows_each_role_what_it_may_open(db: None):
    person("alice", admin=True)
    bob = person("bob", "approver")
    carol = person("carol", "auditor")
    dave = person("dave", "viewer")
    chain.append_many(call("crm", "add"))

    for_bob = page(browser(bob).get("/"))
    assert 'id="tile-pending"' in for_bob and 'id="tile-calls"' not in for_bob
    for_carol = page(browser(carol).get("/"))
    assert 'id="tile-calls"' in for_carol and 'id="tile-pending"' not in for_carol
    for_dave = page(browser(dave).get("/"))
    assert 'id="tile-calls"' not in for_dave and 'id="tile-pending"' not in for_dave
    assert "admins and auditors" in for_dave


def test_dashboard_and_lists_have_empty_states(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    body = page(client.get("/"))
    assert "No tool calls in the last 24 hours." in body
    assert "Register the first MCP server" in body
    assert "No connections yet." in page(client.get("/connections/"))
    assert "No tokens yet." in page(client.get("/tokens/"))


@pytest.mark.django_db(transaction=True)
def test_dashboard_counts_calls_made_through_the_gateway(
    alice: Any, gateway: Server, shared_upstream: Server
):
    client = browser(alice)
    client.post("/connections/new/", new_connection_form(url=shared_upstream.url))
    policy = {
        "default_action": "allow",
        "rules": [{"tool": "delete_record", "action": "deny"}],
        "grants": {"users": [], "groups": [], "tokens": []},
    }
    assert client.put("/api/connections/crm/policy", policy, "application/json").status_code == 200
    body = page(client.post("/tokens/", {"ttl": "3600", "run_label": "dash", "scopes": ["mcp"]}))
    secret = html.unescape(re.search(r'id="new-token">([^<]+)<', body).group(1))

    async def agent() -> None:
        async with mcp_client(f"{gateway.url}/mcp/crm", secret, mode="2026-07-28") as mcp:
            await mcp.call_tool("add", {"a": 1, "b": 2})
            await mcp.call_tool("add", {"a": 3, "b": 4})
            with pytest.raises(Exception):  # noqa: B017 - the SDK raises its own error type
                await mcp.call_tool("delete_record", {"record_id": 1})

    asyncio.run(agent())
    # The gateway answers first and records the outcome right after: wait for the records.
    calls = AuditRecord.objects.filter(kind="call.outcome", method="tools/call")
    deadline = time.monotonic() + 10
    while calls.count() < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    body = page(client.get("/"))
    assert tile(body, "denied") == "1"
    tools = body.split('id="top-tools"')[1]
    assert re.search(r"<code>add</code>.*?ranked-count\">2<", tools, re.S)
    assert "alice" in body.split('id="top-callers"')[1]
    outcomes = AuditRecord.objects.filter(kind="call.outcome")
    assert int(tile(body, "calls")) == outcomes.count()


# -- connections -------------------------------------------------------------------


def test_admin_adds_a_connection_and_the_secret_is_never_shown_again(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)

    response = client.post("/connections/new/", new_connection_form())
    assert response.status_code == 302 and response["Location"] == "/connections/crm/edit/"

    connection = Connection.objects.get(slug="crm")
    assert connection.get_headers() == {"X-Api-Key": SECRET}
    edit = page(client.get("/connections/crm/edit/"))
    assert "X-Api-Key" in edit and "leave empty to keep" in edit
    listing = page(client.get("/connections/"))
    assert "X-Api-Key" in listing and "http://127.0.0.1:9/mcp" in listing
    for url in ("/", "/connections/", "/connections/crm/edit/", "/connections/crm/tools/"):
        assert SECRET not in page(client.get(url)), url
    assert SECRET not in repr(list(AuditRecord.objects.values()))
    created = AuditRecord.objects.get(event="connection.created")
    assert created.username == "alice"
    assert created.details["after"]["credential_headers"] == ["X-Api-Key"]


def test_leaving_a_stored_value_empty_keeps_it(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form())
    connection = Connection.objects.get(slug="crm")

    response = client.post(
        "/connections/crm/edit/",
        edit_form(connection, [("X-Api-Key", "", False)], name="Customer records"),
    )
    assert response.status_code == 302
    connection.refresh_from_db()
    assert connection.name == "Customer records"
    assert connection.get_headers() == {"X-Api-Key": SECRET}
    updated = AuditRecord.objects.get(event="connection.updated")
    assert updated.details["credentials_replaced"] is False


def test_credentials_are_replaced_added_and_removed(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form())
    connection = Connection.objects.get(slug="crm")

    client.post(
        "/connections/crm/edit/",
        edit_form(
            connection, [("X-Api-Key", "sk-new", False), ("Authorization", "Bearer t", False)]
        ),
    )
    connection.refresh_from_db()
    assert connection.get_headers() == {"X-Api-Key": "sk-new", "Authorization": "Bearer t"}

    client.post(
        "/connections/crm/edit/",
        edit_form(connection, [("Authorization", "", False), ("X-Api-Key", "", True)]),
    )
    connection.refresh_from_db()
    assert connection.get_headers() == {"Authorization": "Bearer t"}
    assert connection.header_names == ["Authorization"]


def test_form_errors_are_shown_next_to_their_fields_without_echoing_secrets(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    data = new_connection_form(slug="Bad Slug!", url="")
    data.update(
        {
            "credentials-TOTAL_FORMS": "3",
            "credentials-1-name": "Host",
            "credentials-1-value": SECRET,
            "credentials-2-name": "X-New",
        }
    )
    response = client.post("/connections/new/", data)

    assert response.status_code == 400
    body = page(response)
    slug_errors = body.split('id="id_slug"')[1].split("</div>")[0]
    assert "lowercase letters, digits and hyphens" in slug_errors
    url_errors = body.split('id="id_url"')[1].split("</div>")[0]
    assert "needs the upstream&#x27;s URL" in url_errors
    host_row = body.split('id="credentials-row-1"')[1].split('id="credentials-row-2"')[0]
    assert "set by the gateway itself" in host_row
    new_row = body.split('id="credentials-row-2"')[1]
    assert "a new header needs one" in new_row.split("</div>")[1]
    assert SECRET not in body
    assert not Connection.objects.exists()


def test_slugs_are_unique_and_unsupported_transports_refused(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form())
    again = client.post("/connections/new/", new_connection_form(url="http://127.0.0.1:10/mcp"))
    assert again.status_code == 400
    assert "already exists" in page(again).split('id="id_slug"')[1].split("</div>")[0]
    assert Connection.objects.get(slug="crm").url == "http://127.0.0.1:9/mcp"

    sse = client.post(
        "/connections/new/", new_connection_form(slug="legacy", transport="sse", url="")
    )
    assert sse.status_code == 400
    assert "needs the URL of its event stream" in page(sse).split('id="id_url"')[1]
    stdio = client.post("/connections/new/", new_connection_form(slug="local", transport="stdio"))
    assert "needs the command to run" in page(stdio).split('id="id_command"')[1]
    reserved = client.post("/connections/new/", new_connection_form(slug="new"))
    assert "reserved" in page(reserved)


def test_disable_and_enable_a_connection(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form())
    client.post("/connections/crm/toggle/")
    connection = Connection.objects.get(slug="crm")
    assert connection.enabled is False
    assert connection.get_headers() == {"X-Api-Key": SECRET}
    assert "disabled" in page(client.get("/connections/"))
    client.post("/connections/crm/toggle/", {"next": "edit"})
    assert Connection.objects.get(slug="crm").enabled is True


def test_connection_list_shows_health_from_the_last_call(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form())
    client.post("/connections/new/", new_connection_form(slug="erp", url="http://127.0.0.1:8/mcp"))
    client.post("/connections/new/", new_connection_form(slug="idle", url="http://127.0.0.1:7/mcp"))
    chain.append_many(call("crm", "add", "upstream_error") + call("crm", "add"))
    chain.append_many(call("erp", "add") + call("erp", "add", "timeout"))

    body = page(client.get("/connections/"))
    row = {
        slug: body.split(f'id="connection-{slug}"')[1].split("</tr>")[0]
        for slug in ("crm", "erp", "idle")
    }
    assert "health-ok" in row["crm"] and "reachable" in row["crm"]
    assert "health-bad" in row["erp"] and "timeout" in row["erp"]
    assert "no calls yet" in row["idle"]


def test_test_connection_lists_the_upstreams_tools(db: None, shared_upstream: Server):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form(url=shared_upstream.url))

    response = client.post("/connections/crm/test/", HTTP_HX_REQUEST="true")

    assert response.status_code == 200
    body = page(response)
    assert "<html" not in body  # the htmx partial only
    assert "crm answered" in body and "2026-07-28" in body
    assert 'data-tool="add"' in body and 'data-tool="delete_record"' in body
    delete_row = body.split('data-tool="delete_record"')[1].split("</tr>")[0]
    assert "destructive" in delete_row
    assert "demo" in body  # the server's name
    connection = Connection.objects.get(slug="crm")
    assert connection.era == "modern" and connection.era_detected_at is not None
    assert ToolDefinition.objects.filter(connection=connection, name="add").exists()
    assert 'id="tool-add"' in page(client.get("/connections/crm/tools/"))
    tested = AuditRecord.objects.get(event="connection.tested")
    assert tested.details["ok"] is True and tested.details["era"] == "modern"


def test_test_connection_of_a_legacy_upstream(db: None, legacy_upstream: Server):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form(url=legacy_upstream.url))
    body = page(client.post("/connections/crm/test/", HTTP_HX_REQUEST="true"))
    assert "legacy (initialize and sessions)" in body and 'data-tool="add"' in body
    assert Connection.objects.get(slug="crm").era == "legacy"


def test_test_connection_sends_the_stored_credentials(db: None, demo_upstream: Server):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form(url=demo_upstream.url))
    client.post("/connections/crm/test/", HTTP_HX_REQUEST="true")
    seen = demo_upstream.seen()
    assert seen and all(r["headers"].get("x-api-key") == SECRET for r in seen)


def test_test_connection_reports_an_unreachable_upstream_quickly(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form(url=f"http://127.0.0.1:{free_port()}/mcp"))
    started = time.monotonic()
    response = client.post("/connections/crm/test/")  # without htmx: a whole page
    assert time.monotonic() - started < 16
    body = page(response)
    assert "<html" in body and "could not be reached" in body and "unreachable" in body
    assert Connection.objects.get(slug="crm").era == ""
    assert AuditRecord.objects.get(event="connection.tested").details["ok"] is False


# -- tokens ------------------------------------------------------------------------


def issue(client: Client, **fields: Any) -> tuple[Any, str]:
    data = {"ttl": "3600", "run_label": "nightly", "scopes": ["mcp"], **fields}
    response = client.post("/tokens/", data)
    match = re.search(r'id="new-token">([^<]+)<', page(response))
    return response, html.unescape(match.group(1)) if match else ""


def test_token_is_shown_once_with_a_client_configuration(db: None):
    alice = person("alice", admin=True)
    client = browser(alice)
    client.post("/connections/new/", new_connection_form())

    response, secret = issue(client, connection="crm")

    assert response.status_code == 200 and secret.startswith("mgw_")
    assert "no-store" in response["Cache-Control"]
    body = page(response)
    assert "Copy" in body and "js/console.js" in body
    text = html.unescape(body)
    assert '"mcpServers"' in text and '"url": "http://testserver/mcp/crm"' in text
    assert f"Bearer {secret}" in html.unescape(body)
    assert "streamable_http_client" in body
    listing = page(client.get("/tokens/"))
    token = AgentToken.objects.get()
    assert token.display in listing and "nightly" in listing
    assert secret not in listing and secret.split("_", 2)[2] not in listing
    assert secret not in repr(list(AuditRecord.objects.values()))
    assert token.connection.slug == "crm" and token.scopes == ["mcp"]
    assert token.expires_at is not None
    assert timedelta(minutes=59) < token.expires_at - now() <= timedelta(hours=1)


def test_an_issued_api_token_works_and_shows_a_curl_example(db: None):
    dave = person("dave", "viewer")
    client = browser(dave)
    response, secret = issue(client, scopes=["api"], ttl="never")
    assert "curl -H" in page(response) and '"mcpServers"' not in page(response)
    api = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    listed = api.get("/api/tokens/")
    assert listed.status_code == 200 and listed.json()[0]["owner"] == "dave"
    assert AgentToken.objects.get().expires_at is None


@pytest.mark.django_db(transaction=True)
def test_the_python_snippet_runs_against_the_gateway(
    alice: Any, gateway: Server, shared_upstream: Server, settings: Any
):
    settings.PUBLIC_URL = gateway.url
    client = browser(alice)
    client.post("/connections/new/", new_connection_form(url=shared_upstream.url))
    response, _ = issue(client, connection="crm")
    snippet = html.unescape(
        re.search(r'id="snippet-python">(.*?)</pre>', page(response), re.S).group(1)
    )
    done = subprocess.run(
        [sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "'add'" in done.stdout and "'delete_record'" in done.stdout
    # Users copy this: only public names of the SDK and its HTTP client.
    assert "._" not in snippet and "import _" not in snippet


def test_token_form_validates_next_to_the_fields(db: None):
    dave = person("dave", "viewer")
    client = browser(dave)
    response = client.post("/tokens/", {"ttl": "forever", "run_label": "x" * 201})
    assert response.status_code == 400
    body = page(response)
    assert "Choose at least one scope." in body
    assert "Select a valid choice" in body.split('id="id_ttl"')[1].split("</div>")[0]
    assert "at most 200 characters" in body.split('id="id_run_label"')[1].split("</div>")[0]
    assert not AgentToken.objects.exists()
    unknown = client.post("/tokens/", {"ttl": "3600", "scopes": ["mcp"], "connection": "nope"})
    assert "Select a valid choice" in page(unknown)


def test_admins_issue_for_others_and_others_only_for_themselves(db: None):
    alice = person("alice", admin=True)
    dave = person("dave", "viewer")
    issue(browser(alice), owner="dave")
    assert AgentToken.objects.get().user == dave

    as_dave = browser(dave)
    assert 'name="owner"' not in page(as_dave.get("/tokens/"))
    issue(as_dave, owner="alice")  # ignored: the field is not there for dave
    assert AgentToken.objects.filter(user=dave).count() == 2
    assert not AgentToken.objects.filter(user=alice).exists()


def test_people_see_and_revoke_their_own_tokens_and_admins_all(db: None):
    alice = person("alice", admin=True)
    bob = person("bob", "approver")
    dave = person("dave", "viewer")
    issue(browser(bob), run_label="bobs-run")
    issue(browser(dave), run_label="daves-run")
    bobs = AgentToken.objects.get(user=bob)
    daves = AgentToken.objects.get(user=dave)

    as_dave = browser(dave)
    listing = page(as_dave.get("/tokens/"))
    assert "daves-run" in listing and "bobs-run" not in listing
    assert as_dave.post(f"/tokens/{bobs.public_id}/revoke/").status_code == 404
    bobs.refresh_from_db()
    assert bobs.revoked_at is None

    response = as_dave.post(f"/tokens/{daves.public_id}/revoke/", follow=True)
    assert f"Revoked {daves.display}" in page(response)
    daves.refresh_from_db()
    assert daves.revoked_at is not None
    assert "revoked" in page(as_dave.get("/tokens/")).split(f'id="token-{daves.public_id}"')[1]

    as_alice = browser(alice)
    everyone = page(as_alice.get("/tokens/"))
    assert "daves-run" in everyone and "bobs-run" in everyone and "<th>Owner</th>" in everyone
    as_alice.post(f"/tokens/{bobs.public_id}/revoke/")
    bobs.refresh_from_db()
    assert bobs.revoked_at is not None
    revoked = AuditRecord.objects.filter(event="token.revoked").order_by("seq")
    assert [r.username for r in revoked] == ["dave", "alice"]


STDIO_SERVER = """
import os
import mcp_types
from mcp.server.mcpserver import MCPServer

ok = os.environ.get("DEMO_TOKEN") == "env-canary-51"
mcp = MCPServer("stdio-demo", version="2.0", instructions="token ok" if ok else "no token")


@mcp.tool(annotations=mcp_types.ToolAnnotations(readOnlyHint=True))
def echo(text: str) -> str:
    \"\"\"Echo the text.\"\"\"
    return text


mcp.run()
"""


def test_a_stdio_connection_is_registered_and_tested(db: None, tmp_path: Any):
    script = tmp_path / "server.py"
    script.write_text(STDIO_SERVER)
    alice = person("alice", admin=True)
    client = browser(alice)
    data = new_connection_form(
        slug="local",
        transport="stdio",
        url="",
        command=sys.executable,
        args=f"{script}\n",
        cwd=str(tmp_path),
        max_processes="2",
    )
    data.update(
        {
            "env-TOTAL_FORMS": "1",
            "env-INITIAL_FORMS": "0",
            "env-0-name": "DEMO_TOKEN",
            "env-0-value": "env-canary-51",
            "credentials-0-name": "",
            "credentials-0-value": "",
        }
    )
    response = client.post("/connections/new/", data)
    assert response.status_code == 302, page(response)
    connection = Connection.objects.get(slug="local")
    assert connection.args == [str(script)] and connection.max_processes == 2
    assert connection.get_env() == {"DEMO_TOKEN": "env-canary-51"}

    edit = page(client.get("/connections/local/edit/"))
    assert "DEMO_TOKEN" in edit and "env-canary-51" not in edit
    body = page(client.post("/connections/local/test/", HTTP_HX_REQUEST="true"))
    assert "local answered" in body and 'data-tool="echo"' in body and "read-only" in body
    assert "token ok" in body and "stdio-demo" in body
    assert "env-canary-51" not in repr(list(AuditRecord.objects.values()))
