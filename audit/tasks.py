"""Periodic audit work (Celery beat in production; see mcpgw/periodic.py when embedded)."""

from celery import shared_task
from django.db import InterfaceError, OperationalError

from . import checkpoints, siem
from .models import AuditHead, SiemSink
from .reconcile import close_open_calls


def write_checkpoint_if_grown() -> checkpoints.Checkpoint | None:
    head = AuditHead.objects.filter(pk=1).first()
    if head is None or head.seq == 0:
        return None
    latest = checkpoints.latest()
    if latest is not None and latest.seq >= head.seq:
        return None
    return checkpoints.write(head.seq, head.hash)


@shared_task
def checkpoint() -> int | None:
    written = write_checkpoint_if_grown()
    return written.seq if written else None


@shared_task
def reconcile() -> int:
    return close_open_calls()


@shared_task
def forward_to_sinks() -> int:
    """Queue a forwarding run for every enabled SIEM sink whose backoff has passed."""
    due = list(SiemSink.objects.due().values_list("pk", flat=True))
    for sink_id in due:
        forward_to_sink.delay(sink_id)
    return len(due)


# Receiver errors are the sink's own backoff (kept in the database); only the database
# itself going away is retried here.
@shared_task(
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=5,
)
def forward_to_sink(sink_id: int) -> int:
    return siem.forward(sink_id).sent
