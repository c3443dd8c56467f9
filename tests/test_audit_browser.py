"""The audit browser and its API: who may read, filters, keyset paging, detail, timeline."""

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.utils.timezone import now

from audit import chain, checkpoints
from audit.models import AuditRecord
from gateway.actions import revoke_token
from gateway.models import AgentToken
from tests.conftest import Server, add_connection, issue_token
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "mgw_0123456789ab…"
SESSION_A = "a" * 64
SESSION_B = "b" * 64


@pytest.fixture(autouse=True)
def private_checkpoints(settings: Any, tmp_path: Path) -> Iterator[None]:
    """Checkpoints and their key in this test's own directory, not the checkout's var/."""
    settings.AUDIT = {
        **settings.AUDIT,
        "CHECKPOINT_DIR": str(tmp_path / "checkpoints"),
        "SIGNING_KEY_FILE": str(tmp_path / "audit-signing.pem"),
    }
    checkpoints.signing_key.cache_clear()
    yield
    checkpoints.signing_key.cache_clear()


def user_in(group: str | None, username: str) -> Any:
    user = get_user_model().objects.create_user(username, f"{username}@example.com", "pw-1-test")
    if group:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


@pytest.fixture
def bob(transactional_db: None) -> Any:
    """bob: an approver, who may not read the audit trail."""
    return user_in("approver", "bob")


@pytest.fixture
def charlie(transactional_db: None) -> Any:
    """charlie: no role at all."""
    return user_in(None, "charlie")


@pytest.fixture
def dave(transactional_db: None) -> Any:
    """dave: an auditor."""
    return user_in("auditor", "dave")


def logged_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def call_records(
    *,
    target: str = "add",
    arguments: Any = None,
    result: Any = None,
    outcome: str = "ok",
    **who: Any,
) -> list[dict[str, Any]]:
    """The request and outcome records of one tool call, ready for chain.append_many."""
    fields = {
        "call_id": uuid.uuid4(),
        "user_id": 1,
        "username": "alice",
        "token": TOKEN,
        "run_label": "nightly",
        "connection": "crm",
        "session": SESSION_A,
        "method": "tools/call",
        "target": target,
        **who,
    }
    return [
        {**fields, "kind": "call.request", "arguments": arguments or {"a": 1, "b": 2}},
        {
            **fields,
            "kind": "call.outcome",
            "result": result if result is not None else {"content": []},
            "outcome": outcome,
            "latency_ms": 12.5,
        },
    ]


@pytest.fixture
def trail(alice: Any) -> dict[str, list[int]]:
    """A small trail of calls by several callers on two connections, and one event."""
    batches = {
        "crm_add": call_records(),
        "crm_search": call_records(target="Search_Contacts", outcome="error"),
        "erp_add": call_records(connection="erp", session=SESSION_B, username="bob", run_label=""),
        "erp_denied": call_records(
            connection="erp", target="delete_all", outcome="denied", token="mgw_fedcba987654…"
        )[1:],
        "event": [{"kind": "event", "event": "connection.saved", "username": "alice"}],
    }
    return {name: [r.seq for r in chain.append_many(rows)] for name, rows in batches.items()}


def api_seqs(client: Client, query: str) -> list[int]:
    response = client.get(f"/api/audit/?{query}")
    assert response.status_code == 200, response.content
    return [r["seq"] for r in response.json()["results"]]


# Who may read.


def test_admin_and_auditor_see_the_browser_and_the_api(trail, dave):
    seq = trail["crm_add"][0]
    for user in (get_user_model().objects.get(username="alice"), dave):
        client = logged_in(user)
        assert client.get("/audit/").status_code == 200
        assert client.get(f"/audit/{seq}/").status_code == 200
        assert client.get(f"/audit/sessions/{SESSION_A}/").status_code == 200
        assert client.get("/api/audit/").status_code == 200
        assert client.get(f"/api/audit/{seq}/").json()["seq"] == seq


@pytest.mark.parametrize("who", ["bob", "charlie"])
def test_others_get_403(trail, request, who):
    client = logged_in(request.getfixturevalue(who))
    seq = trail["crm_add"][0]
    for url in (
        "/audit/",
        f"/audit/{seq}/",
        f"/audit/sessions/{SESSION_A}/",
        "/api/audit/",
        f"/api/audit/{seq}/",
        "/api/audit/export.csv",
        "/api/audit/export.jsonl",
    ):
        assert client.get(url).status_code == 403, url
    assert not AuditRecord.objects.filter(event="audit.export").exists()


def test_anonymous_is_sent_to_log_in_and_the_api_answers_401(trail):
    client = Client()
    for url in ("/audit/", f"/audit/{trail['crm_add'][0]}/", f"/audit/sessions/{SESSION_A}/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=/audit/")
    for url in ("/api/audit/", "/api/audit/export.csv", "/api/audit/export.jsonl"):
        response = client.get(url)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
        assert "detail" in response.json()


def test_api_token_needs_the_api_scope(trail, dave, bob):
    mcp_only = issue_token("dave")
    api = issue_token("dave", "--scope", "api")
    bob_api = issue_token("bob", "--scope", "api")

    def get(token: str) -> int:
        return Client().get("/api/audit/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code

    assert get(api) == 200
    assert get(mcp_only) == 401
    assert get("mgw_000000000000_not-a-token") == 401
    assert get(bob_api) == 403

    revoke_token(AgentToken.objects.get(digest=AgentToken.digest_of(api)))
    assert get(api) == 401
    still_valid = issue_token("dave", "--scope", "api")
    dave.is_active = False
    dave.save()
    assert get(still_valid) == 401


# Filters.


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("connection=erp", ["erp_add", "erp_denied"]),
        ("user=bob", ["erp_add"]),
        ("run=nightly", ["crm_add", "crm_search", "erp_denied"]),
        ("token=mgw_fedcba987654…", ["erp_denied"]),
        ("token=mgw_fedcba987654", ["erp_denied"]),
        ("token=fedcba987654", ["erp_denied"]),
        ("tool=search", ["crm_search"]),
        ("tool=ADD", ["crm_add", "erp_add"]),
        ("tool=E_A", ["erp_denied"]),
        ("outcome=denied", ["erp_denied"]),
        ("outcome=error&connection=crm", ["crm_search:1"]),
        ("kind=event", ["event"]),
        ("method=tools/call&kind=call.request&connection=crm", ["crm_add:0", "crm_search:0"]),
        (f"session={SESSION_B}", ["erp_add"]),
    ],
)
def test_filters_select_the_matching_records(trail, query, expected):
    client = logged_in(get_user_model().objects.get(username="alice"))
    wanted = set()
    for item in expected:
        name, _, index = item.partition(":")
        wanted |= {trail[name][int(index)]} if index else set(trail[name])
    # Logging in is audited too: look only at the trail this test wrote.
    written = {seq for seqs in trail.values() for seq in seqs}
    assert set(api_seqs(client, query)) & written == wanted
    page = client.get(f"/audit/?{query}")
    assert page.status_code == 200
    assert {r.seq for r in page.context["records"]} & written == wanted


def test_time_range_filter(alice):
    client = logged_in(alice)
    first = chain.append(kind="event", event="first", connection="timing")
    second = chain.append(kind="event", event="second", connection="timing")
    between = first.created_at + (second.created_at - first.created_at) / 2
    assert first.created_at < between < second.created_at
    stamp = between.isoformat().replace("+00:00", "Z")
    assert api_seqs(client, f"connection=timing&since={stamp}") == [second.seq]
    assert api_seqs(client, f"connection=timing&until={stamp}") == [first.seq]
    in_oslo_summer = timezone(timedelta(hours=2))
    later = quote((second.created_at + timedelta(minutes=1)).astimezone(in_oslo_summer).isoformat())
    assert "%2B02%3A00" in later
    assert api_seqs(client, f"connection=timing&since={stamp}&until={later}") == [second.seq]
    assert api_seqs(client, f"since={(now() + timedelta(days=1)).date()}") == []


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("since=yesterday", "since", "ISO 8601"),
        ("until=2025-13-01", "until", "ISO 8601"),
        ("since=2025-02-01&until=2025-01-01", "until", "later than since"),
        ("since=0001-01-01T00:00:00%2B05:00", "since", "Out of range"),
        ("limit=0", "limit", "greater than or equal to 1"),
        ("limit=100000", "limit", "less than or equal to 500"),
        ("limit=ten", "limit", "whole number"),
        ("before=-5", "before", "greater than or equal to 1"),
        ("before=99999999999999999999999", "before", "less than or equal to"),
        ("outcome=fine", "outcome", "not one of the available choices"),
        ("kind=anything", "kind", "not one of the available choices"),
        ("connection=" + "x" * 65, "connection", "at most 64 characters"),
        ("connection=crm%00", "connection", "Null characters"),
        ("tool=a&tool=b", "tool", "more than once"),
        ("conection=crm", "non_field_errors", "Unknown parameter(s): conection"),
    ],
)
def test_invalid_filters_are_refused_with_a_message(alice, query, field, message):
    client = logged_in(alice)
    response = client.get(f"/api/audit/?{query}")
    assert response.status_code == 400
    assert message in " ".join(response.json()[field])
    for url in ("/audit/", "/api/audit/export.csv", "/api/audit/export.jsonl"):
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400, url
        assert message in response.content.decode().replace("&#x27;", "'"), url
    assert not AuditRecord.objects.filter(event="audit.export").exists()


def test_unknown_records_and_sessions_are_404(alice):
    client = logged_in(alice)
    assert client.get("/audit/12345/").status_code == 404
    assert client.get("/audit/99999999999999999999999/").status_code == 404
    assert client.get("/api/audit/12345/").status_code == 404
    assert client.get("/audit/sessions/nope/").status_code == 404
    assert client.get(f"/audit/sessions/{'x' * 200}/").status_code == 404
    assert client.get("/audit/sessions/%00/").status_code == 404


def test_session_timeline_rejects_a_bad_cursor(trail):
    client = logged_in(get_user_model().objects.get(username="alice"))
    response = client.get(f"/audit/sessions/{SESSION_A}/?after=soon")
    assert response.status_code == 400
    assert "whole number" in response.content.decode()


# Keyset paging.


def test_keyset_paging_returns_each_record_once(alice):
    client = logged_in(alice)
    rows = [row for i in range(60) for row in call_records(arguments={"i": i})]
    seqs = [r.seq for r in chain.append_many(rows)]
    expected = sorted(seqs, reverse=True)

    seen: list[int] = []
    url: str | None = "/api/audit/?limit=17&connection=crm"
    while url:
        body = client.get(url).json()
        assert len(body["results"]) <= 17
        seen += [r["seq"] for r in body["results"]]
        url = body["next"]
        if url:
            assert url.startswith("http://testserver/api/audit/?")
            assert "connection=crm" in url
    assert seen == expected

    seen = []
    query: str | None = "?connection=crm&limit=25"
    pages = 0
    while query:
        response = client.get(f"/audit/{query}")
        seen += [r.seq for r in response.context["records"]]
        query = response.context["older_url"]
        pages += 1
    assert seen == expected
    assert pages == 5  # 120 records, 25 a page
    page = client.get("/audit/?connection=crm&limit=25").content.decode()
    assert 'href="?connection=crm&amp;limit=25&amp;before=' in page


def test_the_list_carries_the_filters_into_paging_and_export_links(alice):
    client = logged_in(alice)
    chain.append_many([row for _ in range(3) for row in call_records()])
    page = client.get("/audit/?connection=crm&tool=add&limit=2").content.decode()
    assert 'href="?connection=crm&amp;tool=add&amp;limit=2&amp;before=' in page
    assert 'href="/api/audit/export.csv?connection=crm&amp;tool=add"' in page
    assert 'href="/api/audit/export.jsonl?connection=crm&amp;tool=add"' in page


# Detail and timeline.


def test_detail_page_pretty_prints_arguments_and_result_and_links_the_call(alice):
    client = logged_in(alice)
    request, outcome = chain.append_many(
        call_records(
            target="lookup",
            arguments={"email": "[EMAIL]", "filters": {"tags": ["vip", "<script>"]}},
            result={"content": [{"type": "text", "text": "card [CARD] on file"}]},
        )
    )
    page = client.get(f"/audit/{request.seq}/").content.decode()
    assert "&quot;email&quot;: &quot;[EMAIL]&quot;" in page
    assert "  &quot;filters&quot;: {\n    &quot;tags&quot;: [\n      &quot;vip&quot;," in page
    assert "&lt;script&gt;" in page and "<script>" not in page
    assert f'href="/audit/{outcome.seq}/"' in page
    assert f'href="/audit/sessions/{SESSION_A}/"' in page

    page = client.get(f"/audit/{outcome.seq}/").content.decode()
    assert "&quot;text&quot;: &quot;card [CARD] on file&quot;" in page
    assert f'href="/audit/{request.seq}/"' in page
    assert "12.500 ms" in page

    detail = client.get(f"/api/audit/{request.seq}/").json()
    assert detail["arguments"] == {"email": "[EMAIL]", "filters": {"tags": ["vip", "<script>"]}}
    assert detail["call_id"] == str(request.call_id)
    assert detail["hash"] == request.hash


def test_session_timeline_shows_the_sessions_calls_in_order(alice):
    client = logged_in(alice)
    mine: list[int] = []
    for i in range(3):
        mine += [r.seq for r in chain.append_many(call_records(target=f"step_{i}"))]
        chain.append_many(call_records(target="elsewhere", session=SESSION_B))
    response = client.get(f"/audit/sessions/{SESSION_A}/")
    assert [r.seq for r, _ in response.context["rows"]] == mine
    page = response.content.decode()
    assert page.index("step_0") < page.index("step_1") < page.index("step_2")
    assert "elsewhere" not in page


def test_session_timeline_pages_forward(alice, monkeypatch):
    from audit import views

    monkeypatch.setattr(views, "TIMELINE_PAGE", 4)
    client = logged_in(alice)
    mine = [r.seq for _ in range(5) for r in chain.append_many(call_records())]
    response = client.get(f"/audit/sessions/{SESSION_A}/")
    first = [r.seq for r, _ in response.context["rows"]]
    later = client.get(f"/audit/sessions/{SESSION_A}/{response.context['later_url']}")
    second = [r.seq for r, _ in later.context["rows"]]
    rest = client.get(f"/audit/sessions/{SESSION_A}/{later.context['later_url']}")
    assert first + second + [r.seq for r, _ in rest.context["rows"]] == mine
    assert rest.context["later_url"] is None


# Real calls through the gateway.


async def test_real_calls_through_the_gateway_are_found_by_the_api(
    alice, gateway: Server, shared_upstream: Server
):
    add_connection("audited", shared_upstream.url)
    agent = issue_token("alice", "--run", "audit-run")
    reader = issue_token("alice", "--scope", "api")
    async with mcp_client(f"{gateway.url}/mcp/audited", agent) as client:
        added = await client.call_tool("add", {"a": 20, "b": 22})
        assert added.structured_content == {"result": 42}
        await client.call_tool("weather", {"city": "Oslo"})

    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {reader}"}) as http:
        response = await http.get(f"{gateway.url}/api/audit/?connection=audited&tool=add")
    assert response.status_code == 200
    records = response.json()["results"]
    assert {r["target"] for r in records} == {"add"}
    by_kind = {r["kind"]: r for r in records}
    assert set(by_kind) == {"call.request", "call.outcome"}
    request, outcome = by_kind["call.request"], by_kind["call.outcome"]
    assert request["arguments"] == {"a": 20, "b": 22}
    assert request["call_id"] == outcome["call_id"]
    assert outcome["outcome"] == "ok"
    assert outcome["result"]["structuredContent"] == {"result": 42}
    assert outcome["run_label"] == "audit-run" and outcome["username"] == "alice"
    assert re.fullmatch(r"mgw_[0-9a-f]{12}…", outcome["token"])
