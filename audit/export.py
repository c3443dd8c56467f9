"""CSV and JSON Lines exports of the audit trail, streamed in constant memory.

Records are read in keyset chunks (`seq > last ORDER BY seq LIMIT n`, see record_chunks)
rather than through one long-lived server-side cursor: each chunk is a short indexed query,
nothing stays open while a slow client downloads, and memory is bounded by one chunk
whatever the row count.

Exports run in chain order (oldest first) and stop at the record before the export's own
audit event, so a JSON Lines export can be re-hashed with `audit.models.record_hash` and
checked against the signed checkpoint it carries.
"""

import csv
import json
from collections.abc import AsyncIterator, Generator, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any, Literal

from asgiref.sync import sync_to_async
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from django.utils.timezone import now

from . import chain, checkpoints
from .filters import AuditFilter
from .models import HASHED_FIELDS, AuditRecord, Kind

Format = Literal["csv", "jsonl"]

EXPORT_FIELDS = (*HASHED_FIELDS, "hash")
NUMBER_FIELDS = frozenset({"seq", "user_id", "result_size", "latency_ms", "approval_id"})
JSON_FIELDS = frozenset(chain.JSON_FIELDS)
# Small enough that a chunk of records at the stored result limit (64 KiB each by
# default) stays a few megabytes.
CHUNK_SIZE = 250
MAX_WINDOW = 64 * CHUNK_SIZE
# Spreadsheets run a cell starting with one of these as a formula (OWASP, CSV injection).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
CONTENT_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


@dataclass(frozen=True)
class Exporter:
    """Who asked for an export; written into the export's audit event."""

    user_id: int
    username: str
    token: str = ""
    run_label: str = ""
    client_address: str = ""
    user_agent: str = ""


def latest_checkpoint() -> dict[str, Any] | None:
    checkpoint = checkpoints.latest()
    return asdict(checkpoint) if checkpoint is not None else None


def plain(row: dict[str, Any]) -> dict[str, Any]:
    """A record's values as JSON, in the form its hash is computed over."""
    row["created_at"] = row["created_at"].astimezone(UTC).isoformat(timespec="microseconds")
    if row["call_id"] is not None:
        row["call_id"] = str(row["call_id"])
    return row


def record_chunks(records: QuerySet[AuditRecord], through_seq: int) -> Iterator[list[dict]]:
    """The selected records up to `through_seq` in chain order, a chunk at a time.

    Each query also bounds `seq` to a window above the last one read. Sequence numbers
    have no gaps, so however Postgres plans it (on a table it has not analyzed yet it
    may sort every remaining row to find the first few), a query never touches more than
    one window of records. Windows that come back sparse, as under a narrow filter, grow
    so that such an export does not take one query per chunk of the whole trail.
    """
    selected = records.order_by("seq").values(*EXPORT_FIELDS)
    first = selected.filter(seq__lte=through_seq).values_list("seq", flat=True).first()
    if first is None:
        return
    last, window = first - 1, CHUNK_SIZE
    while last < through_seq:
        end = min(last + window, through_seq)
        chunk = list(selected.filter(seq__gt=last, seq__lte=end)[:CHUNK_SIZE])
        if len(chunk) == CHUNK_SIZE:
            last, window = chunk[-1]["seq"], CHUNK_SIZE
        else:
            last = end
            if len(chunk) < CHUNK_SIZE // 2:
                window = min(window * 2, MAX_WINDOW)
        if chunk:
            yield [plain(row) for row in chunk]


def neutralised(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def csv_row(row: dict[str, Any]) -> list[Any]:
    """Numbers as numbers, JSON values as compact JSON, and no cell a formula."""
    return [
        ""
        if (value := row[name]) is None
        else value
        if name in NUMBER_FIELDS
        else neutralised(_json(value) if name in JSON_FIELDS else value)
        for name in EXPORT_FIELDS
    ]


class _Line:
    """A file-like object whose write() hands the line back, for csv.writer."""

    def write(self, value: str) -> str:
        return value


def csv_lines(chunks: Iterable[list[dict]]) -> Generator[str, None, None]:
    writer = csv.writer(_Line())
    yield writer.writerow(EXPORT_FIELDS)
    for chunk in chunks:
        yield "".join(writer.writerow(csv_row(row)) for row in chunk)


def jsonl_lines(
    chunks: Iterable[list[dict]], checkpoint: dict[str, Any] | None
) -> Generator[str, None, None]:
    for chunk in chunks:
        yield "".join(_json(row) + "\n" for row in chunk)
    trailer = {
        "checkpoint": checkpoint,
        "public_key": checkpoints.public_key_pem() if checkpoint is not None else None,
    }
    yield json.dumps(trailer, separators=(",", ":")) + "\n"


async def _served_async(lines: Generator[str, None, None]) -> AsyncIterator[str]:
    # Under ASGI Django would read a synchronous iterator to the end into a list before
    # sending anything; pulling one chunk at a time keeps memory flat. Thread-sensitive
    # calls run every query of the export on the request's own database connection.
    done = object()
    pull = sync_to_async(next)
    try:
        while (line := await pull(lines, done)) is not done:
            yield line  # type: ignore[misc]
    finally:
        await sync_to_async(lines.close)()


def export_response(
    records: QuerySet[AuditRecord],
    filters: AuditFilter,
    fmt: Format,
    exporter: Exporter,
    *,
    serve_async: bool,
) -> StreamingHttpResponse:
    """Audit the export, then stream it: the records before the export's own event."""
    checkpoint = latest_checkpoint()
    event = chain.append(
        kind=Kind.EVENT,
        event="audit.export",
        user_id=exporter.user_id,
        username=exporter.username,
        token=exporter.token,
        run_label=exporter.run_label,
        client_address=exporter.client_address,
        user_agent=exporter.user_agent,
        details={
            "format": fmt,
            "filters": filters.as_params(without=("limit",)),
            "checkpoint_seq": checkpoint["seq"] if checkpoint else None,
        },
    )
    chunks = record_chunks(filters.apply(records), event.seq - 1)
    lines = csv_lines(chunks) if fmt == "csv" else jsonl_lines(chunks, checkpoint)
    response = StreamingHttpResponse(
        _served_async(lines) if serve_async else lines, content_type=CONTENT_TYPES[fmt]
    )
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{fmt}"'
    response["X-Audit-Checkpoint"] = json.dumps(checkpoint, separators=(",", ":"))
    response["Cache-Control"] = "no-store"
    return response
