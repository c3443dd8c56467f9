"""Forwarding the audit trail to SIEMs: HTTP (JSON Lines) and syslog (RFC 5424).

Delivery is at least once. A sink's cursor moves only after the receiver accepted a
whole batch (HTTP 2xx, or every syslog frame written), so a batch that failed part way is
sent again from the cursor. Every record carries its sequence number and hash, so a
receiver can drop the duplicates and verify the chain.

Forwarding runs in Celery workers and only reads the trail: it never holds a lock the
data path waits for, and no database transaction stays open while a receiver is slow.
"""

import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from functools import cache
from typing import Any

import httpx
from django.db import transaction

from .events import record_event
from .models import AuditRecord, SiemSink, SinkKind, hash_body

log = logging.getLogger(__name__)

HTTP_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
SYSLOG_CONNECT_TIMEOUT = 5.0
# With a timeout, socket.sendall() bounds the whole write, not each chunk.
SYSLOG_SEND_TIMEOUT = 30.0
# After a TCP batch, how long to wait for the receiver to close its side: a reset in
# that time means it did not take everything.
SYSLOG_CLOSE_WAIT = 1.0
# One forwarding run ships batches for at most this long, then leaves the rest to the
# next run, so a large backlog does not hold a worker indefinitely.
RUN_SECONDS = 60.0

# RFC 5424: facility 13 ("log audit"), severity 6 ("informational").
SYSLOG_PRI = 13 * 8 + 6
SYSLOG_APP_NAME = "mcpgw"
# 32473 is the example private enterprise number (RFC 5612); receivers match on this SD-ID.
SYSLOG_SD_ID = "audit@32473"
# Larger datagrams fail to send; such records go without their arguments and result.
UDP_MAX_BYTES = 65000


class DeliveryError(Exception):
    """The receiver did not accept the batch; its message is kept as the sink's last error."""


@dataclass
class ForwardResult:
    sink: str
    sent: int = 0
    cursor: int = 0
    error: str = ""
    # Not attempted: the sink is gone, disabled, in backoff, or another worker has it.
    skipped: bool = False


def record_document(record: AuditRecord) -> dict[str, Any]:
    """A record as receivers get it: the hashed fields, then prev_hash and hash.

    `audit.models.record_hash(document) == document["hash"]` holds, so a receiver can
    verify each record and, through prev_hash, the chain.
    """
    return {**hash_body(record.field_values()), "prev_hash": record.prev_hash, "hash": record.hash}


def json_lines(records: Sequence[AuditRecord]) -> bytes:
    return b"".join(
        json.dumps(record_document(r), separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        for r in records
    )


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_http(url: str, records: Sequence[AuditRecord], *, secret: str = "") -> None:
    body = json_lines(records)
    headers = {
        "Content-Type": "application/x-ndjson",
        "User-Agent": "mcpgw-audit-forwarder",
        "X-Audit-Seq-Range": f"{records[0].seq}-{records[-1].seq}",
    }
    if secret:
        headers["X-Audit-Signature"] = signature(secret, body)
    try:
        response = httpx.post(url, content=body, headers=headers, timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if not response.is_success:
        raise DeliveryError(f"HTTP {response.status_code} {response.reason_phrase}".strip())


@cache
def _hostname() -> str:
    """RFC 5424 HOSTNAME: printable US-ASCII without spaces, or the nil value."""
    name = "".join(c for c in socket.gethostname() if 33 <= ord(c) <= 126)[:255]
    return name or "-"


def syslog_message(record: AuditRecord, *, max_bytes: int | None = None) -> bytes:
    """One RFC 5424 message: the record as compact JSON in MSG, its seq and hash in SD.

    The JSON is ASCII-only (non-ASCII escaped), so MSG needs no byte order mark.
    """
    timestamp = record.created_at.astimezone(UTC).isoformat(timespec="microseconds")
    header = (
        f"<{SYSLOG_PRI}>1 {timestamp.replace('+00:00', 'Z')} {_hostname()} "
        f'{SYSLOG_APP_NAME} - {record.kind} [{SYSLOG_SD_ID} seq="{record.seq}" '
        f'hash="{record.hash}"] '
    ).encode("ascii")
    document = record_document(record)
    message = header + json.dumps(document, separators=(",", ":")).encode("ascii")
    if max_bytes is not None and len(message) > max_bytes:
        document.update(arguments=None, result=None, truncated=True)
        message = header + json.dumps(document, separators=(",", ":")).encode("ascii")
    return message


def _address(host: str, port: int, kind: socket.SocketKind) -> tuple[Any, ...]:
    family, socktype, proto, _name, address = socket.getaddrinfo(host, port, type=kind)[0]
    return family, socktype, proto, address


def send_syslog_udp(host: str, port: int, records: Sequence[AuditRecord]) -> None:
    """One datagram per record. UDP has no acknowledgement: a send that succeeds counts as
    delivered, and only errors the network reports back (such as a refused port) fail."""
    try:
        family, socktype, proto, address = _address(host, port, socket.SOCK_DGRAM)
        with socket.socket(family, socktype, proto) as sock:
            sock.settimeout(SYSLOG_SEND_TIMEOUT)
            # Connected, so that ICMP errors from the receiver surface as send errors.
            sock.connect(address)
            for record in records:
                sock.send(syslog_message(record, max_bytes=UDP_MAX_BYTES))
    except OSError as exc:
        raise DeliveryError(f"syslog udp://{host}:{port}: {exc}") from None


def send_syslog_tcp(host: str, port: int, records: Sequence[AuditRecord]) -> None:
    """Octet-counted frames (RFC 6587) on one connection per batch."""
    frames = b"".join(b"%d %s" % (len(m), m) for m in map(syslog_message, records))
    try:
        with socket.create_connection((host, port), timeout=SYSLOG_CONNECT_TIMEOUT) as sock:
            sock.settimeout(SYSLOG_SEND_TIMEOUT)
            sock.sendall(frames)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(SYSLOG_CLOSE_WAIT)
            try:
                while sock.recv(4096):
                    pass
            except TimeoutError:
                pass  # The receiver keeps the connection open; it has not reset it.
    except OSError as exc:
        raise DeliveryError(f"syslog tcp://{host}:{port}: {exc}") from None


def send(sink: SiemSink, records: Sequence[AuditRecord]) -> None:
    if sink.kind == SinkKind.HTTP:
        send_http(sink.url, records, secret=sink.hmac_secret())
    elif sink.kind == SinkKind.SYSLOG_UDP:
        send_syslog_udp(sink.host, sink.port or 0, records)
    else:
        send_syslog_tcp(sink.host, sink.port or 0, records)


def forward(sink_id: int, *, ignore_backoff: bool = False) -> ForwardResult:
    """Ship the records after the sink's cursor, batch by batch, until it has caught up,
    a batch fails, or RUN_SECONDS have passed. Safe to run concurrently: only the worker
    that claimed the sink sends."""
    sink = SiemSink.objects.filter(pk=sink_id).first()
    if sink is None:
        return ForwardResult(sink="", skipped=True)
    if not sink.claim(ignore_backoff=ignore_backoff):
        return ForwardResult(sink=sink.name, cursor=sink.cursor, skipped=True)
    result = ForwardResult(sink=sink.name, cursor=sink.cursor)
    deadline = time.monotonic() + RUN_SECONDS
    try:
        while time.monotonic() < deadline:
            batch = list(
                AuditRecord.objects.filter(seq__gt=sink.cursor).order_by("seq")[: sink.batch_size]
            )
            if not batch:
                break
            try:
                send(sink, batch)
            except DeliveryError as exc:
                result.error = str(exc)
                sink.record_failure(result.error)
                log.warning(
                    "audit sink %s: records %d-%d not delivered (attempt %d, next at %s): %s",
                    sink.name,
                    batch[0].seq,
                    batch[-1].seq,
                    sink.failures,
                    sink.next_attempt_at,
                    result.error,
                )
                break
            if not sink.record_delivery(batch[-1].seq):
                log.warning("audit sink %s: claim lapsed; another worker resends", sink.name)
                break
            result.sent += len(batch)
            result.cursor = sink.cursor
    finally:
        sink.release()
    return result


def forward_all(*, ignore_backoff: bool = False) -> list[ForwardResult]:
    """One forwarding run for every enabled sink, here and now (operators and tests)."""
    sinks = SiemSink.objects.filter(enabled=True)
    return [forward(pk, ignore_backoff=ignore_backoff) for pk in sinks.values_list("pk", flat=True)]


@transaction.atomic
def add_sink(
    *,
    name: str,
    kind: str,
    url: str = "",
    host: str = "",
    port: int | None = None,
    hmac_secret: str = "",
    batch_size: int = 500,
    actor: Any = None,
) -> SiemSink:
    """Create a sink; it starts at the beginning of the trail. Raises ValidationError."""
    sink = SiemSink(name=name, kind=kind, url=url, host=host, port=port, batch_size=batch_size)
    sink.set_hmac_secret(hmac_secret)
    sink.full_clean()
    sink.save()
    record_event(
        "siem_sink.created",
        actor=actor,
        details={
            "name": sink.name,
            "kind": sink.kind,
            "target": sink.target,
            "signed": sink.signed,
            "batch_size": sink.batch_size,
        },
    )
    return sink


@transaction.atomic
def remove_sink(name: str, *, actor: Any = None) -> bool:
    sink = SiemSink.objects.select_for_update().filter(name=name).first()
    if sink is None:
        return False
    details = {"name": sink.name, "kind": sink.kind, "target": sink.target, "cursor": sink.cursor}
    sink.delete()
    record_event("siem_sink.removed", actor=actor, details=details)
    return True
