"""Group commit: records asked for together share a transaction, and nothing else changes."""

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from audit import chain, writer
from audit.models import AuditRecord, Kind
from tests.conftest import database_default

pytestmark = pytest.mark.django_db(transaction=True)


def request_fields(n: int, **overrides: Any) -> dict[str, Any]:
    return {
        "kind": Kind.CALL_REQUEST,
        "connection": "demo",
        "method": "tools/call",
        "target": f"tool-{n}",
        "arguments": {"n": n},
        **overrides,
    }


@pytest.fixture
def transactions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every transaction the writer commits (the real writes run)."""
    sizes: list[int] = []
    real = writer.GroupWriter._append_many

    async def counted(self: writer.GroupWriter, rows: list[dict[str, Any]]) -> list[AuditRecord]:
        records = await real(self, rows)
        sizes.append(len(rows))
        return records

    monkeypatch.setattr(writer.GroupWriter, "_append_many", counted)
    return sizes


async def test_concurrent_records_share_transactions_and_keep_one_gap_free_chain(transactions):
    records = await asyncio.gather(*(writer.append(**request_fields(n)) for n in range(60)))

    # Each caller got its own record back, committed.
    assert [r.target for r in records] == [f"tool-{n}" for n in range(60)]
    seqs = sorted(r.seq for r in records)
    assert seqs == list(range(seqs[0], seqs[0] + 60))
    assert sum(transactions) == 60
    assert len(transactions) < 60, transactions
    stored = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert sorted(stored) == sorted(f"tool-{n}" for n in range(60))
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 60


async def test_a_record_the_database_refuses_fails_only_its_own_call(transactions):
    # A username longer than the column: Postgres refuses the whole batch's INSERT.
    fields = [request_fields(n) for n in range(10)]
    fields[4] = request_fields(4, username="x" * 500)
    outcomes = await asyncio.gather(*(writer.append(**f) for f in fields), return_exceptions=True)
    failed = [n for n, outcome in enumerate(outcomes) if isinstance(outcome, BaseException)]
    assert failed == [4]
    assert all(isinstance(o, AuditRecord) for n, o in enumerate(outcomes) if n != 4)
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 9


async def test_a_caller_that_stops_waiting_still_gets_its_record_written(transactions):
    task = asyncio.ensure_future(writer.append(**request_fields(1)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.append(**request_fields(2))
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == ["tool-1", "tool-2"]


async def test_a_writer_whose_idle_connection_died_writes_on_a_new_one(transactions):
    """A database restart or an idle timeout kills the writer's kept connection; the next
    records are written on a new connection rather than failing their calls."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the writer keeps a connection of its own on Postgres only")
    import psycopg

    from mcpgw import pg

    await writer.append(**request_fields(1))
    kept = writer.writer()._postgres._connection
    async with await psycopg.AsyncConnection.connect(
        pg.conninfo("test-admin"), autocommit=True
    ) as admin:
        cursor = await admin.execute("SELECT pg_terminate_backend(%s)", [kept.info.backend_pid])
        assert (await cursor.fetchall()) == [(True,)]

    await writer.append(**request_fields(2))
    await writer.append(**request_fields(3))
    assert writer.writer()._postgres._connection is not kept
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == ["tool-1", "tool-2", "tool-3"]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_records_follow_a_head_that_another_writer_moved(transactions):
    """The writer appends after the head it last wrote without reading it again; when
    another writer (another gateway process, the console) has appended since, it must
    notice and append after theirs, never beside them."""
    await writer.append(**request_fields(1))
    await asyncio.to_thread(chain.append, **request_fields(2))
    await writer.append(**request_fields(3))
    await asyncio.to_thread(chain.append, **request_fields(4))
    await asyncio.to_thread(chain.append, **request_fields(5))
    records = await asyncio.gather(*(writer.append(**request_fields(n)) for n in range(6, 12)))

    assert [r.target for r in records] == [f"tool-{n}" for n in range(6, 12)]
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == [f"tool-{n}" for n in range(1, 12)]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 11


@pytest.fixture
def on_postgres() -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the writer keeps a connection of its own on Postgres only")


@pytest.fixture
def statements(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """The head after which each statement of the writer's tried to append ("tries"), the
    size of each batch appended under the head's lock ("locked"), and the head each read of
    it without a lock found ("reads")."""
    seen: dict[str, list[int]] = {"tries": [], "locked": [], "reads": []}
    append_at = writer.PostgresChain._append_at
    append_locked = writer.PostgresChain._append_locked
    read_head = writer.PostgresChain._read_head

    async def read(self: Any, connection: Any) -> Any:
        head = await read_head(self, connection)
        seen["reads"].append(head[0] if head else None)
        return head

    async def tried(self: Any, connection: Any, records: Any, head: tuple[int, str]) -> Any:
        seen["tries"].append(head[0])
        return await append_at(self, connection, records, head)

    async def locked(self: Any, connection: Any, rows: list[dict[str, Any]], *rest: Any) -> Any:
        seen["locked"].append(len(rows))
        return await append_locked(self, connection, rows, *rest)

    monkeypatch.setattr(writer.PostgresChain, "_append_at", tried)
    monkeypatch.setattr(writer.PostgresChain, "_append_locked", locked)
    monkeypatch.setattr(writer.PostgresChain, "_read_head", read)
    return seen


async def test_records_go_after_a_head_another_writer_moved_without_its_lock(
    transactions, on_postgres, statements
):
    """Another writer appended since this writer's last record (as other gateway processes
    on the same chain mostly have): the statement that finds the head moved answers where
    it is, and the records go after it in a second statement, with no lock taken."""
    first = await writer.append(**request_fields(1))
    assert statements["locked"] == [1]  # a new writer reads the head under its lock
    statements["tries"].clear()
    await asyncio.to_thread(chain.append, **request_fields(2, connection="other"))
    await asyncio.to_thread(chain.append, **request_fields(3, connection="other"))

    ours = await writer.append(**request_fields(4))

    # The statement itself said where the head was: no read.
    assert statements["tries"] == [first.seq, first.seq + 2]
    assert statements["reads"] == []
    assert statements["locked"] == [1]
    assert ours.seq == first.seq + 3
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == ["tool-1", "tool-2", "tool-3", "tool-4"]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_a_head_that_moves_before_every_try_is_appended_after_under_its_lock(
    transactions, on_postgres, statements, monkeypatch
):
    """Another writer moves the head before each of this writer's statements: after
    OPTIMISTIC_TRIES statements, each after the head the one before found, the records are
    appended under the head's lock, so a batch is written whatever the others do."""
    first = await writer.append(**request_fields(0))
    statements["tries"].clear()
    statements["locked"].clear()
    tried = writer.PostgresChain._append_at
    others: list[int] = []

    async def moved_first(self: Any, connection: Any, records: Any, head: Any) -> Any:
        others.append(len(others) + 1)
        await asyncio.to_thread(chain.append, **request_fields(100 + others[-1]))
        return await tried(self, connection, records, head)

    monkeypatch.setattr(writer.PostgresChain, "_append_at", moved_first)

    ours = await writer.append(**request_fields(1))

    tries = writer.OPTIMISTIC_TRIES
    assert statements["tries"] == [first.seq + n for n in range(tries)]
    assert statements["reads"] == []
    assert statements["locked"] == [1]
    assert ours.seq == first.seq + tries + 1
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == ["tool-0", *(f"tool-{100 + n}" for n in others), "tool-1"]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_a_record_waits_for_a_writer_that_holds_the_head(
    transactions, on_postgres, statements, default_isolation
):
    """Another process holds the head's lock while the writer appends: the record is
    written after that process's record, once it commits. The writer's statement found the
    head as it was before it waited; the writer reads where it is now and appends after
    it, without taking the lock itself. So too where the database's default isolation
    level would fail a statement that waited for a row another transaction changed."""
    import psycopg

    from mcpgw import pg

    first = await writer.append(**request_fields(1))
    statements["tries"].clear()
    statements["locked"].clear()
    pid = writer.writer()._postgres._connection.pgconn.backend_pid
    async with await psycopg.AsyncConnection.connect(pg.conninfo("test-other")) as other:
        async with other.transaction():
            cursor = other.cursor()
            await cursor.execute(chain.head_statement())
            head_seq, head_hash = await cursor.fetchone()
            (theirs,) = await asyncio.to_thread(
                chain.build, [request_fields(2, connection="other")], head_seq, head_hash
            )
            await cursor.execute(*await asyncio.to_thread(chain.insert_statement, [theirs]))
            waiting = asyncio.ensure_future(writer.append(**request_fields(3)))
            # The writer's statement is under way, waiting for the head's lock.
            async with await psycopg.AsyncConnection.connect(
                pg.conninfo("test-watch"), autocommit=True
            ) as watch:
                for _ in range(500):
                    await asyncio.sleep(0.01)
                    found = await watch.execute(
                        "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [pid]
                    )
                    if await found.fetchone() == ("Lock",):
                        break
                else:
                    pytest.fail("the writer's statement never waited for the head's lock")
            assert not waiting.done()
        ours = await waiting

    assert ours.seq == theirs.seq + 1
    assert ours.prev_hash == theirs.hash
    assert statements["tries"] == [first.seq, first.seq + 1]
    assert statements["reads"] == [theirs.seq]
    assert statements["locked"] == []
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 3


async def test_records_are_flushed_before_their_calls_go_on_whatever_the_database_default(
    transactions, on_postgres
):
    """A database (or role) whose default is synchronous_commit = off answers a commit
    before its log is on disk: a record written ahead of its call could be lost with the
    database's next crash, after the call went upstream. The writer's connection and
    Django's (the console's records) ask for the flush themselves; the isolation level they
    are written for too."""
    from django.db import connection

    with database_default("synchronous_commit", "off"):
        await writer.append(**request_fields(1))
        ours = writer.writer()._postgres._connection
        shown = await (await ours.execute("SHOW synchronous_commit")).fetchone()
        assert shown == ("on",)

        def django_settings() -> list[Any]:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SHOW synchronous_commit")
                    durable = cursor.fetchone()
                    cursor.execute("SHOW transaction_isolation")
                    return [durable, cursor.fetchone()]
            finally:
                connection.close()

        assert await asyncio.to_thread(django_settings) == [("on",), ("read committed",)]
        # The next record still goes on the same connection, as before.
        await writer.append(**request_fields(2))
        assert writer.writer()._postgres._connection is ours
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 2


async def test_callers_go_on_before_the_checkpoint_their_batch_crossed_is_signed(
    transactions, on_postgres, settings, monkeypatch, tmp_path
):
    """A batch that crosses a checkpoint (every AUDIT_CHECKPOINT_EVERY records) has a
    signed checkpoint file written after it: its records are committed, so its callers go
    on without waiting for that file (a thread, a signature, a write); the writer's flush,
    as at shutdown, waits for it."""
    import threading

    from audit import checkpoints

    settings.AUDIT = {**settings.AUDIT, "CHECKPOINT_EVERY": 0, "CHECKPOINT_DIR": str(tmp_path)}
    first = await writer.append(**request_fields(1))
    settings.AUDIT = {**settings.AUDIT, "CHECKPOINT_EVERY": first.seq + 1}
    signing, release = threading.Event(), threading.Event()
    write = checkpoints.write

    def held_write(seq: int, head_hash: str, kind: str = "checkpoint") -> Any:
        signing.set()
        release.wait(10)
        return write(seq, head_hash, kind)

    monkeypatch.setattr(checkpoints, "write", held_write)
    try:
        crossing = await asyncio.wait_for(writer.append(**request_fields(2)), 5)
        assert crossing.seq == first.seq + 1
        # The next record does not wait for the checkpoint either.
        await asyncio.wait_for(writer.append(**request_fields(3)), 5)
        assert await asyncio.to_thread(signing.wait, 5)
        flushing = asyncio.ensure_future(writer.flush())
        await asyncio.sleep(0.2)
        assert not flushing.done()
    finally:
        release.set()
    await asyncio.wait_for(flushing, 10)
    loaded = await asyncio.to_thread(checkpoints.load_all)
    assert [(c.seq, c.head_hash) for c in loaded.checkpoints] == [(crossing.seq, crossing.hash)]


async def test_a_write_stopped_midway_leaves_the_writer_able_to_write(transactions):
    """The writer's task is cancelled while its statement waits in the database (here for
    a head another transaction holds): the connection still has that statement under way,
    so the next records must go on a new one, after whatever the stopped one wrote."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the writer keeps a connection of its own on Postgres only")
    import psycopg

    from mcpgw import pg

    await writer.append(**request_fields(1))
    kept = writer.writer()._postgres._connection
    async with await psycopg.AsyncConnection.connect(pg.conninfo("test-other")) as other:
        async with other.transaction():
            await other.execute(chain.head_statement())  # holds the head's lock
            stopped = asyncio.ensure_future(writer.append(**request_fields(2)))
            await asyncio.sleep(0.3)
            drain = writer.writer()._task
            assert drain is not None and not drain.done()
            drain.cancel()
            with pytest.raises(asyncio.CancelledError):
                await drain
            stopped.cancel()

    record = await writer.append(**request_fields(3))
    assert writer.writer()._postgres._connection is not kept
    assert record.target == "tool-3"
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    # The stopped statement may still have committed once the lock came free.
    assert targets in (["tool-1", "tool-3"], ["tool-1", "tool-2", "tool-3"])


# A writer's backend other than the one whose pid is the parameter.
_OTHER_WRITER = "application_name = 'mcpgw-audit-writer' AND pid <> %s"


@contextlib.asynccontextmanager
async def _head_held() -> AsyncIterator[Any]:
    """While another transaction holds the chain head (and then ends without moving it): a
    connection to watch pg_stat_activity with."""
    import psycopg

    from mcpgw import pg

    async with (
        await psycopg.AsyncConnection.connect(pg.conninfo("test-watch"), autocommit=True) as watch,
        await psycopg.AsyncConnection.connect(pg.conninfo("test-other")) as other,
        other.transaction(),
    ):
        await other.execute(chain.head_statement())
        yield watch


def _break(connection: Any) -> None:
    """The network between the writer and the database fails on the writer's side."""
    import socket

    with socket.socket(fileno=os.dup(connection.pgconn.socket)) as sock:
        sock.shutdown(socket.SHUT_RDWR)


async def _wait_for_lock(watch: Any, where: str, params: list[Any]) -> int:
    """The pid of the backend that `where` picks out of pg_stat_activity, once it waits
    for a lock."""
    for _ in range(500):
        found = await watch.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            f" AND wait_event_type = 'Lock' AND {where}",
            params,
        )
        row = await found.fetchone()
        if row is not None:
            return int(row[0])
        await asyncio.sleep(0.01)
    pytest.fail(f"no backend ({where}) waited for a lock")


async def test_a_statement_that_commits_after_its_connection_broke_is_not_written_twice(
    transactions, on_postgres
):
    """The writer's connection breaks on the writer's side while its statement waits in
    the database for the chain head (held by a transaction that then ends without moving
    it). The database's backend goes on with the statement and commits it once the head is
    free; the writer, on a new connection, must find those records rather than append the
    same ones a second time."""
    first = await writer.append(**request_fields(1))
    kept = writer.writer()._postgres._connection
    old_pid = kept.pgconn.backend_pid
    async with _head_held() as watch:
        broken = asyncio.ensure_future(writer.append(**request_fields(2)))
        await _wait_for_lock(watch, "pid = %s", [old_pid])
        _break(kept)
        # The writer is on a new connection, waiting for the head too.
        await _wait_for_lock(watch, _OTHER_WRITER, [old_pid])
        assert not broken.done()
    # The head is free: the old backend's statement goes first, then the writer's.
    ours = await asyncio.wait_for(broken, 10)

    assert ours.seq == first.seq + 1
    targets = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
    )
    assert targets == ["tool-1", "tool-2"]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert (await writer.append(**request_fields(3))).seq == first.seq + 2


async def test_a_batch_whose_every_connection_broke_fails_its_calls_and_is_not_written_twice(
    transactions, on_postgres, monkeypatch
):
    """The writer's connection breaks while a batch's statement waits for the head, and so
    does the new one it tried next: the batch's callers get an error, and the records are
    not written again one by one, since the database may still finish the first
    statement, as it does here once the head is free: each record is in the chain once."""
    monkeypatch.setattr(writer, "RECONNECTS", 1)
    first = await writer.append(**request_fields(1))
    kept = writer.writer()._postgres._connection
    old_pid = kept.pgconn.backend_pid
    async with _head_held() as watch:
        both = asyncio.gather(
            writer.append(**request_fields(2)),
            writer.append(**request_fields(3)),
            return_exceptions=True,
        )
        await _wait_for_lock(watch, "pid = %s", [old_pid])
        _break(kept)
        new_pid = await _wait_for_lock(watch, _OTHER_WRITER, [old_pid])
        again = writer.writer()._postgres._connection
        assert again.pgconn.backend_pid == new_pid
        _break(again)
        failed = await asyncio.wait_for(both, 10)
    # The head is free: the first statement still goes through.

    assert all(isinstance(result, Exception) for result in failed), failed
    for _ in range(100):
        targets = await asyncio.to_thread(
            lambda: list(AuditRecord.objects.order_by("seq").values_list("target", flat=True))
        )
        if len(targets) == 3:
            break
        await asyncio.sleep(0.05)
    assert targets == ["tool-1", "tool-2", "tool-3"]
    ours = await writer.append(**request_fields(4))
    assert ours.seq == first.seq + 3
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_the_writer_registers_its_socket_once_and_leaves_nothing_open(
    transactions, statements, monkeypatch
):
    """The writer waits for its statements' answers through one registration with the
    event loop, kept between statements; psycopg's own statements on the same connection
    (the locked append after another writer moved the head) still get their answers; and
    closing the writer ends its session in the database (the watched socket is closed
    with it)."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("the writer keeps a connection of its own on Postgres only")
    loop = asyncio.get_running_loop()
    await writer.append(**request_fields(0))
    registrations = []
    real_add_reader = loop.add_reader

    def add_reader(fd: int, callback: Any, *args: Any) -> None:
        registrations.append(fd)
        real_add_reader(fd, callback, *args)

    loop.add_reader = add_reader  # type: ignore[method-assign]
    try:
        for n in range(1, 21):
            await writer.append(**request_fields(n))
        assert len(registrations) <= 1, registrations
        # Another writer moves the head, and the writer appends after it under its lock
        # at once (tries left out): psycopg's statements; then the writer's own appends
        # go on.
        await asyncio.to_thread(chain.append, **request_fields(21))
        tries = writer.OPTIMISTIC_TRIES
        monkeypatch.setattr(writer, "OPTIMISTIC_TRIES", 0)
        await writer.append(**request_fields(22))
        assert statements["locked"][-1] == 1
        monkeypatch.setattr(writer, "OPTIMISTIC_TRIES", tries)
        locked = len(statements["locked"])
        for n in range(23, 27):
            await writer.append(**request_fields(n))
        assert len(statements["locked"]) == locked
    finally:
        del loop.add_reader
    result = await asyncio.to_thread(chain.verify)
    assert result.ok and result.verified == 27, result

    postgres = writer.writer()._postgres
    socket = f"socket:[{os.fstat(postgres._connection.pgconn.socket).st_ino}]"

    def holding() -> int:
        fds = Path("/proc/self/fd")
        return sum(1 for fd in fds.iterdir() if _link(fd) == socket)

    assert holding() == 2  # libpq's socket and the watched duplicate
    await postgres.aclose()
    assert holding() == 0, "a descriptor of the writer's socket outlived its close"


def _link(path: Any) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def django_connection_objects() -> int:
    from django.db.backends.base.base import BaseDatabaseWrapper

    # By type: isinstance() asks a dead weak proxy among the objects for its class, and fails.
    return sum(issubclass(type(o), BaseDatabaseWrapper) for o in gc.get_objects())


async def test_calls_on_the_event_loop_make_no_django_connection_object_each(transactions):
    """Django keeps one connection object per async context, so code on the event loop
    that looks at `django.db.connections` makes a new one in every call (a dozen objects
    in reference cycles, left for the collector's slower passes). The writer's work on the
    loop must not: each call's records here are written from a task of its own."""
    await writer.append(**request_fields(0))  # the writer's own connection, made once
    gc.collect()
    gc.disable()  # what each call makes stays countable
    try:
        before = django_connection_objects()
        for n in range(1, 31):
            await asyncio.create_task(writer.append(**request_fields(n)))
        made = django_connection_objects() - before
    finally:
        gc.enable()
    # At most one per worker thread (SQLite writes from threads), never one per call.
    assert made < 10, made
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 31


AWKWARD_VALUES: list[dict[str, Any]] = [
    {"arguments": {"q": 'quotes " and \\ backslashes', "nested": [None, {"k": None}]}},
    {"arguments": {"text": "naïve café 東京 🚀", "n": -7, "x": 0.1, "big": 2**53}},
    {"arguments": None, "result": "a result that is one JSON string"},
    {"arguments": [], "result": {"content": [{"type": "text", "text": "x" * 20_000}]}},
    {"result": 12.5, "latency_ms": 3.217, "result_size": 42, "username": "ünï", "user_id": 7},
    {"result": {"f": 5.0, "e": 1e-7, "huge": 1e300}, "details": {"why": "line\nbreak\ttab"}},
    {"arguments": {"nul": "a\x00b", "surrogate": "\ud800"}, "user_agent": "agent/1 (x; y)"},
]


@pytest.mark.parametrize("batched", [False, True], ids=["one by one", "one batch"])
async def test_stored_records_read_back_exactly_as_written(transactions, batched):
    """What the writer sends and what the ORM reads back are the same values, one record
    at a time or many in one statement, and the chain verifies over them."""
    rows = [request_fields(n, **values) for n, values in enumerate(AWKWARD_VALUES)]
    if batched:
        records = await asyncio.gather(*(writer.append(**dict(row)) for row in rows))
        assert len(transactions) < len(rows)
    else:
        records = [await writer.append(**dict(row)) for row in rows]

    def stored() -> list[AuditRecord]:
        return list(AuditRecord.objects.order_by("seq"))

    for record, read in zip(records, await asyncio.to_thread(stored), strict=True):
        assert read.field_values() == record.field_values()
        assert read.hash == record.hash
    # The values as given, where the database can hold them as they are.
    by_target = {r.target: r for r in records}
    assert by_target["tool-1"].arguments["text"] == "naïve café 東京 🚀"
    assert by_target["tool-2"].result == "a result that is one JSON string"
    assert by_target["tool-2"].arguments is None
    assert by_target["tool-5"].result == {"f": 5.0, "e": 1e-7, "huge": "1e+300"}
    assert by_target["tool-6"].arguments == {"nul": "a\\u0000b", "surrogate": "\\ud800"}
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == len(rows)


def test_the_postgres_statements_do_not_grow_with_the_batch():
    """One statement text for any number of records: psycopg parses a statement it has
    seen once, and would parse a new one for every batch size."""
    records = chain.build([request_fields(n) for n in range(50)], 0, "0" * 64)
    head = (0, "0" * 64)
    one = chain.append_at_statement(records[:1], head)
    many = chain.append_at_statement(records, head)
    assert one[0] == many[0]
    assert len(one[1]) == len(many[1]) < 10
    assert chain.insert_statement(records[:1])[0] == chain.insert_statement(records)[0]


@pytest.fixture
def held_first_write(monkeypatch: pytest.MonkeyPatch, transactions: list[int]) -> asyncio.Event:
    """The writer's next transaction stays under way until the returned event is set."""
    release = asyncio.Event()
    counted = writer.GroupWriter._append_many
    held = [True]

    async def slow(self: writer.GroupWriter, rows: list[dict[str, Any]]) -> list[AuditRecord]:
        if held[0]:
            held[0] = False
            await release.wait()
        return await counted(self, rows)

    monkeypatch.setattr(writer.GroupWriter, "_append_many", slow)
    return release


def outcome_fields(n: int, composed: list[int] | None = None):
    """A compose function for `append_later` that notes when it runs."""

    def compose() -> dict[str, Any]:
        if composed is not None:
            composed.append(n)
        return request_fields(n, kind=Kind.CALL_OUTCOME)

    return compose


async def test_on_postgres_an_outcome_is_composed_while_the_next_record_commits(
    transactions, held_first_write
):
    """At one client: a call's outcome record waits to be composed until the next call's
    request record is sent, which goes to the database alone and at once; the outcome is
    composed while that commit is under way, and written after it."""
    composed: list[int] = []
    outcome = asyncio.ensure_future(writer.append_later(outcome_fields(1, composed)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert composed == []
    request = asyncio.ensure_future(writer.append(**request_fields(2)))
    await asyncio.sleep(0.01)
    # The request record's transaction is under way (held), alone; the outcome is
    # composed and waits for the next.
    assert composed == [1]
    assert [fields["target"] for fields, _ in writer.writer()._pending] == ["tool-1"]
    assert not request.done()
    held_first_write.set()
    first, second = await asyncio.wait_for(asyncio.gather(request, outcome), 5)
    assert transactions == [1, 1]
    assert (first.kind, second.kind) == (Kind.CALL_REQUEST, Kind.CALL_OUTCOME)
    assert second.seq == first.seq + 1
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_on_postgres_the_callers_of_a_written_batch_go_on_before_the_next_is_sent(
    transactions, held_first_write, monkeypatch
):
    """At one client: once the next call's request record is committed, that call goes on
    (upstream) before the previous call's outcome, which waited meanwhile, is hashed and
    sent; that work is not in the call's way. (On SQLite the outcome shares the request
    record's transaction instead.)"""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("on SQLite an outcome joins the next batch")
    events: list[str] = []
    send = writer.GroupWriter._append_many

    async def noted(self: writer.GroupWriter, rows: list[dict[str, Any]]) -> list[AuditRecord]:
        events.append("sent " + ",".join(row["target"] for row in rows))
        return await send(self, rows)

    monkeypatch.setattr(writer.GroupWriter, "_append_many", noted)
    outcome = asyncio.ensure_future(writer.append_later(outcome_fields(1)))
    await asyncio.sleep(0)

    async def call() -> None:
        await writer.append(**request_fields(2))
        events.append("call 2 goes on")

    request = asyncio.ensure_future(call())
    await asyncio.sleep(0.01)
    held_first_write.set()
    await asyncio.wait_for(asyncio.gather(request, outcome), 5)
    assert events == ["sent tool-2", "call 2 goes on", "sent tool-1"]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_on_postgres_an_outcome_alone_is_written_after_a_moment(transactions):
    """With no other record coming, an outcome is composed and written by itself."""
    await writer.append(**request_fields(0))  # the writer's connection, made once
    transactions.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    record = await asyncio.wait_for(writer.append_later(outcome_fields(1)), 5)
    assert loop.time() - started < 1
    assert transactions == [1]
    stored = await asyncio.to_thread(
        lambda: AuditRecord.objects.filter(seq=record.seq).values_list("kind", flat=True).get()
    )
    assert stored == Kind.CALL_OUTCOME


async def test_an_outcome_whose_caller_stopped_waiting_is_still_written(transactions):
    task = asyncio.ensure_future(writer.append_later(outcome_fields(1)))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await writer.append(**request_fields(2))
    await writer.flush()
    stored = await asyncio.to_thread(
        lambda: list(AuditRecord.objects.order_by("seq").values_list("kind", "target"))
    )
    assert stored == [(Kind.CALL_REQUEST, "tool-2"), (Kind.CALL_OUTCOME, "tool-1")]


async def test_an_outcome_that_cannot_be_composed_fails_only_its_caller(transactions):
    def broken() -> dict[str, Any]:
        raise ValueError("cannot compose")

    failing = asyncio.ensure_future(writer.append_later(broken))
    fine = asyncio.ensure_future(writer.append_later(outcome_fields(1)))
    request = await writer.append(**request_fields(2))
    with pytest.raises(ValueError, match="cannot compose"):
        await asyncio.wait_for(failing, 5)
    record = await asyncio.wait_for(fine, 5)
    assert record.seq == request.seq + 1
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error
    assert result.verified == 2


async def test_records_asked_for_while_a_transaction_runs_share_the_next(
    transactions, held_first_write
):
    """Records asked for while the writer is busy go together in its next transaction; the
    chain stays whole."""
    first = asyncio.ensure_future(writer.append(**request_fields(0)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(writer.append(**request_fields(1)))
    third = asyncio.ensure_future(writer.append(**request_fields(2)))
    await asyncio.sleep(0.05)
    assert not (first.done() or second.done() or third.done())
    held_first_write.set()
    records = await asyncio.wait_for(asyncio.gather(first, second, third), 5)
    assert transactions == [1, 2]
    assert [r.seq for r in records] == [records[0].seq + n for n in range(3)]
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_flush_composes_and_writes_what_waits(transactions, held_first_write, monkeypatch):
    # A wait far longer than the test: only flush can write the outcome.
    monkeypatch.setattr(writer, "COMPOSE_LATER_SECONDS", 60.0)
    first = asyncio.ensure_future(writer.append(**request_fields(0)))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(writer.append_later(outcome_fields(1)))
    flushed = asyncio.ensure_future(writer.flush())
    await asyncio.sleep(0.05)
    assert not flushed.done()
    held_first_write.set()
    await asyncio.wait_for(flushed, 5)
    assert first.done() and second.done()
    assert (await second).kind == Kind.CALL_OUTCOME
    assert transactions == [1, 1]


@pytest.fixture
def lingering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outcome records wait for others, as on the embedded database (SQLite)."""
    monkeypatch.setattr(writer, "_lingers", lambda: True)


async def test_where_outcomes_linger_one_shares_the_next_request_commit(transactions, lingering):
    """On SQLite a call's outcome record, written after the agent has its answer, may wait a
    moment for the next call's request record: the two go in one transaction. The request
    record itself never waits."""
    await writer.append(**request_fields(0))  # the writer's connection, made once
    transactions.clear()
    outcome = asyncio.ensure_future(writer.append_later(outcome_fields(1)))
    await asyncio.sleep(0)
    assert not outcome.done()
    request = await writer.append(**request_fields(2))
    record = await outcome
    assert transactions == [2]
    assert request.seq == record.seq + 1
    result = await asyncio.to_thread(chain.verify)
    assert result.ok, result.error


async def test_where_outcomes_linger_one_alone_is_written_after_the_linger(transactions, lingering):
    await writer.append(**request_fields(0))
    transactions.clear()
    loop = asyncio.get_running_loop()
    started = loop.time()
    record = await writer.append_later(outcome_fields(1))
    assert loop.time() - started >= writer.LINGER_SECONDS * 0.9
    assert transactions == [1]
    stored = await asyncio.to_thread(
        lambda: AuditRecord.objects.filter(seq=record.seq).values_list("kind", flat=True).get()
    )
    assert stored == Kind.CALL_OUTCOME


async def test_flush_writes_lingering_records_at_once(transactions, lingering, monkeypatch):
    # A linger far longer than the test: only flush can write the record.
    monkeypatch.setattr(writer, "LINGER_SECONDS", 60.0)
    await writer.append(**request_fields(0))
    outcome = asyncio.ensure_future(writer.append_later(outcome_fields(1)))
    await asyncio.sleep(0.05)
    assert not outcome.done()
    await asyncio.wait_for(writer.flush(), 5)
    assert outcome.done()
    assert (await outcome).kind == Kind.CALL_OUTCOME
