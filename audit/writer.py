"""Group commit for the data path's audit records.

Every call writes a record before it is forwarded (write-ahead) and one after it ended.
Appends serialize on the chain head, and each commit waits for the database to flush its
log, so one transaction per record caps the whole gateway at a few hundred records a
second, shared by all processes. Here, the records that calls of one process ask for while
a commit is under way wait for it to end and then go together, in one transaction: each
caller still returns only once its own record is committed (write-ahead holds), but under
load many records share one lock and one flush. A record a call waits on (a request
record) that finds the writer idle is written at once. A call's outcome record, which
nothing waits on (the agent has its answer), is composed later (`append_later`): when the
writer next sends a batch, or after a moment. On Postgres, at one client, the next call's
request record then goes to the database alone and at once, and the gateway masks and
encodes the previous outcome while that commit is under way, when it would otherwise only
wait. Once the commit is done, the callers it answered go on first (the call goes
upstream), and the outcome is hashed, sent and committed after, while the upstream works.
On the embedded database (SQLite, where every transaction is a trip to a worker thread and
a commit of the file) the outcome instead shares the next call's request record's commit
(`_lingers`).

If a batch fails, its records are retried one by one, so one bad record cannot fail the
calls that happened to share its transaction.

On Postgres the writes run on the event loop, on a connection of the writer's own
(psycopg's async connection, see `PostgresChain`), not in a worker thread through
Django's: no thread hand-off and no contention for the GIL between the loop and a thread
composing records. The append every call makes is a statement prepared once per
connection and sent with libpq's asynchronous calls (`_run`).
"""

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

import psycopg
from asgiref.sync import sync_to_async
from psycopg import pq

from mcpgw import pg
from mcpgw.db import backend

from . import chain, checkpoints
from .models import AuditHead, AuditRecord

log = logging.getLogger(__name__)

# The most records one transaction takes; more wait for the next.
MAX_BATCH = 256
# How long a record that nothing waits on to go ahead (`GroupWriter.append_later`: a
# call's outcome, written after the agent has its answer) may wait for the writer to send
# something else before it is composed and written anyway. On SQLite (see `_lingers`) it
# then goes in the same transaction as what the writer sends (under steady use the next
# call's request record: one commit per call instead of two); on Postgres it is composed
# while that batch commits, when the gateway would otherwise only wait, and written after.
LINGER_SECONDS = 0.002
COMPOSE_LATER_SECONDS = 0.003
# How many statements a batch may try to append after a head it knows, each after the head
# the one before it found, before it is appended under the head's lock.
OPTIMISTIC_TRIES = 3
# How many new connections a batch is tried on after the writer's connection broke under it.
RECONNECTS = 3

_append_many_in_thread = sync_to_async(chain.append_many, thread_sensitive=False)


class PostgresChain:
    """Appends to the chain over one async connection, opened on first use and again
    after it broke.

    The writer keeps the head it last wrote: the next records go after it in one statement,
    one round trip and no transaction around it (`chain.append_at_statement`). That
    statement writes nothing if another writer (another process, the console) has moved the
    head since, and answers the head it found (or, where the head moved while the
    statement ran, the writer reads it: one more round trip, no lock): the records are then
    built after that head and sent again, still without a lock, up to OPTIMISTIC_TRIES
    statements in all. With several gateway processes on one chain, each process's next
    batch mostly finds the head moved by another, and the head's lock is then held only
    while a statement commits. Where the tries run out, the records are appended under the
    head's lock, which reads the head afresh (pipelined: lock and read the head in one
    round trip, insert, move the head and commit in a second)."""

    def __init__(self) -> None:
        self._connection: Any = None
        self._head: tuple[int, str] | None = None
        # The connection on which the one-statement append is prepared.
        self._prepared: Any = None
        # What wakes the append when that connection's answer comes.
        self._readable: _Readable | None = None

    async def _connect(self) -> Any:
        if self._connection is None or self._connection.closed or self._connection.broken:
            self._stop_watching()
            self._connection = await pg.connect("mcpgw-audit-writer")
        return self._connection

    async def append_many(self, rows: list[dict[str, Any]]) -> list[AuditRecord]:
        if not rows:
            return []
        sent = None
        reconnects = 0
        while True:
            try:
                return await self._append_many(rows, sent)
            except _Broken as broken:
                # The kept connection had died while idle (a restarted or failed-over
                # database, an idle timeout), between two statements for these records, or
                # while a statement with them ran: a new connection may write them, under
                # the head's lock, after looking for those a broken one sent.
                reconnects += 1
                if reconnects > RECONNECTS:
                    raise
                sent = broken.sent or sent

    async def _append_many(
        self, rows: list[dict[str, Any]], sent: list[AuditRecord] | None = None
    ) -> list[AuditRecord]:
        connection = await self._connect()
        # Forgotten until these records are written: after a failure the head is read again
        # (under its lock: a failure leaves no head known).
        known, self._head = self._head, None
        records = None
        tries = 0
        while known is not None and tries < OPTIMISTIC_TRIES:
            tries += 1
            last = tries == OPTIMISTIC_TRIES
            records, known = await self._append_after(connection, rows, known, read=not last)
            if records is not None:
                break
        if records is None:
            records = await self._append_locked(connection, rows, sent)
        self._head = records[-1].seq, records[-1].hash
        return records

    async def _append_after(
        self,
        connection: Any,
        rows: list[dict[str, Any]],
        head: tuple[int, str],
        *,
        read: bool = True,
    ) -> tuple[list[AuditRecord] | None, tuple[int, str] | None]:
        """The records appended after `head`; or, if the head has moved since, None and the
        head that another writer had moved it to, where the statement found one to try next
        (see `chain.append_at_statement`), or read it (where `read`)."""
        records = chain.build(rows, *head)
        try:
            appended, found = await self._append_at(connection, records, head)
        except BaseException as exc:
            if connection.broken:
                await self.aclose()
                if isinstance(exc, psycopg.OperationalError):
                    # The statement may have committed, or may still (the database can
                    # go on with it after the connection broke on this side).
                    raise _Broken(sent=records) from exc
            raise
        if appended == len(records):
            return records, None
        if found == head:
            if not read:
                return None, None
            # The head moved while the statement ran (it waited for that writer's lock, and
            # found the head as it was before): where it is now, read without a lock.
            try:
                found = await self._read_head(connection)
            except psycopg.OperationalError as exc:
                if connection.broken:
                    # Nothing of these records was written: a new connection may write them.
                    await self.aclose()
                    raise _Broken from exc
                raise
        return None, found

    async def _read_head(self, connection: Any) -> tuple[int, str] | None:
        """The chain head as committed now, read without a lock (None if there is none)."""
        statement = chain.head_statement(lock=False).encode()
        result = await self._send(
            connection, lambda pgconn: pgconn.send_query_params(statement, None)
        )
        if result.ntuples != 1:
            return None
        seq, hash_ = result.get_value(0, 0), result.get_value(0, 1)
        return int(seq), hash_.decode("ascii")

    async def _send(self, connection: Any, send: Callable[[Any], None]) -> "pq.abc.PGresult":
        """One command on the writer's connection, through `_run`."""
        pgconn = connection.pgconn
        try:
            readable = self._readable
            if readable is None or readable.connection is not connection:
                self._stop_watching()
                readable = self._readable = _Readable(connection)
            return await _run(pgconn, readable, lambda: send(pgconn))
        except BaseException:
            if pgconn.transaction_status == pq.TransactionStatus.ACTIVE:
                # Stopped (cancelled) while the command ran: the connection still has it
                # under way and can take no other; the next records go on a new one.
                self.discard()
            raise

    async def _append_at(
        self, connection: Any, records: list[AuditRecord], head: tuple[int, str]
    ) -> tuple[int, tuple[int, str] | None]:
        """`chain.append_at_statement`, as a statement prepared once per connection and run
        through libpq's own asynchronous calls (`_run`): what psycopg's cursor.execute
        sends, without its per-statement work in Python (single-row inserts in a loop took
        85 µs of CPU each through cursor.execute, 39 µs this way). Returns how many records
        it inserted and the head the statement found (None if the database has none)."""
        if self._prepared is not connection:
            prepare = chain.append_at_prepared()
            await self._send(connection, lambda pgconn: pgconn.send_prepare(APPEND, prepare))
            self._prepared = connection
        values = chain.append_at_values(records, head)
        result = await self._send(
            connection, lambda pgconn: pgconn.send_query_prepared(APPEND, values)
        )
        if result.ntuples != 1:
            return 0, None
        inserted, seq, hash_ = (result.get_value(0, column) for column in range(3))
        return int(inserted), (int(seq), hash_.decode("ascii"))

    async def _append_locked(
        self, connection: Any, rows: list[dict[str, Any]], sent: list[AuditRecord] | None = None
    ) -> list[AuditRecord]:
        """The records appended under the head's lock. `sent`: the same records as a
        connection that broke meanwhile sent them; once the lock is held, that connection's
        statement has committed or never will (it took the head first, or will find it
        moved), so if they are in the chain they are the answer, not written again."""
        records: list[AuditRecord] | None = None
        try:
            async with connection.pipeline(), connection.transaction():
                cursor = connection.cursor()
                await cursor.execute(chain.head_statement())
                found = await cursor.fetchone()
                if found is None:
                    raise _NoHead
                head_seq, head_hash = found
                if sent is not None and head_seq >= sent[-1].seq:
                    await cursor.execute(chain.written_statement(), [sent[-1].seq, sent[-1].hash])
                    if await cursor.fetchone() is not None:
                        return sent
                records = chain.build(rows, head_seq, head_hash)
                await cursor.execute(*chain.insert_statement(records))
                # Leaving the block commits (and raises here if that fails).
                return records
        except _NoHead:
            # The migration creates the head; only a database that lost it gets here.
            return await _append_many_in_thread(rows)
        except BaseException as exc:
            if connection.broken:
                await self.aclose()
                if isinstance(exc, psycopg.OperationalError):
                    raise _Broken(sent=records or sent) from exc
            raise

    async def aclose(self) -> None:
        self._stop_watching()
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    def discard(self) -> None:
        """Close the connection without waiting (its event loop may have ended)."""
        self._stop_watching()
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.pgconn.finish()

    def _stop_watching(self) -> None:
        readable, self._readable = self._readable, None
        if readable is not None:
            readable.close()


class _Readable:
    """Wakes an append when the database's answer can be read from the writer's connection.

    It watches a duplicate of libpq's socket, registered with the event loop once and left
    registered between statements: registering libpq's socket for each wait and removing
    it after cost uvloop four to six system calls per statement. Readable with nobody
    waiting (psycopg's own statements on the connection, which it waits for on the original
    socket, a notice, the server closing) twice in a row, it stands down, so that it never
    wakes again and again or reads in psycopg's place; the next wait registers it again.
    (Once is no sign: asyncio's own loop reports a readiness it saw before the woken wait
    read the answer, after that wait has ended.) The duplicate
    holds the socket open: it is closed with the connection (`PostgresChain._stop_watching`
    on every path that drops one)."""

    __slots__ = ("connection", "fd", "idle_events", "loop", "waiter", "watching")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.loop = asyncio.get_running_loop()
        self.fd = os.dup(connection.pgconn.socket)
        self.waiter: asyncio.Future[None] | None = None
        self.watching = False
        self.idle_events = 0

    async def wait(self) -> None:
        if not self.watching:
            self.loop.add_reader(self.fd, self._readable)
            self.watching = True
        self.idle_events = 0
        self.waiter = waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def _readable(self) -> None:
        waiter = self.waiter
        if waiter is None:
            self.idle_events += 1
            if self.idle_events > 1:
                self.loop.remove_reader(self.fd)
                self.watching = False
        elif not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        if self.watching and not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        self.watching = False
        os.close(self.fd)


# The name of the prepared append on the writer's connection (psycopg names its own
# `_pg3_...`).
APPEND = b"mcpgw_audit_append"


async def _run(
    pgconn: "pq.abc.PGconn", readable: _Readable, send: Callable[[], None]
) -> "pq.abc.PGresult":
    """Send one command with libpq's asynchronous calls and wait for its result on the
    event loop, as psycopg does: flush while the socket takes more, read while libpq is
    busy. Raises the error psycopg would for an error result; a connection that breaks
    raises psycopg.OperationalError and leaves the connection broken."""
    send()
    while pgconn.flush():  # rare: a batch larger than the socket takes at once
        loop = asyncio.get_running_loop()
        await _ready(loop.add_writer, loop.remove_writer, pgconn.socket)
    results = []
    while True:
        pgconn.consume_input()
        while pgconn.is_busy():
            await readable.wait()
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        results.append(result)
    for result in results:
        if result.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
            raise psycopg.errors.error_from_result(result, encoding="utf-8")
    if not results:
        raise psycopg.OperationalError("the database sent no result")
    return results[-1]


async def _ready(add: Any, remove: Any, fd: int) -> None:
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    add(fd, _settle, future)
    try:
        await future
    finally:
        remove(fd)


class _NoHead(Exception):
    pass


class _Broken(Exception):
    """The writer's connection broke. `sent`: records a statement on it carried, which
    may be in the chain (committed before the break, or by the database after it)."""

    def __init__(self, sent: list[AuditRecord] | None = None) -> None:
        super().__init__("the connection to the audit trail's database broke")
        self.sent = sent


async def _checkpoint(record: AuditRecord) -> None:
    # The records are committed: a checkpoint that cannot be written is logged, and the
    # periodic checkpoint writes the next one; the calls are not failed for it.
    try:
        await asyncio.to_thread(checkpoints.write, record.seq, record.hash)
    except Exception:
        log.exception("could not write the audit checkpoint at record %d", record.seq)


def _lingers() -> bool:
    """Whether a record that nothing waits on joins the transaction of the next batch
    (`GroupWriter.append_later`): on SQLite, where each transaction is a trip to a worker
    thread and a commit of the file. Not on Postgres: there such a record is composed while
    the next batch commits and written after it, and under load the records that come
    during a commit share the next one anyway."""
    return backend(AuditHead.objects.db).vendor != "postgresql"


class GroupWriter:
    """Batches appends from one event loop."""

    def __init__(self) -> None:
        self._pending: list[tuple[dict[str, Any], asyncio.Future[AuditRecord]]] = []
        # Records still to be composed (`append_later`), with their callers' futures.
        self._later: list[tuple[Callable[[], dict[str, Any]], asyncio.Future[AuditRecord]]] = []
        self._later_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        # Signed checkpoints being written after the batches that crossed them (Postgres).
        self._checkpoints: set[asyncio.Task[None]] = set()
        self._postgres = PostgresChain()
        # The database does not change while the loop runs: looked up once, not per call.
        self._on_postgres = backend(AuditHead.objects.db).vendor == "postgresql"
        self._lingers = _lingers()

    async def _append_many(self, rows: list[dict[str, Any]]) -> list[AuditRecord]:
        if not self._on_postgres:
            # `chain.append_many` writes the checkpoint once the transaction commits.
            return await _append_many_in_thread(rows)
        records = await self._postgres.append_many(rows)
        if chain.crosses_checkpoint(records[0].seq - 1, records):
            # The records are committed: their callers go on while the checkpoint is
            # signed and written (in a thread), and the next records are sent meanwhile.
            task = asyncio.get_running_loop().create_task(_checkpoint(records[-1]))
            self._checkpoints.add(task)
            task.add_done_callback(self._checkpoints.discard)
        return records

    async def append(self, fields: dict[str, Any]) -> AuditRecord:
        """Append one record; returns once it is committed, raises if it could not be."""
        future = _future()
        self._pending.append((fields, future))
        self._write_now()
        # The record is committed, or not, whether or not this caller still waits: a
        # caller cancelled while it waits cancels only its future, which `_drain` then
        # leaves alone.
        return await future

    async def append_later(self, compose: Callable[[], dict[str, Any]]) -> AuditRecord:
        """Append the record `compose()` returns, for a record that nothing waits on to go
        ahead (a call's outcome, written after the agent has its answer). It is composed
        when the writer next sends a batch, or after LINGER_SECONDS (SQLite) or
        COMPOSE_LATER_SECONDS (Postgres) at the latest: on SQLite it joins that batch, on
        Postgres it is composed while that batch commits and written after it (at one
        client, the next call's request record goes to the database at once, and this
        record is composed while that commit is under way). Returns once the record is
        committed; raises if it could not be composed or written."""
        future = _future()
        self._later.append((compose, future))
        if len(self._later) >= MAX_BATCH:
            self._compose_later()
        elif self._later_timer is None:
            wait = LINGER_SECONDS if self._lingers else COMPOSE_LATER_SECONDS
            self._later_timer = asyncio.get_running_loop().call_later(wait, self._compose_later)
        return await future

    def _compose_later(self, *, first: bool = False) -> None:
        """Compose the records waiting to be composed, and have them written (first: ahead
        of the records already pending, which they came before)."""
        if self._later_timer is not None:
            self._later_timer.cancel()
            self._later_timer = None
        later, self._later = self._later, []
        composed = []
        for compose, future in later:
            # Composed whether or not the caller still waits: the call happened.
            try:
                composed.append((compose(), future))
            except Exception as exc:
                _settle(future, exception=exc)
        self._pending = composed + self._pending if first else self._pending + composed
        if self._pending:
            self._write_now()

    def _write_now(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Write what waits now, and wait until it is written, with the checkpoints it
        crossed (and what came meanwhile)."""
        while True:
            if self._later:
                self._compose_later()
            if self._pending:
                self._write_now()
            if self._task is not None and not self._task.done():
                await asyncio.shield(self._task)
            elif self._checkpoints:
                await asyncio.shield(asyncio.gather(*self._checkpoints))
            else:
                return

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            if self._later and self._lingers:
                # SQLite: they share this batch's transaction.
                self._compose_later(first=True)
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            if self._later:
                # Postgres: composed once this batch is sent, while it commits; written
                # after it.
                loop.call_soon(self._compose_later)
            try:
                records = await self._append_many([fields for fields, _ in batch])
            except _Broken as exc:
                # Each new connection broke as well: the records may still be committed by
                # a statement the database finishes late, so they are not written again one
                # by one (they could be written twice); their calls fail.
                for _, future in batch:
                    _settle(future, exception=exc)
                continue
            except Exception as exc:
                if len(batch) == 1:
                    _settle(batch[0][1], exception=exc)
                    continue
                log.warning("an audit batch of %d records failed; writing each alone", len(batch))
                for fields, future in batch:
                    try:
                        (record,) = await self._append_many([fields])
                    except Exception as single:
                        _settle(future, exception=single)
                    else:
                        _settle(future, result=record)
                continue
            for (_, future), record in zip(batch, records, strict=True):
                _settle(future, result=record)
            if self._pending:
                # The callers just answered go on first (a call's request record: the call
                # goes upstream); the next batch (at one client, the previous call's
                # outcome, with its 10 KB result to hash and send) is built and sent after,
                # while the upstream works.
                await asyncio.sleep(0)


def _future() -> "asyncio.Future[AuditRecord]":
    future: asyncio.Future[AuditRecord] = asyncio.get_running_loop().create_future()
    # A caller that stopped waiting leaves the failure to the log, not to asyncio's.
    future.add_done_callback(lambda done: done.cancelled() or done.exception())
    return future


def _settle(
    future: "asyncio.Future[Any]",
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
            _writers.pop(stale)._postgres.discard()
        found = _writers[loop] = GroupWriter()
    return found


async def append(**fields: Any) -> AuditRecord:
    return await writer().append(fields)


async def flush() -> None:
    """Write what waits in the running loop's writer now, and wait until it is written (at
    shutdown: no record is left waiting for a timer that will not fire)."""
    found = _writers.get(asyncio.get_running_loop())
    if found is not None:
        await found.flush()


async def append_later(compose: Callable[[], dict[str, Any]]) -> AuditRecord:
    """`GroupWriter.append_later` on the running loop's writer: for a record that nothing
    waits on to go ahead."""
    return await writer().append_later(compose)
