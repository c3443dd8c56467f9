"""Throughput of the audit trail on Postgres: appends, verify, export, and memory.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres uv run python -m bench.audit_bench

DATABASE_URL names the server and a role that may create databases; the benchmark
creates its own database (mcpgw_bench, or --database NAME), migrates it, and drops it at
the end. It prints:

- appends/s with 1, 4 and 16 concurrent writers, each a separate process calling
  `audit.chain.append` (as separate gateway processes would) for --seconds each;
- appends/s with 1, 8, 32 and 64 concurrent calls of one process writing through the
  data path's group commit (`audit.writer`), and how many records shared a transaction;
- verify records/s over --records records (100,000 by default), with signed checkpoints
  every AUDIT_CHECKPOINT_EVERY records as in production;
- export rows/s through the CSV generator of `audit.export`;
- peak RSS of every phase's process.

Verify and export each run in a fresh process, so their peak RSS is their own.
"""

import argparse
import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
WRITER_COUNTS = (1, 4, 16)
GROUP_CALLERS = (1, 8, 32, 64)
TOP_UP_BATCH = 5000


def peak_rss_mib() -> float:
    # Linux reports kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup_django() -> None:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcpgw.settings")
    import django

    django.setup()


def call_record(i: int) -> dict[str, Any]:
    """A typical write-ahead record of a tool call."""
    from audit.chain import new_call_id
    from audit.models import Kind

    return {
        "kind": Kind.CALL_REQUEST,
        "call_id": new_call_id(),
        "user_id": 1,
        "username": "alice",
        "token": "mgw_abcd…wxyz",
        "run_label": "bench",
        "client_address": "10.0.0.7",
        "user_agent": "bench-agent/1.0",
        "connection": "crm",
        "era": "modern",
        "method": "tools/call",
        "target": "lookup_customer",
        "request_id": str(i),
        "arguments": {"customer_id": i, "fields": ["name", "email"], "note": "ünïcødé"},
    }


def writer(ready: Any, seconds: float, results: Any) -> None:
    """Append records for `seconds` once every writer is ready; reports (appended, peak
    RSS MiB) on `results`."""
    setup_django()
    from django.db import connection

    from audit import chain

    records = [call_record(i) for i in range(200)]
    connection.ensure_connection()
    ready.wait()
    deadline = time.perf_counter() + seconds
    appended = 0
    while time.perf_counter() < deadline:
        chain.append(**dict(records[appended % len(records)]))
        appended += 1
    results.put((appended, peak_rss_mib()))


def group_writer(callers: int, seconds: float) -> tuple[int, int, float]:
    """`callers` concurrent calls of one process appending through the data path's group
    commit (`audit.writer`) for `seconds`; returns (appended, transactions, peak RSS MiB)."""
    import asyncio

    setup_django()
    from audit import writer

    transactions = 0
    real = writer.GroupWriter._append_many

    async def counted(self: writer.GroupWriter, rows: list[dict[str, Any]]) -> Any:
        nonlocal transactions
        transactions += 1
        return await real(self, rows)

    writer.GroupWriter._append_many = counted  # type: ignore[method-assign]
    records = [call_record(i) for i in range(200)]

    async def run() -> int:
        deadline = time.perf_counter() + seconds
        appended = 0

        async def call() -> None:
            nonlocal appended
            while time.perf_counter() < deadline:
                await writer.append(**dict(records[appended % len(records)]))
                appended += 1

        await asyncio.gather(*(call() for _ in range(callers)))
        return appended

    appended = asyncio.run(run())
    return appended, transactions, peak_rss_mib()


def top_up(total: int) -> int:
    """Grow the chain to `total` records; returns how many were added."""
    setup_django()
    from audit import chain
    from audit.models import AuditHead

    head = AuditHead.objects.get(pk=1).seq
    added = 0
    while head + added < total:
        size = min(TOP_UP_BATCH, total - head - added)
        chain.append_many([call_record(head + added + n) for n in range(size)])
        added += size
    return added


def verify() -> tuple[int, float, str | None, float]:
    setup_django()
    from audit import chain

    started = time.perf_counter()
    result = chain.verify()
    return result.verified, time.perf_counter() - started, result.error, peak_rss_mib()


def export_csv() -> tuple[int, float, int, float]:
    """Rows and bytes through the CSV export generator."""
    setup_django()
    from audit import export
    from audit.models import AuditHead, AuditRecord

    head = AuditHead.objects.get(pk=1).seq
    rows = 0

    def counted(chunks: Any) -> Any:
        nonlocal rows
        for chunk in chunks:
            rows += len(chunk)
            yield chunk

    size = 0
    started = time.perf_counter()
    for text in export.csv_lines(counted(export.record_chunks(AuditRecord.objects.all(), head))):
        size += len(text.encode())
    return rows, time.perf_counter() - started, size, peak_rss_mib()


def export_available() -> bool:
    setup_django()
    try:
        from audit import export
    except ImportError:
        return False
    return hasattr(export, "csv_lines") and hasattr(export, "record_chunks")


def in_fresh_process(function: Callable[..., Any], *args: Any) -> Any:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def run_writers(count: int, seconds: float) -> tuple[float, float]:
    """Appends/s of `count` concurrent writer processes, and their largest peak RSS."""
    context = get_context("spawn")
    # The clock starts once every process has set Django up and connected.
    ready = context.Barrier(count)
    results = context.Queue()
    processes = [
        context.Process(target=writer, args=(ready, seconds, results)) for _ in range(count)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join()
    appended = sum(n for n, _rss in reports)
    return appended / seconds, max(rss for _n, rss in reports)


def admin_url(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def create_database(server_url: str, name: str) -> None:
    with psycopg.connect(admin_url(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def drop_database(server_url: str, name: str) -> None:
    with psycopg.connect(admin_url(server_url, "postgres"), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [name]
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def scratch_database(name: str, what: str) -> Iterator[str]:
    """A migrated database of its own on the Postgres server DATABASE_URL names, with
    Django set up on it (and DATABASE_URL naming it, for processes started meanwhile);
    dropped at the end, with the data directory made for it. Exits with a message when
    DATABASE_URL does not name Postgres. Yields the database's URL."""
    server_url = os.environ.get("DATABASE_URL", "")
    if not server_url.startswith(("postgres://", "postgresql://")):
        sys.exit(f"set DATABASE_URL to a Postgres server (the {what} makes its own database)")
    database_url = admin_url(server_url, name)
    data_dir = tempfile.mkdtemp(prefix="mcpgw-bench-")
    os.environ.update(
        {
            "DATABASE_URL": database_url,
            "DATA_DIR": data_dir,
            "DJANGO_SETTINGS_MODULE": "mcpgw.settings",
        }
    )
    os.environ.pop("REDIS_URL", None)
    create_database(server_url, name)
    try:
        setup_django()
        from django.core.management import call_command
        from django.db import connections

        call_command("migrate", verbosity=0)
        connections.close_all()
        yield database_url
    finally:
        from django.db import connections

        connections.close_all()
        drop_database(server_url, name)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", default="mcpgw_bench", help="scratch database to use")
    parser.add_argument("--records", type=int, default=100_000, help="chain length to verify")
    parser.add_argument("--seconds", type=float, default=5.0, help="append time per level")
    options = parser.parse_args()

    # The writer, verify and export processes inherit the scratch database's URL.
    with scratch_database(options.database, "benchmark"):
        print(f"audit bench on database {options.database} ({os.cpu_count()} CPUs)")

        for count in WRITER_COUNTS:
            rate, rss = run_writers(count, options.seconds)
            print(
                f"append, {count:2d} writer(s): {rate:10,.0f} appends/s  (peak RSS {rss:.0f} MiB)"
            )

        for callers in GROUP_CALLERS:
            appended, transactions, rss = in_fresh_process(group_writer, callers, options.seconds)
            print(
                f"group commit, {callers:2d} concurrent calls in one process: "
                f"{appended / options.seconds:10,.0f} appends/s, "
                f"{appended / max(transactions, 1):.1f} records per transaction  "
                f"(peak RSS {rss:.0f} MiB)"
            )

        started = time.perf_counter()
        added = in_fresh_process(top_up, options.records)
        elapsed = time.perf_counter() - started
        print(
            f"top-up: {added:,} records in batches of {TOP_UP_BATCH} "
            f"({added / elapsed if elapsed else 0:,.0f} records/s through append_many)"
        )

        verified, seconds, error, rss = in_fresh_process(verify)
        status = "OK" if error is None else f"FAILED: {error}"
        print(
            f"verify: {verified:,} records in {seconds:.2f} s = {verified / seconds:,.0f} "
            f"records/s, {status}  (peak RSS {rss:.0f} MiB)"
        )

        if in_fresh_process(export_available):
            rows, seconds, size, rss = in_fresh_process(export_csv)
            print(
                f"export CSV: {rows:,} rows, {size / 2**20:.1f} MiB in {seconds:.2f} s = "
                f"{rows / seconds:,.0f} rows/s  (peak RSS {rss:.0f} MiB)"
            )
        else:
            print("export: skipped (audit.export has no CSV generator in this checkout)")
        print(f"peak RSS of the benchmark's own process: {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
