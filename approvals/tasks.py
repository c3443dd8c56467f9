"""Notifications and expiry (Celery; see mcpgw/periodic.py for the embedded beat)."""

import logging
from datetime import timedelta

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError
from django.utils.timezone import now

from . import actions, notifications
from .models import Approval

log = logging.getLogger(__name__)

MAX_SEND_RETRIES = 5
# A pending request still unclaimed by `notify` this long after it was made had its
# notification lost (the broker was down): the sweep queues it again.
RENOTIFY_AFTER = timedelta(seconds=60)
RENOTIFY_BATCH = 100


@shared_task
def notify(approval_id: int) -> int:
    """Fan a new request out to every configured channel, once (claimed by notified_at)."""
    claimed = Approval.objects.filter(pk=approval_id, notified_at__isnull=True).update(
        notified_at=now()
    )
    if not claimed:
        return 0
    channels = notifications.configured_channels()
    for channel in channels:
        send_notification.delay(approval_id, channel)
    return len(channels)


@shared_task(bind=True, max_retries=MAX_SEND_RETRIES)
def send_notification(self: Task, approval_id: int, channel: str) -> bool:
    """Send one channel's notification, retrying with backoff while the receiver fails.

    A request decided before its notification went out needs nobody any more: skipped.
    """
    approval = Approval.objects.select_related("connection").filter(pk=approval_id).first()
    if approval is None or not approval.is_pending:
        return False
    try:
        notifications.SENDERS[channel](approval)
    except (notifications.DeliveryError, OperationalError, InterfaceError) as exc:
        if self.request.is_eager:
            # Embedded mode runs this inside the held call: no retries to wait for there.
            log.warning("approvals: %s notification for %s failed: %s", channel, approval_id, exc)
            return False
        raise self.retry(exc=exc, countdown=min(300, 5 * 2**self.request.retries)) from exc
    return True


@shared_task
def sweep() -> int:
    """Expire pending requests past their expiry; re-queue notifications that were lost."""
    expired = actions.expire_due()
    if not notifications.configured_channels():
        return expired
    lost = list(
        Approval.objects.pending()
        .filter(notified_at__isnull=True, created_at__lte=now() - RENOTIFY_AFTER)
        .values_list("pk", flat=True)[:RENOTIFY_BATCH]
    )
    for approval_id in lost:
        notify.delay(approval_id)
    return expired
