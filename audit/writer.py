"""Group commit for the data path's audit records.

Every call writes a record before it is forwarded (write-ahead) and one after it ended.
Appends serialize on the chain head, and each commit waits for the database to flush its
log, so one transaction per record caps the whole gateway at a few hundred records a
second, shared by all processes. Here, the records that calls of one process ask for while
a commit is under way wait for it to end and then go together, in one transaction: each
caller still returns only once its own record is committed (write-ahead holds), but under
load many records share one lock and one flush. A lone call pays nothing extra: its
record is written at once.

If a batch fails, its records are retried one by one, so one bad record cannot fail the
calls that happened to share its transaction.
"""

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async

from . import chain
from .models import AuditRecord

log = logging.getLogger(__name__)

# The most records one transaction takes; more wait for the next.
MAX_BATCH = 256

_append_many = sync_to_async(chain.append_many, thread_sensitive=False)


class GroupWriter:
    """Batches appends from one event loop."""

    def __init__(self) -> None:
        self._pending: list[tuple[dict[str, Any], asyncio.Future[AuditRecord]]] = []
        self._task: asyncio.Task[None] | None = None

    async def append(self, fields: dict[str, Any]) -> AuditRecord:
        """Append one record; returns once it is committed, raises if it could not be."""
        future: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
        # A caller that stopped waiting leaves the failure to the log, not to asyncio's.
        future.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._pending.append((fields, future))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())
        # The record is committed, or not, whether or not this caller still waits.
        return await asyncio.shield(future)

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                records = await _append_many([fields for fields, _ in batch])
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exception=exc)
                    continue
                log.warning("an audit batch of %d records failed; writing each alone", len(batch))
                for fields, future in batch:
                    try:
                        (record,) = await _append_many([fields])
                    except Exception as single:
                        _settle(future, exception=single)
                    else:
                        _settle(future, result=record)
                continue
            for (_, future), record in zip(batch, records, strict=True):
                _settle(future, result=record)


def _settle(
    future: "asyncio.Future[AuditRecord]",
    *,
    result: AuditRecord | None = None,
    exception: BaseException | None = None,
) -> None:
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result)  # type: ignore[arg-type]


_writers: dict[asyncio.AbstractEventLoop, GroupWriter] = {}


def writer() -> GroupWriter:
    """The writer of the running event loop."""
    loop = asyncio.get_running_loop()
    found = _writers.get(loop)
    if found is None:
        for stale in [other for other in _writers if other.is_closed()]:
            del _writers[stale]
        found = _writers[loop] = GroupWriter()
    return found


async def append(**fields: Any) -> AuditRecord:
    return await writer().append(fields)
