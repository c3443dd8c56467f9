"""The gateway benchmark runs, in its short mode, and prints its tables.

Nothing is asserted about times: on a shared CI machine they mean nothing. With
DATABASE_URL naming Postgres (as `make test` sets it) the postgres configuration runs too,
in a scratch database of its own that the harness drops at the end.
"""

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from bench.audit_bench import admin_url

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "mcpgw_bench_gw_ci"


def _server_url() -> str:
    url = os.environ.get("DATABASE_URL", "")
    return url if url.startswith(("postgres://", "postgresql://")) else ""


def _bench(*arguments: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.gateway_bench", *arguments],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_gateway_bench_short_run_prints_its_tables():
    done = _bench("--short", "--database", DATABASE, timeout=900)
    output = done.stdout
    assert done.returncode == 0, f"{output[-4000:]}\n{done.stderr[-4000:]}"
    assert "== Per configuration: tools/call through the gateway vs direct ==" in output
    assert "== Scaling: latency vs clients through the gateway ==" in output
    assert "== Scaling: gateway memory with idle legacy sessions" in output
    for era in ("legacy", "modern"):
        assert f"embedded  {era}" in output
    gateway_rows = [
        line for line in output.splitlines() if line.startswith(" " * 20) and "gateway" in line
    ]
    # One row per configuration, era and client count (1 and 8 in the short mode).
    configurations = 2 if _server_url() else 1
    assert len(gateway_rows) == configurations * 2 * 2, output
    if configurations == 2:
        assert "postgres  legacy" in output
        assert "verify: " in output and ", OK " in output
        # The scratch database is gone.
        with psycopg.connect(admin_url(_server_url(), "postgres"), autocommit=True) as conn:
            left = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE])
            assert left.fetchone() is None


def test_gateway_bench_counts_instructions_per_call_under_callgrind(tmp_path):
    """--instructions: the gateway runs under callgrind, and each measured run's
    instructions per call are printed (a count, which does not drift with the machine's
    speed as times do)."""
    done = _bench(
        "--short",
        "--configs",
        "embedded",
        "--eras",
        "modern",
        "--concurrency",
        "1",
        "--memory",
        "none",
        # Code runs slowest the first times callgrind meets it: long enough for calls.
        "--seconds",
        "20",
        "--instructions",
        str(tmp_path),
        timeout=1200,
    )
    output = done.stdout
    assert done.returncode == 0, f"{output[-4000:]}\n{done.stderr[-4000:]}"
    heading = "== Instructions the gateway process executed per call (callgrind) =="
    assert heading in output, output
    row = output.split(heading, 1)[1].splitlines()[2].split()
    assert row[:3] == ["embedded", "modern", "1"], output
    per_run = [float(value) for value in row[3:]]
    # One figure per round; a call through the gateway takes millions of instructions.
    assert len(per_run) == 1 and per_run[0] > 1, output


@pytest.mark.skipif(not _server_url(), reason="the write-ahead record's phases are on Postgres")
def test_gateway_bench_counts_the_phases_of_a_call(tmp_path):
    """--count-calls: among the per-call counts, the wall-clock phases of a tools/call,
    which follow one another: together they make up most of the whole, never more; and
    the same phases for the slowest 1% of the calls, against all of them."""
    done = _bench(
        "--short",
        "--configs",
        "postgres",
        "--eras",
        "modern",
        "--concurrency",
        "1",
        "--memory",
        "none",
        "--seconds",
        "3",
        "--database",
        "mcpgw_bench_phases_ci",
        "--count-calls",
        str(tmp_path),
        timeout=900,
    )
    output = done.stdout
    assert done.returncode == 0, f"{output[-4000:]}\n{done.stderr[-4000:]}"
    table, tail = output.split("== Per call (bench.counting_gateway)", 1)[1].split(
        "the slowest 1% of these calls", 1
    )
    phases = {}
    for line in table.splitlines():
        if "phase " in line:
            count, _x, micros, *_rest = line.split()
            name = line.split("phase ", 1)[1].split(":", 1)[0]
            assert float(count) == 1.0, line  # every call passed each phase once
            phases[name] = float(micros)
    assert set(phases) == {"1", "2", "2a", "2b", "3", "4", "5", "1-5"}, table
    # The database's round trip and the wait before it are parts of the audit record.
    assert phases["2a"] + phases["2b"] <= phases["2"]
    consecutive = phases["1"] + phases["2"] + phases["3"] + phases["4"] + phases["5"]
    # Between the phases only short steps go unstamped (the hold check, the upstream
    # request's body).
    assert phases["1-5"] * 0.7 <= consecutive <= phases["1-5"] * 1.01, phases
    slowest, every = {}, {}
    for line in tail.splitlines():
        if " µs against " in line:
            slow, _unit, _against, all_calls, _unit, name, *_label = line.split()
            slowest[name.rstrip(":")], every[name.rstrip(":")] = float(slow), float(all_calls)
    assert set(slowest) == set(phases), tail
    # The whole of a call as the table above has it; the slowest calls took longer.
    assert abs(every["1-5"] - phases["1-5"]) <= 1, (every, phases)
    assert slowest["1-5"] >= every["1-5"], tail
    assert "of calls: a garbage collection ran" in tail
    assert "of calls: a signed audit checkpoint was written" in tail


def test_gateway_bench_refuses_bad_options_with_a_message():
    for arguments, message in (
        (("--concurrency", "abc"), "client counts such as 1,8,32"),
        (("--concurrency", "0"), "client counts are 1 or more"),
        (("--seconds", "-1"), "must be more than 0"),
        (("--rounds", "x"), "is not a number"),
        (("--configs", "nope"), "unknown configuration"),
    ):
        done = _bench(*arguments, timeout=60)
        assert done.returncode == 2, (arguments, done.stderr)
        assert message in done.stderr, (arguments, done.stderr)
        assert "Traceback" not in done.stderr


def test_gateway_bench_refuses_to_count_instructions_at_more_clients(tmp_path):
    done = _bench("--concurrency", "1,8", "--instructions", str(tmp_path), timeout=60)
    assert done.returncode != 0
    assert "one client only" in done.stderr


@pytest.mark.parametrize(
    "arguments",
    [("--server", "granian"), ("--server", "uvicorn", "--workers", "2")],
)
def test_gateway_bench_counts_instructions_of_one_serving_process_only(tmp_path, arguments):
    # Their serving processes are children: callgrind would count a parent that serves none.
    done = _bench(
        "--concurrency",
        "1",
        "--memory",
        "none",
        "--instructions",
        str(tmp_path),
        *arguments,
        timeout=60,
    )
    assert done.returncode != 0
    assert "counts one serving process" in done.stderr
    assert "Traceback" not in done.stderr


def test_gateway_bench_refuses_an_unknown_event_loop(monkeypatch):
    monkeypatch.setenv("GATEWAY_EVENT_LOOP", "tokio")
    done = _bench("--short", timeout=60)
    assert done.returncode != 0
    assert "GATEWAY_EVENT_LOOP must be one of uvloop, asyncio, not 'tokio'" in done.stderr
    assert "Traceback" not in done.stderr


def test_upstream_client_cost_prints_each_client_per_round():
    done = subprocess.run(
        [sys.executable, "-m", "bench.upstream_client_cost", "--requests", "50", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "50 requests per client and round, answers of 10432 bytes"
    assert [line.split(":")[0] + " " + line.split()[2] for line in lines[1:]] == [
        "round 1 gateway.http1",
        "round 1 aiohttp",
        "round 1 bare",
        "round 2 gateway.http1",
        "round 2 aiohttp",
        "round 2 bare",
    ]
    assert all(line.endswith("µs CPU per request") for line in lines[1:])


@pytest.mark.skipif(not _server_url(), reason="the commit floor is measured on Postgres")
def test_commit_floor_prints_each_statement_and_drops_its_database(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.commit_floor",
            "--database",
            "mcpgw_floor_ci",
            "--statements",
            "20",
            "--rounds",
            "2",
            "--flush-dir",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    lines = done.stdout.splitlines()
    assert lines[0].startswith("commit floor on ")
    assert "20 statements of each kind in 2 alternating rounds" in lines[0]
    labels = [line[:48].strip() for line in lines[2:]]
    assert labels[:4] == [
        "SELECT 1 (round trip)",
        "insert one row, committed",
        "the same, synchronous_commit off",
        "audit append: request record",
    ]
    assert labels[4].startswith("audit append: outcome record (")
    # Postgres runs on this machine: whether its data directory shares tmp_path's file
    # system is known.
    assert labels[5] in (
        "local file: 512 B + fdatasync (same fs: yes)",
        "local file: 512 B + fdatasync (same fs: no)",
    )
    assert len(labels) == 6
    for line in lines[2:]:
        p50, p90 = (float(value) for value in line[48:].split()[:2])
        assert 0 < p50 <= p90
    assert lines[7].split()[-1] == "n/a"  # no backend CPU for a file's flush
    assert list(tmp_path.iterdir()) == []
    with psycopg.connect(admin_url(_server_url(), "postgres")) as conn:
        left = conn.execute("SELECT 1 FROM pg_database WHERE datname = 'mcpgw_floor_ci'")
        assert left.fetchone() is None


@pytest.mark.parametrize(
    ("arguments", "database_url", "message"),
    [
        (["--flush-dir", "{tmp}/none"], None, "not a directory this process may write in"),
        ([], "sqlite:///tmp/x.sqlite3", "set DATABASE_URL to a Postgres server"),
    ],
    ids=["flush dir", "not postgres"],
)
def test_commit_floor_refuses_what_it_cannot_use(
    tmp_path, monkeypatch, arguments, database_url, message
):
    if database_url:
        monkeypatch.setenv("DATABASE_URL", database_url)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.commit_floor",
            *(a.format(tmp=tmp_path) for a in arguments),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert "Traceback" not in done.stderr
