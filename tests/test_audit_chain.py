"""The audit trail's chain: append-only in the database, tamper-evident, fail-closed,
complete under concurrency, closable after a crash, and archivable.

Tampering is done the way an attacker with the database's superuser would do it: with
`session_replication_role = replica`, which switches the append-only triggers off.
"""

import asyncio
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.apps import apps
from django.conf import settings as django_settings
from django.core.management import CommandError, call_command
from django.db import DatabaseError, IntegrityError, connection, connections, transaction
from django.db.models import F
from django.utils.timezone import now

from audit import chain, checkpoints
from audit.canonical import GENESIS_HASH
from audit.models import AuditHead, AuditRecord, Kind, record_hash
from tests.conftest import ROOT, Server, add_connection, issue_token, start_gateway, stop
from tests.support.clients import mcp_client

MODERN = "2026-07-28"
CLIENT_META = {
    "io.modelcontextprotocol/protocolVersion": MODERN,
    "io.modelcontextprotocol/clientInfo": {"name": "audit-test", "version": "1"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


# -- helpers -----------------------------------------------------------------------------


@pytest.fixture
def signed(settings, tmp_path: Path) -> Iterator[Path]:
    """This test's own checkpoint directory and signing key; no automatic checkpoints."""
    directory = tmp_path / "checkpoints"
    settings.AUDIT = {
        **settings.AUDIT,
        "CHECKPOINT_DIR": str(directory),
        "SIGNING_KEY_FILE": str(tmp_path / "signing.pem"),
        "CREATE_SIGNING_KEY": True,
        "VERIFY_KEY_FILE": "",
        "CHECKPOINT_EVERY": 0,
    }
    # The key is cached per process; this test signs with its own.
    checkpoints.signing_key.cache_clear()
    yield directory
    checkpoints.signing_key.cache_clear()


def sample_row(i: int) -> dict[str, Any]:
    """Records with the kinds of values that must survive storage byte for byte."""
    kind = (Kind.CALL_REQUEST, Kind.CALL_OUTCOME, Kind.MESSAGE, Kind.EVENT)[i % 4]
    return {
        "kind": kind,
        "event": "test.event" if kind == Kind.EVENT else "",
        "call_id": chain.new_call_id() if kind != Kind.EVENT else None,
        "username": "alice",
        "token": "mgw_abcd…1234",
        "run_label": f"run-{i % 7}",
        "connection": "demo",
        "method": "tools/call",
        "target": "weather",
        "request_id": json.dumps(i),
        "arguments": {
            "i": i,
            "city": ["Zürich", "東京", "Ελλάδα", "😀 emoji"][i % 4],
            "small": 1e-7,
            "tenth": 0.1,
            "whole": 1.0,
            "negative_zero": -0.0,
            "huge_int": 2**64,
            "huge_float": 1.5e300,
            "nul": "a\x00b",
            "nested": {"\uff61": [1, 2, {"z": None, "a": True}], "😀": "x"},
            "empty": "",
        },
        "result": {"content": [{"type": "text", "text": f"result {i}"}]} if i % 2 else None,
        "result_size": 42 if i % 2 else None,
        "outcome": "ok" if kind == Kind.CALL_OUTCOME else "",
        "latency_ms": 12.345 + i / 1000 if kind == Kind.CALL_OUTCOME else None,
        "details": {"n": i},
    }


def typical_row(i: int) -> dict[str, Any]:
    """An everyday call record; every 100th is one of the awkward sample rows."""
    if i % 100 == 0:
        return sample_row(i)
    return {
        "kind": Kind.CALL_REQUEST if i % 2 else Kind.CALL_OUTCOME,
        "call_id": chain.new_call_id(),
        "username": "alice",
        "connection": "crm",
        "method": "tools/call",
        "target": "lookup",
        "arguments": {"customer_id": i},
        "outcome": "" if i % 2 else "ok",
    }


def make_chain(
    count: int, batch: int = 1000, row: Callable[[int], dict[str, Any]] = sample_row
) -> None:
    done = 0
    while done < count:
        size = min(batch, count - done)
        chain.append_many([row(done + n) for n in range(size)])
        done += size


def hash_of(seq: int) -> str:
    return AuditRecord.objects.get(seq=seq).hash


def sign(seq: int, kind: str = "checkpoint") -> checkpoints.Checkpoint:
    return checkpoints.write(seq, hash_of(seq), kind=kind)


def verify_command(*args: str) -> tuple[int, str, str]:
    out, err = StringIO(), StringIO()
    try:
        call_command("audit_verify", *args, stdout=out, stderr=err)
    except SystemExit as exc:
        return int(exc.code or 0), out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def failed_at(err: str) -> int | None:
    match = re.search(r"FAILED at sequence (\d+)", err)
    return int(match[1]) if match else None


@contextmanager
def bypassing_triggers() -> Iterator[None]:
    """As a superuser who switches the append-only triggers off."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL session_replication_role = origin")


def rechain(start: int) -> None:
    """Recompute prev_hash and hash from `start` to the end, as a careful forger would."""
    prev = hash_of(start - 1) if start > 1 else GENESIS_HASH
    for record in AuditRecord.objects.filter(seq__gte=start).order_by("seq"):
        record.prev_hash = prev
        new_hash = record_hash(record.field_values())
        AuditRecord.objects.filter(seq=record.seq).update(prev_hash=prev, hash=new_hash)
        prev = new_hash


def shift_up(start: int) -> None:
    """Move records start.. one place up, leaving a hole at `start` (avoiding key clashes)."""
    AuditRecord.objects.filter(seq__gte=start).update(seq=-F("seq") - 1)
    AuditRecord.objects.filter(seq__lt=0).update(seq=-F("seq"))


def forge(seq: int, prev_hash: str) -> None:
    values = {
        **sample_row(999),
        "seq": seq,
        "created_at": now(),
        "prev_hash": prev_hash,
    }
    values["arguments"] = {"forged": True}
    record = AuditRecord(**values)
    record.hash = record.compute_hash()
    record.save(force_insert=True)


def admin_conninfo(**overrides: str) -> str:
    db = django_settings.DATABASES["default"]
    params = {
        "host": db["HOST"] or "127.0.0.1",
        "port": str(db["PORT"] or 5432),
        "dbname": db["NAME"],
        "user": db["USER"] or "postgres",
        "password": db.get("PASSWORD") or "",
        **overrides,
    }
    return " ".join(f"{k}='{v}'" for k, v in params.items() if v)


def admin_sql(*statements: str) -> None:
    """Run statements as the test database's superuser, committed at once."""
    with psycopg.connect(admin_conninfo(), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)  # type: ignore[arg-type]


def needs_postgres() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("needs Postgres (set DATABASE_URL)")


# -- the database refuses changes -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_transaction_that_read_before_another_append_still_appends(default_isolation):
    """A console action reads and then audits in one transaction (an approval's decision
    does), and another writer (a gateway process) appends in between: the action's record
    goes after the other's, whatever isolation level the database gives new connections by
    default."""
    first = chain.append(**typical_row(1))

    def elsewhere() -> None:
        try:
            chain.append(**typical_row(2))
        finally:
            connection.close()

    with transaction.atomic():
        assert AuditHead.objects.get(id=1).seq == first.seq  # the transaction's snapshot
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join(timeout=30)
        ours = chain.append(**typical_row(3))

    assert ours.seq == first.seq + 2
    result = chain.verify()
    assert result.ok, result.error
    assert result.verified == 3


@pytest.mark.django_db
def test_postgres_triggers_refuse_update_delete_truncate():
    needs_postgres()
    chain.append(kind=Kind.EVENT, event="test.event")
    with connection.cursor() as cursor:
        cursor.execute("SET mcpgw.audit_archive = 'off'")
    statements = {
        "UPDATE": "UPDATE audit_auditrecord SET username = 'mallory'",
        "DELETE": "DELETE FROM audit_auditrecord",
        "TRUNCATE": "TRUNCATE audit_auditrecord",
    }
    for operation, statement in statements.items():
        with pytest.raises(DatabaseError, match=rf"append-only \({operation} refused\)"):
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(statement)
    # Archiving's switch lets DELETE through, never UPDATE.
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL mcpgw.audit_archive = 'on'")
    with pytest.raises(DatabaseError, match=r"append-only \(UPDATE refused\)"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statements["UPDATE"])
    assert AuditRecord.objects.filter(username="mallory").count() == 0


@pytest.mark.django_db
def test_large_values_are_compressed_with_lz4_where_postgres_has_it():
    needs_postgres()
    with connection.cursor() as cursor:
        cursor.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        if "lz4" not in cursor.fetchone()[0]:
            pytest.skip("this Postgres is built without lz4")
    text = "order 100042: paid 12.50 EUR, status shipped\n" * 300  # 14 KB that compresses
    record = chain.append(
        kind=Kind.CALL_OUTCOME, target="report", arguments={"text": text}, result={"text": text}
    )
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_column_compression(arguments), pg_column_compression(result) "
            "FROM audit_auditrecord WHERE seq = %s",
            [record.seq],
        )
        assert cursor.fetchone() == ("lz4", "lz4")
    stored = AuditRecord.objects.get(seq=record.seq)
    assert stored.result == {"text": text}
    assert stored.compute_hash() == stored.hash


@pytest.mark.django_db
def test_a_record_hash_has_its_unique_index_and_no_other():
    """Every record updates each index of the table: the hash keeps the one that makes it
    unique, not the LIKE-prefix index Django adds for a unique text column on Postgres."""
    needs_postgres()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'audit_auditrecord' "
            "AND indexdef LIKE '%%(hash%%'"
        )
        definitions = [definition for (definition,) in cursor.fetchall()]
    assert len(definitions) == 1, definitions
    assert definitions[0].startswith("CREATE UNIQUE INDEX")
    record = chain.append(kind=Kind.EVENT, event="test.event")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditrecord (seq, created_at, kind, event, username, token, "
            "run_label, subject, client_address, user_agent, connection, session, era, "
            "method, target, request_id, result_digest, outcome, details, prev_hash, hash) "
            "VALUES (%s, now(), 'event', 'copy', '', '', '', '', '', '', '', '', '', '', '', "
            "'', '', '', '{}', %s, %s)",
            [record.seq + 1, record.hash, record.hash],
        )


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    return {**env, "DATA_DIR": str(data_dir)}


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sqlite_triggers_refuse_update_and_delete(tmp_path):
    env = embedded_env(tmp_path)
    migrated = manage(env, "migrate", "--noinput", "-v0")
    assert migrated.returncode == 0, migrated.stderr
    appended = manage(
        env, "shell", "-c", "from audit import chain; chain.append(kind='event', event='x')"
    )
    assert appended.returncode == 0, appended.stderr
    db = sqlite3.connect(tmp_path / "gateway.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match=r"append-only \(UPDATE refused\)"):
        db.execute("UPDATE audit_auditrecord SET username = 'mallory'")
    with pytest.raises(sqlite3.IntegrityError, match=r"append-only \(DELETE refused\)"):
        db.execute("DELETE FROM audit_auditrecord")
    db.rollback()
    assert db.execute("SELECT count(*), max(username) FROM audit_auditrecord").fetchone() == (1, "")
    db.close()


EMBEDDED_APPENDS = """
import asyncio
from audit import chain, writer

async def calls():
    # Calls of the serving process share transactions; others append on their own.
    await asyncio.gather(*(
        writer.append(kind="call_request", connection="demo", method="tools/call",
                      target=f"tool-{n}", arguments={"n": n, "card": "4111 1111 1111 1111"},
                      latency_ms=1.5 * n)
        for n in range(300)
    ))

chain.append(kind="event", event="first")
asyncio.run(calls())
chain.append_many([{"kind": "event", "event": f"batch-{n}"} for n in range(1500)])
"""


def test_the_embedded_default_writes_a_chain_that_verifies(tmp_path):
    """SQLite (no DATABASE_URL): single appends, group commits of concurrent calls and a
    batch larger than one INSERT takes make one gap-free chain that audit_verify accepts."""
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "--noinput", "-v0").returncode == 0
    appended = manage(env, "shell", "-c", EMBEDDED_APPENDS)
    assert appended.returncode == 0, appended.stderr
    verified = manage(env, "audit_verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("OK: 1801 records verified (sequence 1..1801)")
    db = sqlite3.connect(tmp_path / "gateway.sqlite3")
    head = db.execute("SELECT seq, hash FROM audit_audithead WHERE id = 1").fetchone()
    last = db.execute("SELECT seq, hash FROM audit_auditrecord ORDER BY seq DESC").fetchone()
    stored = db.execute("SELECT arguments, latency_ms FROM audit_auditrecord WHERE seq = 2")
    arguments, latency = stored.fetchone()
    db.close()
    assert head == last
    assert json.loads(arguments)["card"] == "4111 1111 1111 1111"
    assert isinstance(latency, float)


# -- tampering is detected ---------------------------------------------------------------

CHAIN_LENGTH = 30
CHECKPOINT_AT = 20


def edit_field(seq: int) -> Callable[[], None]:
    def tamper() -> None:
        AuditRecord.objects.filter(seq=seq).update(arguments={"city": "Atlantis"})

    return tamper


def edit_and_rehash(seq: int) -> Callable[[], None]:
    def tamper() -> None:
        record = AuditRecord.objects.get(seq=seq)
        record.arguments = {"city": "Atlantis"}
        AuditRecord.objects.filter(seq=seq).update(
            arguments=record.arguments, hash=record.compute_hash()
        )

    return tamper


def rewrite_history(seq: int) -> Callable[[], None]:
    def tamper() -> None:
        AuditRecord.objects.filter(seq=seq).update(arguments={"city": "Atlantis"})
        rechain(seq)

    return tamper


def delete_row(seq: int) -> Callable[[], None]:
    def tamper() -> None:
        AuditRecord.objects.filter(seq=seq).delete()

    return tamper


def insert_forged(seq: int, *, rehash_rest: bool) -> Callable[[], None]:
    def tamper() -> None:
        shift_up(seq)
        forge(seq, hash_of(seq - 1))
        if rehash_rest:
            rechain(seq + 1)

    return tamper


def append_forged_unlinked() -> None:
    """A row added at the end by copying an existing row's links."""
    forge(CHAIN_LENGTH + 1, hash_of(CHECKPOINT_AT))


def append_forged_with_gap() -> None:
    forge(CHAIN_LENGTH + 2, hash_of(CHAIN_LENGTH))


def swap(a: int, b: int) -> Callable[[], None]:
    """Reorder: records a and b exchange places."""

    def tamper() -> None:
        AuditRecord.objects.filter(seq=a).update(seq=-1)
        AuditRecord.objects.filter(seq=b).update(seq=a)
        AuditRecord.objects.filter(seq=-1).update(seq=b)

    return tamper


def cut_tail(start: int) -> Callable[[], None]:
    def tamper() -> None:
        AuditRecord.objects.filter(seq__gte=start).delete()

    return tamper


TAMPERING = {
    # name: (tamper, first bad seq, what the message says)
    "field edited": (edit_field(7), 7, "was altered"),
    "field edited, its hash recomputed": (edit_and_rehash(7), 8, "does not follow record 7"),
    "history rewritten and re-chained": (
        rewrite_history(7),
        CHECKPOINT_AT,
        "differs from signed checkpoint",
    ),
    "row deleted": (delete_row(7), 7, "record 7 is missing"),
    "first row deleted": (delete_row(1), 1, "record 1 is missing"),
    "last signed row deleted": (
        delete_row(CHECKPOINT_AT),
        CHECKPOINT_AT,
        f"record {CHECKPOINT_AT} is missing",
    ),
    "forged row inserted, later rows shifted": (
        insert_forged(7, rehash_rest=False),
        8,
        "does not follow record 7",
    ),
    "forged row inserted, later rows shifted and re-chained": (
        insert_forged(7, rehash_rest=True),
        CHECKPOINT_AT,
        "differs from signed checkpoint",
    ),
    "forged row inserted after the checkpoint": (
        insert_forged(CHECKPOINT_AT + 2, rehash_rest=False),
        CHECKPOINT_AT + 3,
        "does not follow",
    ),
    "forged row appended, not linked to the last": (
        append_forged_unlinked,
        CHAIN_LENGTH + 1,
        "does not follow",
    ),
    "forged row appended past a gap": (
        append_forged_with_gap,
        CHAIN_LENGTH + 1,
        f"record {CHAIN_LENGTH + 1} is missing",
    ),
    "two rows swapped": (swap(5, 9), 5, "does not follow record 4"),
    "tail cut through the last checkpoint": (
        cut_tail(15),
        15,
        f"records 15..{CHECKPOINT_AT} are missing",
    ),
    "everything deleted": (cut_tail(1), 1, f"records 1..{CHECKPOINT_AT} are missing"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", list(TAMPERING))
def test_verify_names_the_first_tampered_record(signed, case):
    needs_postgres()
    make_chain(CHAIN_LENGTH)
    sign(CHECKPOINT_AT)
    assert verify_command()[0] == 0
    tamper, bad_seq, message = TAMPERING[case]
    with bypassing_triggers():
        tamper()
    code, out, err = verify_command()
    assert code == 1, out
    assert failed_at(err) == bad_seq, err
    assert message in err


@pytest.mark.django_db
def test_forged_checkpoint_fails_verification(signed):
    make_chain(10)
    checkpoint = sign(10)
    path = signed / f"checkpoint-{checkpoint.seq:012d}.json"
    forged = json.loads(path.read_text())
    forged["head_hash"] = "f" * 64
    path.write_text(json.dumps(forged))
    code, _out, err = verify_command()
    assert code == 1
    assert f"{path.name} is not validly signed" in err


def run_verify_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return manage(env, "audit_verify", *args)


@pytest.mark.django_db(transaction=True)
def test_verify_cli_exits_nonzero_naming_the_record(signed, tmp_path):
    needs_postgres()
    make_chain(CHAIN_LENGTH)
    sign(CHECKPOINT_AT)
    db = django_settings.DATABASES["default"]
    env = {
        **os.environ,
        "DATABASE_URL": (
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        ),
        "DATA_DIR": str(tmp_path),
        "AUDIT_CHECKPOINT_DIR": str(signed),
        "AUDIT_SIGNING_KEY_FILE": str(tmp_path / "signing.pem"),
    }
    intact = run_verify_cli(env)
    assert intact.returncode == 0, intact.stderr
    assert f"OK: {CHAIN_LENGTH} records verified" in intact.stdout
    admin_sql(
        "BEGIN",
        "SET LOCAL session_replication_role = replica",
        "UPDATE audit_auditrecord SET username = 'mallory' WHERE seq = 12",
        "COMMIT",
    )
    tampered = run_verify_cli(env)
    assert tampered.returncode == 1
    assert "FAILED at sequence 12" in tampered.stderr


@pytest.mark.django_db
def test_verify_since_starts_mid_chain(signed):
    make_chain(CHAIN_LENGTH)
    sign(CHECKPOINT_AT)
    code, out, _err = verify_command("--since", "11")
    assert code == 0
    assert f"OK: {CHAIN_LENGTH - 10} records verified (sequence 11..{CHAIN_LENGTH})" in out


# -- gaps in what verify checks (known; see the notes in each test) ---------------------


@pytest.mark.django_db
def test_tail_cut_after_the_last_checkpoint_is_detected_by_the_head(signed):
    needs_postgres()
    make_chain(CHAIN_LENGTH)
    sign(CHECKPOINT_AT)
    with bypassing_triggers():
        cut_tail(CHECKPOINT_AT + 1)()
    assert AuditHead.objects.get(pk=1).seq == CHAIN_LENGTH
    code, _out, err = verify_command()
    assert code == 1
    assert failed_at(err) == CHECKPOINT_AT + 1


@pytest.mark.django_db
def test_records_left_before_the_anchor_do_not_fail_verification(signed):
    make_chain(CHAIN_LENGTH)
    sign(CHECKPOINT_AT)
    sign(10, kind="anchor")
    code, out, err = verify_command()
    assert code == 0, err
    assert f"(sequence 11..{CHAIN_LENGTH})" in out


# -- an intact chain verifies, at size ------------------------------------------------------

LARGE_CHAIN = 100_000


@pytest.mark.django_db
def test_untouched_chain_of_100k_records_verifies(signed):
    started = time.perf_counter()
    make_chain(LARGE_CHAIN, batch=5000, row=typical_row)
    appended = time.perf_counter() - started
    sign(LARGE_CHAIN)
    started = time.perf_counter()
    code, out, err = verify_command()
    verified = time.perf_counter() - started
    assert code == 0, err
    assert f"OK: {LARGE_CHAIN} records verified (sequence 1..{LARGE_CHAIN})" in out
    assert "1 signed checkpoints matched" in out
    print(f"\nappend {LARGE_CHAIN} records: {appended:.1f} s; verify: {verified:.1f} s; {out}")


# -- through the real gateway --------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def calls_are_closed() -> bool:
    return (
        AuditRecord.objects.filter(kind=Kind.CALL_REQUEST).count()
        == AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME).count()
    )


def cities_seen(server: Server) -> list[str]:
    return [
        r["headers"].get("mcp-param-city", "")
        for r in server.seen()
        if r["rpc_method"] == "tools/call"
    ]


def recorded_cities() -> list[str]:
    return [
        (arguments or {}).get("city", "")
        for arguments in AuditRecord.objects.filter(
            kind=Kind.CALL_REQUEST, method="tools/call"
        ).values_list("arguments", flat=True)
    ]


async def test_concurrent_calls_leave_one_gap_free_chain(
    alice, signed, gateway: Server, demo_upstream: Server
):
    needs_postgres()
    add_connection("busy", demo_upstream.url)
    token = issue_token("alice", "--run", "concurrency")
    url = f"{gateway.url}/mcp/busy"

    async def agent(number: int, mode: str) -> list[dict[str, Any]]:
        async with mcp_client(url, token, mode) as client:
            await client.list_tools()
            results = await asyncio.gather(
                *(
                    client.call_tool("weather", {"city": f"agent{number}-call{i}"})
                    for i in range(25)
                )
            )
        return [r.structured_content for r in results]

    modes = [MODERN, "legacy", MODERN, "legacy"]
    answers = await asyncio.gather(*(agent(n, mode) for n, mode in enumerate(modes)))
    expected = {f"agent{n}-call{i}" for n in range(4) for i in range(25)}
    assert {a["city"] for answer in answers for a in answer} == expected

    # Outcomes are recorded just after the answer leaves the gateway.
    assert wait_for(calls_are_closed), "some calls have no outcome record"
    seqs = list(AuditRecord.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    per_call = Counter(
        AuditRecord.objects.filter(call_id__isnull=False).values_list("call_id", "kind")
    )
    call_ids = {call_id for call_id, _kind in per_call}
    assert len(call_ids) > 100  # the calls, and each agent's initialize or discovery
    for call_id in call_ids:
        assert per_call[(call_id, Kind.CALL_REQUEST)] == 1
        assert per_call[(call_id, Kind.CALL_OUTCOME)] == 1
    assert sorted(recorded_cities()) == sorted(expected)
    assert len(cities_seen(demo_upstream)) == len(expected)
    code, out, err = verify_command()
    assert code == 0, err
    assert f"OK: {len(seqs)} records verified" in out


@pytest.fixture
def runtime_role(transactional_db: None) -> Iterator[tuple[str, str]]:
    """A login role with exactly the grants `audit_grant_sql` prints; dropped afterwards."""
    needs_postgres()
    role = f"mcpgw_runtime_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(16)
    grants = StringIO()
    call_command("audit_grant_sql", "--role", role, stdout=grants)
    admin_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", grants.getvalue())
    try:
        yield role, password
    finally:
        admin_sql(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"DROP OWNED BY {role}",
            f"DROP ROLE {role}",
        )


def test_runtime_role_cannot_change_the_trail(runtime_role):
    role, password = runtime_role
    chain.append(kind=Kind.EVENT, event="test.event")
    refused = {
        "UPDATE audit_auditrecord SET username = 'mallory'",
        "DELETE FROM audit_auditrecord",
        "TRUNCATE audit_auditrecord",
        "ALTER TABLE audit_auditrecord DISABLE TRIGGER USER",
        "DELETE FROM audit_audithead",
    }
    with psycopg.connect(admin_conninfo(user=role, password=password)) as conn:
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SET LOCAL mcpgw.audit_archive = 'on'")
                conn.execute(statement)  # type: ignore[arg-type]
        assert conn.execute("SELECT count(*) FROM audit_auditrecord").fetchone() == (1,)
    assert AuditRecord.objects.count() == 1


def parse_answer(response: httpx.Response, request_id: int) -> dict[str, Any] | None:
    """The JSON-RPC answer in a JSON or an SSE response, or None if there is none."""
    if not response.content:
        return None
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:])
                if message.get("id") == request_id:
                    return message
        return None
    return response.json()


async def test_calls_fail_closed_while_the_trail_cannot_be_written(
    alice, signed, runtime_role, tmp_path, demo_upstream: Server
):
    role, password = runtime_role
    db = django_settings.DATABASES["default"]
    AuditHead.objects.get_or_create(pk=1, defaults={"seq": 0, "hash": GENESIS_HASH})
    add_connection("strict", demo_upstream.url)
    token = issue_token("alice", "--run", "fail-closed")
    gateway = start_gateway(
        tmp_path,
        DATABASE_URL=(
            f"postgres://{role}:{password}@{db['HOST'] or '127.0.0.1'}:"
            f"{db['PORT'] or 5432}/{db['NAME']}"
        ),
    )
    url = f"{gateway.url}/mcp/strict"
    phase = ["before"]
    attempts: list[dict[str, Any]] = []
    stop_calls = asyncio.Event()

    async def agent(number: int) -> None:
        headers = {
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": MODERN,
            "mcp-method": "tools/call",
            "mcp-name": "weather",
        }
        async with httpx.AsyncClient(timeout=30) as http:
            i = 0
            while not stop_calls.is_set():
                i += 1
                city = f"agent{number}-call{i}"
                attempt: dict[str, Any] = {"city": city, "started": phase[0]}
                attempts.append(attempt)
                body = {
                    "jsonrpc": "2.0",
                    "id": i,
                    "method": "tools/call",
                    "params": {
                        "name": "weather",
                        "arguments": {"city": city},
                        "_meta": CLIENT_META,
                    },
                }
                try:
                    response = await http.post(
                        url, json=body, headers={**headers, "mcp-param-city": city}
                    )
                    attempt["status"] = response.status_code
                    attempt["answer"] = parse_answer(response, i)
                except httpx.HTTPError as exc:
                    attempt["exception"] = repr(exc)
                attempt["ended"] = phase[0]
                await asyncio.sleep(0.02)

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 60
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {attempts}"
            await asyncio.sleep(0.05)

    def finished(started: str, ok: bool | None = None) -> int:
        return sum(
            1
            for a in attempts
            if a["started"] == started
            and "ended" in a
            and (ok is None or ((a.get("answer") or {}).get("result") is not None) == ok)
        )

    agents = [asyncio.create_task(agent(n)) for n in range(3)]
    try:
        await until(lambda: finished("before", ok=True) >= 6, "calls to succeed")
        await asyncio.to_thread(admin_sql, f"REVOKE INSERT ON audit_auditrecord FROM {role}")
        phase[0] = "revoked"
        await until(lambda: finished("revoked") >= 6, "calls while the trail is read-only")
        phase[0] = "restoring"
        await asyncio.to_thread(admin_sql, f"GRANT INSERT ON audit_auditrecord TO {role}")
        phase[0] = "granted"
        await until(lambda: finished("granted", ok=True) >= 6, "calls to succeed again")
    finally:
        stop_calls.set()
        await asyncio.gather(*agents, return_exceptions=True)
        stop(gateway.process)
    try:
        check_fail_closed(attempts, tmp_path, demo_upstream)
    finally:
        # This test's own database connection, which Django would leave open.
        connections.close_all()


def check_fail_closed(attempts: list[dict[str, Any]], tmp_path: Path, upstream: Server) -> None:
    log = next(tmp_path.glob("gateway-*.log")).read_text()
    for attempt in attempts:
        # Never a hang, never a 500, never an answer without a JSON-RPC body.
        assert "exception" not in attempt, attempt
        answer = attempt["answer"]
        assert answer is not None and answer.get("jsonrpc") == "2.0", attempt
        assert ("result" in answer) != ("error" in answer), attempt
        if "error" in answer:
            assert attempt["status"] == 503, attempt
            assert answer["error"]["code"] == -32603, attempt
            assert "cannot record this call" in answer["error"]["message"]
        else:
            assert attempt["status"] == 200, attempt
    while_revoked = [a for a in attempts if a["started"] == a["ended"] == "revoked"]
    assert while_revoked
    assert all("error" in a["answer"] for a in while_revoked), while_revoked
    after = [a for a in attempts if a["started"] == "granted"]
    assert after and all("result" in a["answer"] for a in after), after
    assert "audit write failed; refusing the call" in log

    # No call reached the upstream without a committed request record, and every call
    # refused by the gateway stayed away from the upstream.
    seen = cities_seen(upstream)
    recorded = recorded_cities()
    assert len(seen) == len(set(seen))
    assert sorted(seen) == sorted(recorded)
    refused = {a["city"] for a in attempts if "error" in a["answer"]}
    answered = {a["city"] for a in attempts if "result" in a["answer"]}
    assert refused and not refused & set(seen)
    assert answered <= set(seen)

    seqs = list(AuditRecord.objects.order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    code, _out, err = verify_command()
    assert code == 0, err


def post_modern(url: str, token: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        url,
        content=json.dumps(body),
        headers={
            "authorization": f"Bearer {token}",
            "accept": "application/json, text/event-stream",
            "content-type": "application/json",
            "mcp-protocol-version": MODERN,
        },
        timeout=30,
    )


@pytest.mark.parametrize(
    ("method", "tool"),
    [("tools/" + "x" * 300, "weather"), ("tools/call", "weather\x00")],
    ids=["method-longer-than-200", "nul-in-tool-name"],
)
def test_odd_but_valid_requests_are_recorded_not_refused(
    alice, signed, gateway: Server, demo_upstream: Server, method, tool
):
    needs_postgres()
    add_connection("odd", demo_upstream.url)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {"name": tool, "arguments": {"city": "Oslo"}, "_meta": CLIENT_META},
    }
    response = post_modern(f"{gateway.url}/mcp/odd", issue_token("alice"), body)
    answer = parse_answer(response, 1)
    assert answer is not None
    assert "cannot record" not in json.dumps(answer)
    assert AuditRecord.objects.filter(kind=Kind.CALL_REQUEST).count() == 1
    assert any(r["rpc_method"] not in ("server/discover", None) for r in demo_upstream.seen())


def test_lone_surrogate_in_arguments_gets_a_json_rpc_answer(
    alice, signed, gateway: Server, demo_upstream: Server
):
    needs_postgres()
    add_connection("odd", demo_upstream.url)
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "weather", "arguments": {"city": "\ud800"}, "_meta": CLIENT_META},
    }
    response = post_modern(f"{gateway.url}/mcp/odd", issue_token("alice"), body)
    answer = parse_answer(response, 1)
    assert response.status_code != 500
    assert answer is not None and answer.get("id") == 1
    assert "cannot record" not in json.dumps(answer)
    assert wait_for(calls_are_closed), "a call was left without an outcome"


# -- reconciling calls left open ---------------------------------------------------------------


def reconcile(*args: str) -> str:
    out = StringIO()
    call_command("audit_reconcile", *args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_reconcile_closes_each_open_call_once(signed):
    lost, answered = chain.new_call_id(), chain.new_call_id()
    for call_id in (lost, answered):
        chain.append(kind=Kind.CALL_REQUEST, call_id=call_id, method="tools/call", target="add")
    chain.append(kind=Kind.CALL_OUTCOME, call_id=answered, outcome="ok", method="tools/call")

    assert "closed 0 open call(s)" in reconcile("--older-than", "3600")
    assert "closed 1 open call(s) as unknown" in reconcile("--older-than", "0")
    assert "closed 0 open call(s)" in reconcile("--older-than", "0")

    closing = AuditRecord.objects.get(kind=Kind.CALL_OUTCOME, call_id=lost)
    request = AuditRecord.objects.get(kind=Kind.CALL_REQUEST, call_id=lost)
    assert closing.outcome == "unknown"
    assert (closing.method, closing.target) == ("tools/call", "add")
    assert closing.details["request_seq"] == request.seq
    assert AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, call_id=answered).count() == 1
    assert verify_command()[0] == 0


# -- archiving ---------------------------------------------------------------------------------


def archive(*args: str) -> str:
    out = StringIO()
    call_command("audit_archive", *args, stdout=out)
    return out.getvalue()


def read_archive(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.django_db
def test_archive_moves_old_records_and_verify_still_passes(signed, tmp_path):
    make_chain(50)
    first_checkpoint = sign(25)
    second_checkpoint = sign(40)
    originals = {r.seq: r.hash for r in AuditRecord.objects.filter(seq__lt=31)}
    output = tmp_path / "audit-1.jsonl"

    printed = archive("--before", "31", "--output", str(output))
    assert "archived 30 records (1..30)" in printed

    assert not AuditRecord.objects.filter(seq__lt=31).exists()
    code, out, err = verify_command()
    assert code == 0, err
    assert "OK: 21 records verified (sequence 31..51)" in out  # 51: the archive event
    event = AuditRecord.objects.get(seq=51)
    assert (event.kind, event.event) == (Kind.EVENT, "audit.archive")
    assert event.details["records"] == 30
    assert event.details["last_hash"] == originals[30]
    anchor = checkpoints.load_all().anchor
    assert anchor is not None and (anchor.seq, anchor.head_hash) == (30, originals[30])

    lines = read_archive(output)
    assert lines[0]["type"] == "archive"
    assert (lines[0]["first_seq"], lines[0]["last_seq"]) == (1, 30)
    assert lines[-1] == {"type": "end", "records": 30, "last_hash": originals[30]}
    signed_in_file = [(c["seq"], c["head_hash"]) for c in lines if c["type"] == "checkpoint"]
    assert signed_in_file == [
        (first_checkpoint.seq, first_checkpoint.head_hash),
        (second_checkpoint.seq, second_checkpoint.head_hash),
    ]
    records = [line for line in lines if line["type"] == "record"]
    assert {r["seq"]: r["hash"] for r in records} == originals
    # The file verifies on its own: every record re-hashes and links to the one before.
    prev = GENESIS_HASH
    for record in records:
        assert record["prev_hash"] == prev
        assert record_hash(record) == record["hash"]
        prev = record["hash"]

    # A second archive starts at the anchor left by the first.
    second = tmp_path / "audit-2.jsonl"
    archive("--before", "40", "--output", str(second))
    lines = read_archive(second)
    assert lines[0]["prev_hash"] == originals[30]
    assert [c["kind"] for c in lines if c["type"] == "checkpoint"] == ["anchor", "checkpoint"]
    assert [r["seq"] for r in lines if r["type"] == "record"] == list(range(31, 40))
    code, out, err = verify_command()
    assert code == 0, err
    assert "(sequence 40..52)" in out


@pytest.mark.django_db
def test_archive_refuses_unsigned_records_and_existing_files(signed, tmp_path):
    make_chain(30)
    output = tmp_path / "audit.jsonl"
    with pytest.raises(CommandError, match="beyond the latest signed checkpoint"):
        archive("--before", "10", "--output", str(output))
    sign(20)
    with pytest.raises(CommandError, match=r"--before 21 is beyond the latest signed checkpoint"):
        archive("--before", "21", "--output", str(output))
    with pytest.raises(CommandError, match="nothing to archive"):
        archive("--before", "1", "--output", str(output))
    output.write_text("keep me\n")
    with pytest.raises(CommandError, match="already exists"):
        archive("--before", "10", "--output", str(output))
    assert output.read_text() == "keep me\n"
    assert AuditRecord.objects.count() == 30
    assert not list(signed.glob("anchor-*"))


@pytest.mark.django_db
def test_archive_refuses_a_chain_that_does_not_verify(signed, tmp_path):
    needs_postgres()
    make_chain(30)
    sign(20)
    with bypassing_triggers():
        edit_field(5)()
    output = tmp_path / "audit.jsonl"
    with pytest.raises(CommandError, match="does not verify"):
        archive("--before", "10", "--output", str(output))
    assert not output.exists()
    assert AuditRecord.objects.count() == 30
    assert not list(signed.glob("anchor-*"))


@pytest.mark.django_db
def test_archive_waits_for_siem_sinks_to_catch_up(signed, tmp_path):
    try:
        sink_model = apps.get_model("audit", "SiemSink")
    except LookupError:
        pytest.skip("no SIEM sinks in this build")
    make_chain(30)
    sign(20)
    sink = sink_model.objects.create(name="soc", kind="http", url="https://siem.example/in")
    sink_model.objects.filter(pk=sink.pk).update(cursor=5)
    output = tmp_path / "audit.jsonl"
    with pytest.raises(CommandError, match="soc have not yet received every record up to 9"):
        archive("--before", "10", "--output", str(output))
    assert AuditRecord.objects.count() == 30 and not output.exists()
    sink_model.objects.filter(pk=sink.pk).update(cursor=9)
    assert "archived 9 records" in archive("--before", "10", "--output", str(output))


def test_archive_on_sqlite_keeps_the_delete_trigger(tmp_path):
    env = embedded_env(tmp_path)
    assert manage(env, "migrate", "--noinput", "-v0").returncode == 0
    script = (
        "from audit import chain, checkpoints;"
        "from audit.models import AuditRecord;"
        "chain.append_many([{'kind': 'event', 'event': f'e{i}'} for i in range(30)]);"
        "checkpoints.write(20, AuditRecord.objects.get(seq=20).hash)"
    )
    made = manage(env, "shell", "-c", script)
    assert made.returncode == 0, made.stderr
    output = tmp_path / "archive.jsonl"
    archived = manage(env, "audit_archive", "--before", "11", "--output", str(output))
    assert archived.returncode == 0, archived.stderr
    verified = manage(env, "audit_verify")
    assert verified.returncode == 0, verified.stderr
    assert "OK: 21 records verified (sequence 11..31)" in verified.stdout
    assert len([r for r in read_archive(output) if r["type"] == "record"]) == 10
    db = sqlite3.connect(tmp_path / "gateway.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match=r"append-only \(DELETE refused\)"):
        db.execute("DELETE FROM audit_auditrecord")
    db.close()
