"""Periodic audit work (Celery beat in production; see mcpgw/periodic.py when embedded)."""

from celery import shared_task

from . import checkpoints
from .models import AuditHead
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
