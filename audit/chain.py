"""Appending to the audit chain, and verifying it."""

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from functools import cache
from typing import Any

from django.conf import settings
from django.db import connections, transaction
from django.db.models.base import ModelState
from django.db.models.signals import post_init, pre_init
from django.utils.timezone import now
from psycopg.types.json import Json

from mcpgw.db import backend

from . import checkpoints
from .canonical import GENESIS_HASH, canonical, chain_hash_bytes, plain_canonical, storable
from .models import HASHED_FIELDS, AuditHead, AuditRecord, hash_body, record_hash

JSON_FIELDS = ("arguments", "result", "masking", "details")


def _head_for_update() -> tuple[int, str]:
    """The chain head's sequence number and hash, locked until the transaction ends."""
    database = connections[AuditHead.objects.db]
    with database.cursor() as cursor:
        cursor.execute(head_statement())
        found = cursor.fetchone()
    if found is not None:
        return found[0], found[1]
    # The migration creates the head; this only runs on a database that lost it.
    AuditHead.objects.get_or_create(pk=1, defaults={"seq": 0, "hash": GENESIS_HASH})
    head = AuditHead.objects.select_for_update().get(pk=1)
    return head.seq, head.hash


def append(**fields: Any) -> AuditRecord:
    """Append one record, committed with the caller's transaction (or its own).

    Appends are serialized on the chain head, so concurrent writers produce one gap-free
    chain. A failure raises: callers on the data path fail closed.
    """
    return append_many([fields])[0]


def append_many(rows: list[dict[str, Any]]) -> list[AuditRecord]:
    if not rows:
        return []
    with transaction.atomic():
        head_seq, head_hash = _head_for_update()
        records = build(rows, head_seq, head_hash)
        _insert_and_move_head(records)
        if crosses_checkpoint(head_seq, records):
            seq, head = records[-1].seq, records[-1].hash
            transaction.on_commit(lambda: checkpoints.write(seq, head))
    return records


def build(rows: list[dict[str, Any]], head_seq: int, head_hash: str) -> list[AuditRecord]:
    """The records that follow the head, each hashed over its predecessor.

    Where a record's canonical bytes, which its hash covers, are plain JSON
    (`plain_canonical`), they also make its row for `rows_json`: encoded once, not twice."""
    records = []
    seq, prev_hash = head_seq, head_hash
    stamp = now()
    utc = stamp if stamp.tzinfo is UTC else stamp.astimezone(UTC)
    stamp_text = utc.isoformat(timespec="microseconds")
    plain_init = not (pre_init.has_listeners(AuditRecord) or post_init.has_listeners(AuditRecord))
    for fields in rows:
        seq += 1
        unknown = fields.keys() - _DEFAULT_ROW.keys()
        if unknown:
            raise TypeError(f"audit records have no field {', '.join(sorted(unknown))}")
        for name in JSON_FIELDS:
            value = fields.get(name)
            if value is not None:
                fields[name] = storable(value)
        # Every column, in the model's order: defaults first, then the given values.
        values = {**_DEFAULT_ROW, "details": {}, **fields}
        values["seq"], values["created_at"], values["prev_hash"] = seq, stamp, prev_hash
        # The batch's time as text once, not once per record.
        body = hash_body({**values, "created_at": stamp_text})
        data = plain_canonical(body)
        values["hash"] = prev_hash = chain_hash_bytes(
            prev_hash, data if data is not None else canonical(body)
        )
        record = _instance(values) if plain_init else AuditRecord(*values.values())
        if data is not None and _ROW_IS_BODY:
            # Bytes, as they are sent: a record whose text holds any character beyond Latin-1
            # (a token's display ends in an ellipsis) would otherwise be a string of two or
            # four bytes per character, decoded here and encoded again to be sent.
            hashes = (record.prev_hash.encode("ascii"), record.hash.encode("ascii"))
            row = b'%s,"prev_hash":"%s","hash":"%s"}' % (data[:-1], *hashes)
            record._row_json = row  # type: ignore[attr-defined]
        records.append(record)
    return records


def _instance(values: dict[str, Any]) -> AuditRecord:
    """An unsaved record with these values of all of its fields: what `Model.__init__`
    makes of them for a model without relations, and without anything listening to its
    init signals (`build` checks), in a fifth of its time."""
    record = AuditRecord.__new__(AuditRecord)
    record.__dict__.update(values)
    record._state = ModelState()
    return record


def crosses_checkpoint(head_seq: int, records: list[AuditRecord]) -> bool:
    every = settings.AUDIT["CHECKPOINT_EVERY"]
    return bool(every) and records[-1].seq // every > head_seq // every


def _insert_and_move_head(records: list[AuditRecord]) -> None:
    """The records and the new chain head as plain statements, without the ORM's per-call
    compiling (every call's records go this way)."""
    database = connections[AuditRecord.objects.db]
    if database.vendor == "postgresql":
        statement, params = insert_statement(records)
        with database.cursor() as cursor:
            cursor.execute(statement, params)
        return
    table, head = _tables()
    # As many rows per INSERT as the backend takes parameters (SQLite limits them).
    batch = database.ops.bulk_batch_size(AuditRecord._meta.concrete_fields, records)
    with database.cursor() as cursor:
        for first in range(0, len(records), batch):
            columns, values, params = _values(records[first : first + batch])
            cursor.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", params)  # noqa: S608
        cursor.execute(
            f"UPDATE {head} SET seq = %s, hash = %s WHERE id = 1",  # noqa: S608
            [records[-1].seq, records[-1].hash],
        )


def head_statement(*, lock: bool = True) -> str:
    """The chain head's sequence number and hash, locked until the transaction ends: where
    the database has row locks (Postgres) by the lock taken here, on SQLite by the write
    lock that the transaction took when it began (Django begins them IMMEDIATE, see
    settings). Without `lock`: the head as committed now."""
    database = backend(AuditHead.objects.db)
    table = database.ops.quote_name(AuditHead._meta.db_table)
    locked = " FOR UPDATE" if lock and database.features.has_select_for_update else ""
    return f"SELECT seq, hash FROM {table} WHERE id = 1{locked}"  # noqa: S608


def insert_statement(records: list[AuditRecord]) -> tuple[str, list[Any]]:
    """Postgres: the records and the new chain head in one statement (one round trip, none
    of the ORM's per-row compiling on the data path's hottest write)."""
    columns, recordset = _recordset()
    table, head = _tables()
    statement = (
        f"WITH inserted AS (INSERT INTO {table} ({columns}) "  # noqa: S608
        f"SELECT {columns} FROM {recordset} RETURNING 1) "
        f"UPDATE {head} SET seq = %s, hash = %s WHERE id = 1"
    )
    return statement, [_json_parameter(records), records[-1].seq, records[-1].hash]


def append_at_statement(records: list[AuditRecord], head: tuple[int, str]) -> tuple[str, list[Any]]:
    """Postgres: the records appended after `head`, which the caller read earlier, as one
    statement that needs no transaction around it: it moves the chain head only if the head
    is still `head` (waiting for a writer that holds it), and inserts the records only if
    it moved it. So no lock is held between reading the head and writing after it, and
    nothing is written after a head that another writer has moved since: the statement then
    inserts no row.

    It answers one row: how many records it inserted, and the chain head as the statement
    found it when it began (not as it moved it). When another writer (another gateway
    process, the console) had moved the head before that, this is their head, and the
    caller may build its records after it and send them again, without a lock. When the
    head was moved while the statement ran (it waited for that writer's lock), this is
    `head` itself, and the caller reads where the head is now (`head_statement`, without
    its lock)."""
    params = [records[-1].seq, records[-1].hash, head[0], head[1], _json_parameter(records)]
    return _append_at_text(), params


@cache
def _append_at_text() -> str:
    columns, recordset = _recordset()
    table, head_table = _tables()
    return (
        f"WITH moved AS (UPDATE {head_table} SET seq = %s, hash = %s "  # noqa: S608
        f"WHERE id = 1 AND seq = %s AND hash = %s RETURNING 1) "
        f", inserted AS (INSERT INTO {table} ({columns}) SELECT {columns} FROM {recordset} "
        f"WHERE EXISTS (SELECT 1 FROM moved) RETURNING 1) "
        f"SELECT (SELECT count(*) FROM inserted), seq, hash FROM {head_table} WHERE id = 1"
    )


@cache
def append_at_prepared() -> bytes:
    """`append_at_statement`'s text with libpq's numbered parameters, to be prepared."""
    return (_append_at_text() % ("$1", "$2", "$3", "$4", "$5")).encode()


def append_at_values(records: list[AuditRecord], head: tuple[int, str]) -> list[bytes]:
    """`append_at_statement`'s parameters as the text libpq sends (`append_at_prepared`)."""
    last = records[-1]
    return [
        b"%d" % last.seq,
        last.hash.encode("ascii"),
        b"%d" % head[0],
        head[1].encode("ascii"),
        rows_json(records),
    ]


def written_statement() -> str:
    """Postgres: whether the record with a sequence number and hash is in the chain."""
    table, _ = _tables()
    return f"SELECT 1 FROM {table} WHERE seq = %s AND hash = %s"  # noqa: S608


def _tables() -> tuple[str, str]:
    quote = backend(AuditRecord.objects.db).ops.quote_name
    return quote(AuditRecord._meta.db_table), quote(AuditHead._meta.db_table)


def _values(records: list[AuditRecord]) -> tuple[str, str, list[Any]]:
    """SQLite: the column list, the VALUES rows and their parameters for inserting
    `records`."""
    database = backend(AuditRecord.objects.db)
    fields = AuditRecord._meta.concrete_fields
    params: list[Any] = [
        f.get_db_prep_save(getattr(record, f.attname), database)
        for record in records
        for f in fields
    ]
    # Only table and column names from the model and placeholders go into the text; every
    # value is a parameter.
    return _columns(), ", ".join([_ROW] * len(records)), params


def rows_json(records: list[AuditRecord]) -> bytes:
    """Postgres: the records as one JSON array of objects, one member per column, for
    `_recordset`, in UTF-8. One parameter however many records there are: the statement's
    text stays the same, so psycopg parses it once, and no value goes through a field's
    adapter on its own."""
    rows = [getattr(record, "_row_json", None) or _encode_row(record) for record in records]
    return b"[%s]" % b",".join(rows)


def _as_is(data: bytes) -> bytes:
    return data


def _json_parameter(records: list[AuditRecord]) -> Json:
    """`rows_json` as a json parameter, its bytes sent as they are."""
    return Json(rows_json(records), dumps=_as_is)


def _encode_row(record: AuditRecord) -> bytes:
    """One record's row for `rows_json`, for a record that does not carry one from `build`
    (whose row holds the same values, its keys sorted)."""
    row = {column: getattr(record, attname) for attname, column in _COLUMNS}
    row["created_at"] = row["created_at"].isoformat()
    if row["call_id"] is not None:
        row["call_id"] = str(row["call_id"])
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


_COLUMNS = [(f.attname, f.column) for f in AuditRecord._meta.concrete_fields]
# Each column's value where a record leaves it out (details, a dict, is made anew for each).
_DEFAULT_ROW = {f.attname: f.get_default() for f in AuditRecord._meta.concrete_fields}
# The canonical body has a member for every column but the two hashes, named as the column.
_ROW_IS_BODY = set(_DEFAULT_ROW) == {*HASHED_FIELDS, "hash"} and all(
    attname == column for attname, column in _COLUMNS
)
_ROW = "(" + ", ".join(["%s"] * len(_COLUMNS)) + ")"


@cache
def _columns() -> str:
    quote = backend(AuditRecord.objects.db).ops.quote_name
    return ", ".join(quote(column) for _, column in _COLUMNS)


@cache
def _recordset() -> tuple[str, str]:
    """Postgres: the column list, and the rows of `rows_json` as a relation of those
    columns. Each is read as its column's type, varchar(n) as text: the insert, not the
    reading, must refuse a value too long for its column (a cast to varchar(n) would cut
    it). A JSON value for a jsonb column is kept as it is; JSON null is SQL NULL."""
    database = backend(AuditRecord.objects.db)
    quote = database.ops.quote_name
    fields = AuditRecord._meta.concrete_fields
    definitions = ", ".join(
        f"{quote(f.column)} {_VARCHAR.sub('text', f.cast_db_type(database))}" for f in fields
    )
    return _columns(), f"json_to_recordset(%s::json) AS appended({definitions})"


_VARCHAR = re.compile(r"^varchar\(\d+\)$")


def new_call_id() -> uuid.UUID:
    return uuid.uuid4()


@dataclass
class VerifyResult:
    verified: int
    first_seq: int | None
    last_seq: int | None
    checkpoints_checked: int
    error: str | None = None
    bad_seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _rows(since: int | None) -> Iterator[dict[str, Any]]:
    queryset = AuditRecord.objects.order_by("seq")
    if since is not None:
        queryset = queryset.filter(seq__gte=since)
    yield from queryset.values(*HASHED_FIELDS, "hash").iterator(chunk_size=5000)


def _head() -> tuple[int, str]:
    head = AuditHead.objects.filter(pk=1).values_list("seq", "hash").first()
    return head if head is not None else (0, GENESIS_HASH)


def verify(since: int | None = None) -> VerifyResult:
    """Walk the chain in constant memory; stop at the first record that does not fit.

    Without `since` the walk starts at the beginning of the chain: sequence 1, or the
    signed anchor left by the last archive. With `since`, the stored previous hash of
    record `since` is taken as the starting point (or the anchor, if `since` is before
    it). The chain must end exactly at its head row (which moves in the same transaction
    as every append) and at or after the newest signed checkpoint.
    """
    signed = checkpoints.load_all()
    by_seq = {c.seq: c for c in signed.checkpoints}
    anchor = signed.anchor
    result = VerifyResult(0, None, None, 0)
    if signed.error:
        result.error = signed.error
        return result
    head_seq, head_hash = _head()

    expected_seq: int | None = None
    expected_prev: str | None = None
    if anchor is not None and (since is None or since <= anchor.seq + 1):
        since = anchor.seq + 1
        expected_seq, expected_prev = since, anchor.head_hash
    elif since is None:
        since, expected_seq, expected_prev = 1, 1, GENESIS_HASH

    for row in _rows(since):
        seq = row["seq"]
        if expected_seq is None:
            expected_seq, expected_prev = seq, row["prev_hash"]
        if result.first_seq is None:
            result.first_seq = seq
        if seq != expected_seq:
            return _fail(result, expected_seq, f"record {expected_seq} is missing")
        if row["prev_hash"] != expected_prev:
            return _fail(result, seq, f"record {seq} does not follow record {seq - 1}")
        if record_hash(row) != row["hash"]:
            return _fail(result, seq, f"record {seq} was altered (its hash does not match)")
        checkpoint = by_seq.get(seq)
        if checkpoint is not None:
            if checkpoint.head_hash != row["hash"]:
                return _fail(result, seq, f"record {seq} differs from signed checkpoint {seq}")
            result.checkpoints_checked += 1
        if seq == head_seq and row["hash"] != head_hash:
            return _fail(result, seq, f"record {seq} differs from the chain's head")
        result.verified += 1
        result.last_seq = seq
        expected_seq, expected_prev = seq + 1, row["hash"]

    last = result.last_seq if result.last_seq is not None else since - 1
    latest = max((c.seq for c in signed.checkpoints), default=0)
    if latest > last:
        return _fail(
            result,
            last + 1,
            f"records {last + 1}..{latest} are missing: the chain ends before signed "
            f"checkpoint {latest}",
        )
    if head_seq > last:
        return _fail(
            result,
            last + 1,
            f"records {last + 1}..{head_seq} are missing: the chain ends before its head",
        )
    # Appends may have happened during the walk: only records past the head as it is
    # now are foreign.
    head_seq_now, _ = _head()
    if last > head_seq_now:
        return _fail(
            result, head_seq_now + 1, f"record {head_seq_now + 1} lies beyond the chain's head"
        )
    return result


def _fail(result: VerifyResult, seq: int, message: str) -> VerifyResult:
    result.error = message
    result.bad_seq = seq
    return result
