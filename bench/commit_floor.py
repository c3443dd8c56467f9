"""What the write-ahead record costs on this machine's Postgres, against what any commit
costs there: the floor under the gateway's added latency at one client.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres uv run python -m bench.commit_floor

DATABASE_URL names the server and a role that may create databases; the script creates its
own database (mcpgw_floor, or --database NAME), migrates it, and drops it at the end. Over
one connection, one statement at a time (as the audit writer works at one client), it
times in alternating rounds:

- `SELECT 1`: a round trip that does nothing;
- an insert of one short row into a table without indexes, committed: the least a durable
  write costs (a round trip and a wait for the log flush);
- the same insert with `synchronous_commit = off`, for comparison only: no wait for the
  flush (the gateway never writes its records so);
- the audit writer's own append (`audit.writer`, as the data path calls it) of a call's
  request record, and of its outcome record holding the benchmark's 10 KB result, masked;
- with no database at all: 512 bytes written to a local file and flushed to its disk
  (`fdatasync`), at the next offset of a file allocated beforehand, as Postgres writes its
  log. The file is made in --flush-dir (the current directory unless given) and removed at
  the end; the line says whether that is the file system of the database's data directory.
  This is what any durable record costs on that disk, with no round trip and no statement.

For each it prints the median and 90th percentile in µs (the writer's appends include
building and hashing the record in this process), and the CPU time the database's backend
used per statement (read from /proc, so only where Postgres runs on this machine).
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.audit_bench import scratch_database


def backend_cpu_seconds(pid: int) -> float | None:
    """User and system CPU time of a backend process, if it runs on this machine (a
    process of that number that is not Postgres's, as in another container, is not it)."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    if not name.startswith("postgres"):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Series:
    def __init__(self, label: str) -> None:
        self.label = label
        self.times: list[float] = []
        self.cpu = 0.0
        self.cpu_known = True

    def line(self) -> str:
        times = sorted(self.times)
        p50 = statistics.median(times) * 1e6
        p90 = times[min(len(times) - 1, int(len(times) * 0.9))] * 1e6
        cpu = f"{self.cpu / len(times) * 1e6:6.0f} µs" if self.cpu_known else "     n/a"
        return f"{self.label:48s} {p50:7.0f} {p90:7.0f}   {cpu}"


async def measure(
    series: Series, pid: int | None, statement: Callable[[], Awaitable[object]], count: int
) -> None:
    before = None if pid is None else backend_cpu_seconds(pid)
    for _ in range(count):
        start = time.perf_counter()
        await statement()
        series.times.append(time.perf_counter() - start)
    after = None if pid is None else backend_cpu_seconds(pid)
    if before is None or after is None:
        series.cpu_known = False
    else:
        series.cpu += after - before


def request_fields() -> dict[str, object]:
    from audit.models import Kind

    return {
        "kind": Kind.CALL_REQUEST,
        "call_id": uuid.uuid4(),
        "user_id": 1,
        "username": "admin",
        "token": "mgw_…a1b2",
        "client_address": "127.0.0.1",
        "connection": "fast",
        "era": "modern",
        "method": "tools/call",
        "target": "report",
        "request_id": "7",
        "user_agent": "wrk",
        "arguments": {"query": "orders", "limit": 20},
    }


def outcome_fields(result: object, size: int) -> dict[str, object]:
    from audit.models import Kind

    return {
        **request_fields(),
        "kind": Kind.CALL_OUTCOME,
        "arguments": None,
        "result": result,
        "result_size": size,
        "result_digest": "0" * 64,
        "outcome": "ok",
        "latency_ms": 1.5,
        "masking": {"EMAIL": 80, "CARD": 80},
    }


def masked_result() -> tuple[object, int]:
    """The benchmark upstream's 10 KB result, masked with the default rules, as the audit
    trail stores it."""
    from audit.canonical import canonical
    from bench.upstream_fast import report_text
    from masking.engine import Report
    from masking.service import AUDIT, masker_for

    result = {"content": [{"type": "text", "text": report_text(10 * 1024)}]}
    masked = masker_for(None, "report", AUDIT).mask_json(result, Report())
    return masked, len(canonical(masked))


# What one local flush writes: about a request record's row.
FLUSHED_BYTES = 512
_FLUSHED = b"r" * FLUSHED_BYTES


class LocalLog:
    """A file allocated beforehand and written at the next offset, each write flushed to
    the disk (`fdatasync`), as Postgres writes its log; removed by `close`."""

    def __init__(self, directory: str, writes: int, label: str) -> None:
        self.label = label
        self.fd, self.path = tempfile.mkstemp(prefix="commit-floor-", dir=directory)
        self.offset = 0
        try:
            os.posix_fallocate(self.fd, 0, FLUSHED_BYTES * writes)
            os.fsync(self.fd)
        except BaseException:
            self.close()
            raise

    async def write(self) -> None:
        os.pwrite(self.fd, _FLUSHED, self.offset)
        os.fdatasync(self.fd)
        self.offset += FLUSHED_BYTES

    def close(self) -> None:
        os.close(self.fd)
        os.unlink(self.path)


def same_file_system(directory: str, data_directory: str) -> str:
    """Whether a directory is on the file system of the database's data directory: "yes",
    "no", or "unknown" where that directory cannot be read (another machine, a container)."""
    try:
        same = os.stat(directory).st_dev == os.stat(data_directory).st_dev
    except OSError:
        return "unknown"
    return "yes" if same else "no"


async def run(
    database_url: str,
    statements: int,
    rounds: int,
    result: object,
    size: int,
    local: LocalLog,
) -> list[Series]:
    from audit import writer

    plain = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    unflushed = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        return await _run(plain, unflushed, statements, rounds, result, size, local)
    finally:
        await plain.close()
        await unflushed.close()
        await writer.flush()
        writer.writer()._postgres.discard()


async def _run(
    plain: psycopg.AsyncConnection[Any],
    unflushed: psycopg.AsyncConnection[Any],
    statements: int,
    rounds: int,
    result: object,
    size: int,
    local: LocalLog,
) -> list[Series]:
    from audit import writer

    await plain.execute("CREATE TABLE floor_probe (id bigserial PRIMARY KEY, note text)")
    plain_pid = plain.pgconn.backend_pid
    await unflushed.execute("SET synchronous_commit = off")
    group = writer.writer()
    await group.append(request_fields())  # opens the writer's own connection
    writer_pid = group._postgres._connection.pgconn.backend_pid

    async def select_one() -> None:
        await plain.execute("SELECT 1", prepare=True)

    async def insert() -> None:
        await plain.execute("INSERT INTO floor_probe (note) VALUES ('probe')", prepare=True)

    async def insert_unflushed() -> None:
        await unflushed.execute("INSERT INTO floor_probe (note) VALUES ('probe')", prepare=True)

    async def append_request() -> None:
        await group.append(request_fields())

    async def append_outcome() -> None:
        await group.append(outcome_fields(result, size))

    plan = [
        (Series("SELECT 1 (round trip)"), plain_pid, select_one),
        (Series("insert one row, committed"), plain_pid, insert),
        (
            Series("the same, synchronous_commit off"),
            unflushed.pgconn.backend_pid,
            insert_unflushed,
        ),
        (Series("audit append: request record"), writer_pid, append_request),
        (Series(f"audit append: outcome record ({size:,} B result)"), writer_pid, append_outcome),
        (Series(local.label), None, local.write),
    ]
    for _, _, statement in plan:  # warm-up: plans prepared, caches filled
        for _ in range(50):
            await statement()
    for _ in range(rounds):
        for series, pid, statement in plan:
            await measure(series, pid, statement, statements // rounds)
    return [series for series, _, _ in plan]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database", default="mcpgw_floor", help="scratch database to use")
    parser.add_argument("--statements", type=int, default=3000, help="per kind of statement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds")
    parser.add_argument(
        "--flush-dir", default=".", help="where the local file of the last line is made"
    )
    options = parser.parse_args()
    if options.rounds < 1 or options.statements < 1 or options.statements % options.rounds:
        sys.exit("--statements must be a multiple of --rounds, both at least 1")
    if not os.path.isdir(options.flush_dir) or not os.access(options.flush_dir, os.W_OK):
        sys.exit(f"--flush-dir {options.flush_dir}: not a directory this process may write in")
    with scratch_database(options.database, "script") as database_url:
        with psycopg.connect(database_url) as conn:
            version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
            flush = conn.execute("SHOW wal_sync_method").fetchone()[0]  # type: ignore[index]
            data_directory = conn.execute("SHOW data_directory").fetchone()[0]  # type: ignore[index]
        print(
            f"commit floor on {os.cpu_count()} CPUs, PostgreSQL {version} "
            f"(wal_sync_method {flush}), {options.statements} statements of each kind "
            f"in {options.rounds} alternating rounds, one at a time"
        )
        from django.db import connections

        result, size = masked_result()
        connections.close_all()
        same = same_file_system(options.flush_dir, data_directory)
        label = f"local file: {FLUSHED_BYTES} B + fdatasync (same fs: {same})"
        local = LocalLog(options.flush_dir, options.statements + 50, label)
        try:
            series = asyncio.run(
                run(database_url, options.statements, options.rounds, result, size, local)
            )
        finally:
            local.close()
        print(f"{'statement':48s} {'p50 µs':>7s} {'p90 µs':>7s}   backend CPU/statement")
        for one in series:
            print(one.line())


if __name__ == "__main__":
    main()
