"""Closing calls that never got an outcome record (a crash, a lost process)."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db.models import Exists, OuterRef
from django.utils.timezone import now

from . import chain
from .models import AuditRecord, Kind, Outcome

log = logging.getLogger(__name__)

COPIED_FIELDS = (
    "call_id",
    "user_id",
    "username",
    "token",
    "run_label",
    "subject",
    "client_address",
    "user_agent",
    "connection",
    "session",
    "era",
    "method",
    "target",
    "request_id",
)


def open_calls(older_than: int | None = None):  # type: ignore[no-untyped-def]
    seconds = settings.AUDIT["RECONCILE_AFTER_SECONDS"] if older_than is None else older_than
    outcomes = AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, call_id=OuterRef("call_id"))
    return (
        AuditRecord.objects.filter(
            kind=Kind.CALL_REQUEST, created_at__lt=now() - timedelta(seconds=seconds)
        )
        .exclude(Exists(outcomes))
        .order_by("seq")
    )


def close_open_calls(older_than: int | None = None) -> int:
    """Append an 'unknown' outcome for every call still open; returns how many."""
    closed = 0
    for request in open_calls(older_than).iterator(chunk_size=500):
        chain.append(
            kind=Kind.CALL_OUTCOME,
            outcome=Outcome.UNKNOWN,
            details={"reason": "no outcome was recorded", "request_seq": request.seq},
            **{name: getattr(request, name) for name in COPIED_FIELDS},
        )
        closed += 1
    if closed:
        log.warning("closed %d open call(s) as unknown", closed)
    return closed
