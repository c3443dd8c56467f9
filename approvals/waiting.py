"""A held call waiting for its decision, on any gateway process.

Postgres has the decision; the channel layer only says "look now". The waiter joins the
approval's group before its first look, so a decision committed at any moment is seen
either by that look or by the wake-up that follows. A lost wake-up (Redis down, a
message dropped) costs at most FALLBACK_POLL_SECONDS, as the database is read that
often anyway.
"""

import asyncio
import contextlib
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.utils.timezone import now

from . import actions
from .consumers import approval_group
from .models import Approval, Status

log = logging.getLogger(__name__)

# Joining or leaving a group takes no longer than this, or the channel layer is skipped.
SIGNAL_TIMEOUT = 1.0
PENDING = "pending"


def _status(approval_id: int) -> str:
    row = Approval.objects.filter(pk=approval_id).values_list("status", "expires_at").first()
    if row is None:
        # The request is gone with its connection: it can never be approved now.
        return Status.EXPIRED.value
    status, expires_at = row
    if status == Status.PENDING and expires_at <= now():
        # Past its expiry a request can only end expired; record that now, not at the sweep.
        actions.expire(approval_id)
        return Status.EXPIRED.value
    return str(status)


_status_async = database_sync_to_async(_status, thread_sensitive=False)


class _Wakeups:
    """Wake-up messages for one approval's group on this process, while they work."""

    def __init__(self, layer: Any, group: str) -> None:
        self.layer = layer
        self.group = group
        self.channel = ""
        self.receiving: asyncio.Future[Any] | None = None
        self.working = False

    async def join(self) -> None:
        try:
            self.channel = await asyncio.wait_for(self.layer.new_channel(), SIGNAL_TIMEOUT)
            await asyncio.wait_for(self.layer.group_add(self.group, self.channel), SIGNAL_TIMEOUT)
        except Exception as exc:
            self._broken("join", exc)
        else:
            self.working = True

    async def wait(self, seconds: float) -> None:
        """Return on a wake-up message or after `seconds`, whichever comes first."""
        if not self.working:
            await asyncio.sleep(seconds)
            return
        if self.receiving is None:
            self.receiving = asyncio.ensure_future(self.layer.receive(self.channel))
        done, _ = await asyncio.wait({self.receiving}, timeout=seconds)
        if not done:
            return
        finished, self.receiving = self.receiving, None
        if finished.cancelled() or finished.exception() is not None:
            self._broken("receive", finished.exception())
            # Do not spin on a channel layer that fails at once: sleep the interval out.
            await asyncio.sleep(seconds)

    async def leave(self) -> None:
        if self.receiving is not None:
            self.receiving.cancel()
            with contextlib.suppress(BaseException):
                await self.receiving
        if self.channel:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    self.layer.group_discard(self.group, self.channel), SIGNAL_TIMEOUT
                )

    def _broken(self, step: str, exc: BaseException | None) -> None:
        self.working = False
        log.warning(
            "approvals: channel layer %s failed for %s (%s); checking the database instead",
            step,
            self.group,
            f"{type(exc).__name__}: {exc}" if exc else "cancelled",
        )


# The data path's interface names the parameter `timeout`; it is a deadline, not a cancel.
async def wait_for_decision(approval_id: int, timeout: float) -> str:  # noqa: ASYNC109
    """Wait up to `timeout` seconds for a decision on the request.

    Returns "approved", "denied", "expired", or "pending" when the time ran out first.
    Never raises because the channel layer or, for a while, the database is unavailable:
    without a readable decision the answer is "pending", and the call stays held.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max(timeout, 0.0)
    poll = settings.APPROVALS["FALLBACK_POLL_SECONDS"]
    layer = get_channel_layer()
    wakeups = _Wakeups(layer, approval_group(approval_id)) if layer is not None else None
    try:
        if wakeups is not None:
            await wakeups.join()
        while True:
            try:
                status = await _status_async(approval_id)
            except DatabaseError as exc:
                log.warning("approvals: cannot read request %s (%s)", approval_id, exc)
                status = PENDING
            if status != PENDING:
                return status
            remaining = deadline - loop.time()
            if remaining <= 0:
                return PENDING
            if wakeups is not None:
                await wakeups.wait(min(poll, remaining))
            else:
                await asyncio.sleep(min(poll, remaining))
    finally:
        if wakeups is not None:
            await wakeups.leave()
