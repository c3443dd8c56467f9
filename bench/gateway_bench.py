"""The gateway against a direct connection: latency, throughput, CPU and memory.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres \\
        uv run python -m bench.gateway_bench [--short]

It starts its own fast upstream (`bench.upstream_fast`) and its own gateway processes
(uvicorn with httptools on uvloop, one process, as `make run` serves it: `python -m
mcpgw.serve`; GATEWAY_EVENT_LOOP=asyncio for asyncio's own loop), set up as an operator
would (`manage.py migrate`, `add_connection`, `ensure_admin`, `issue_token`), in two
configurations:

- embedded: the embedded default (SQLite, no Redis), the default masking rules, a 200-byte
  tool result, no policy;
- postgres: the audit trail on Postgres (a scratch database, `--database`, created here
  and dropped at the end; DATABASE_URL names the server and a role that may create
  databases), the default masking rules on a 10 KB result full of e-mail addresses and
  card numbers, and a policy of 50 rules that the call's tool matches only at the last.
  REDIS_URL, if set, is passed to this gateway too.

For each configuration, protocol era (legacy with sessions, 2026-07-28 stateless) and
number of clients (1, 8, 32, 64) it drives `tools/call` directly at the upstream and
through the gateway, alternating, after a warm-up, with `wrk` (Debian package) and
`bench/wrk/mcp.lua`, or without wrk with the asyncio generator in `bench.loadgen`.
Legacy-era runs first initialize one session per client (directly, and through the
gateway); each client connection then calls in its own session.

Printed per configuration: p50/p95/p99 latency, calls/s, the ratio to direct, the
gateway's CPU seconds per 1,000 calls (utime+stime of the serving processes from /proc),
the Postgres backends' CPU seconds per 1,000 calls, and the gateway's peak RSS; then a
scaling table (latency vs clients), the gateway's memory with 1,000 and 10,000 idle
legacy sessions (and with idle GET streams), and the verify and export rates of the
audit trail the run wrote (measured as `bench.audit_bench` measures them). Everything
listens on 127.0.0.1 only; the run stops by itself and removes what it created.

--short is the CI mode (1 and 8 clients, 1-second runs, fewer sessions): it proves that
the harness works, its numbers mean little. --profile DIR records each gateway run with
py-spy (collapsed stacks, see `bench.stacks`); --count-calls DIR runs the gateway under
`bench.counting_gateway` and writes per-call counts of thread hops, SQL statements, JSON
encodings and masking, and the wall-clock phases of a call (to its audit record, the
record, the upstream, the answer masked, the answer written), and the same phases for the
slowest 1% of calls against all of them, with how many of those saw a garbage collection
or a signed audit checkpoint. Both slow the gateway down:
their tables are not for comparison.

--instructions DIR runs each gateway under valgrind's callgrind and prints the machine
instructions the gateway process executed per call in each measured run (counted from
the run's start to its end, start-up and warm-up left out). Unlike times, instruction
counts hardly depend on what else the machine does, so they compare two versions of the
code on a shared virtual machine whose speed drifts by a quarter within an hour. Calls run
30-50 times slower under callgrind: one client only (more would time out and retry).
"""

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcpgw.serve import event_loop_setting

from . import loadgen
from .loadgen import LoadResult
from .upstream_fast import TOOL_NAME

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
SLUG = "bench"
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
ERAS = ("legacy", "modern")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The gateway's environment is the operator's: nothing from a test run or this shell's
# Django settings leaks into it.
SCRUBBED_ENV = ("DATABASE_URL", "REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE", "DATA_DIR")


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    postgres: bool
    result_bytes: int
    policy_rules: int


CONFIGS = {
    "embedded": Config(
        "embedded",
        "embedded default: SQLite, no Redis, default masking rules, 200-byte result, no policy",
        postgres=False,
        result_bytes=200,
        policy_rules=0,
    ),
    "postgres": Config(
        "postgres",
        "audit on Postgres, default masking rules on a 10 KB result, 50 policy rules",
        postgres=True,
        result_bytes=10 * 1024,
        policy_rules=50,
    ),
}


@dataclass(frozen=True)
class Mode:
    concurrency: tuple[int, ...]
    seconds: float
    warmup: float
    rounds: int
    session_steps: tuple[int, ...]
    streams: int
    stream_wait: float


FULL = Mode((1, 8, 32, 64), 5.0, 3.0, 2, (1000, 10_000), 1000, 75.0)
SHORT = Mode((1, 8), 1.0, 1.0, 1, (50, 200), 10, 10.0)


# -- processes --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited early with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex((HOST, port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port} within {timeout} s")


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 15) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def callgrind(gateway: "Gateway", command: str) -> int | None:
    """Sends callgrind_control's `command` (--zero, or --dump=NAME) to a gateway that runs
    under callgrind; for a dump, the instructions executed since the last zero, read from
    the file it wrote. None for a gateway not under callgrind."""
    out = gateway.callgrind_out
    if out is None:
        return None

    def dumps() -> set[Path]:
        return set(out.parent.glob(f"{out.name}.*"))

    before = dumps()
    subprocess.run(  # noqa: S603 - callgrind_control on our own gateway
        ["callgrind_control", command, str(gateway.pid)],  # noqa: S607
        check=True,
        capture_output=True,
        timeout=120,
    )
    if not command.startswith("--dump"):
        return None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for dump in dumps() - before:
            for line in dump.read_text(errors="replace").splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1])
        time.sleep(0.2)
    raise RuntimeError(f"callgrind wrote no dump for {command} within 120 s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as handle:
        data = handle.read()
    fields = data[data.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS) of a process, in MiB."""
    values: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) / 1024
    return values.get("VmRSS", 0.0), values.get("VmHWM", 0.0)


def process_tree(pid: int) -> list[int]:
    """A process and its descendants (uvicorn's workers)."""
    pids = [pid]
    for index in range(len(pids) + 1000):
        if index >= len(pids):
            break
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[index]}/task"):
                with open(f"/proc/{pids[index]}/task/{task}/children") as handle:
                    pids.extend(int(child) for child in handle.read().split())
    return pids


def tree_cpu_seconds(pid: int) -> float:
    total = 0.0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(each)
    return total


def tree_memory_mib(pid: int) -> tuple[float, float]:
    """(RSS, peak RSS) summed over a process and its descendants."""
    rss = peak = 0.0
    for each in process_tree(pid):
        with contextlib.suppress(OSError):
            current, high = memory_mib(each)
            rss, peak = rss + current, peak + high
    return rss, peak


def py_spy_command() -> list[str] | None:
    if shutil.which("py-spy"):
        return ["py-spy"]
    if shutil.which("uv"):
        return ["uv", "tool", "run", "py-spy"]
    return None


# -- Postgres ---------------------------------------------------------------------


class Postgres:
    """The scratch database, and the CPU time of its backends."""

    def __init__(self, server_url: str, database: str) -> None:
        from .audit_bench import admin_url

        self.server_url = server_url
        self.database = database
        self.url = admin_url(server_url, database)
        self.maintenance_url = admin_url(server_url, "postgres")

    def create(self) -> None:
        from .audit_bench import create_database

        create_database(self.server_url, self.database)

    def drop(self) -> None:
        from .audit_bench import drop_database

        drop_database(self.server_url, self.database)

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.maintenance_url, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return f"PostgreSQL {row[0] if row else '?'}"

    def backend_cpu(self) -> dict[int, float] | None:
        """CPU seconds of each backend connected to the scratch database (None when
        Postgres runs where /proc cannot see it)."""
        import psycopg

        with psycopg.connect(self.maintenance_url, autocommit=True) as conn:
            pids = [
                row[0]
                for row in conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE datname = %s", [self.database]
                )
            ]
        cpu = {}
        for pid in pids:
            try:
                cpu[pid] = cpu_seconds(pid)
            except OSError:
                return None
        return cpu


# -- requests ---------------------------------------------------------------------


def _headers(era: str, token: str, session: str | None, method: str) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "User-Agent": "mcpgw-bench/1",
        "Authorization": f"Bearer {token}",
    }
    if era == "modern":
        headers["MCP-Protocol-Version"] = MODERN_VERSION
        headers["Mcp-Method"] = method
        if method == "tools/call":
            headers["Mcp-Name"] = TOOL_NAME
    else:
        headers["MCP-Protocol-Version"] = LEGACY_VERSION
        if session:
            headers["Mcp-Session-Id"] = session
    return headers


def call_request(port: int, path: str, era: str, token: str, session: str | None = None) -> bytes:
    """A `tools/call` as an agent sends it, ready to replay."""
    params: dict[str, Any] = {"name": TOOL_NAME, "arguments": {"customer": "c-042", "limit": 10}}
    if era == "modern":
        params["_meta"] = {
            "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
    return loadgen.build_request(
        HOST, port, path, _headers(era, token, session, "tools/call"), json.dumps(body).encode()
    )


def initialize_request(port: int, path: str, token: str) -> bytes:
    body = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcpgw-bench", "version": "1"},
        },
    }
    return loadgen.build_request(
        HOST, port, path, _headers("legacy", token, None, "initialize"), json.dumps(body).encode()
    )


def initialized_request(port: int, path: str, token: str, session: str) -> bytes:
    body = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    return loadgen.build_request(
        HOST, port, path, _headers("legacy", token, session, ""), json.dumps(body).encode()
    )


def stream_request(port: int, path: str, token: str, session: str) -> bytes:
    headers = {
        "Accept": "text/event-stream",
        "Authorization": f"Bearer {token}",
        "MCP-Protocol-Version": LEGACY_VERSION,
        "Mcp-Session-Id": session,
    }
    return loadgen.build_request(HOST, port, path, headers, b"", method="GET")


async def open_sessions(
    port: int, path: str, token: str, count: int, parallel: int = 8
) -> list[str]:
    """Legacy sessions as an SDK client opens them: initialize, then the notification,
    over `parallel` keep-alive connections."""
    sessions: list[str] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while remaining > 0:
                remaining -= 1
                writer.write(initialize_request(port, path, token))
                status, headers, body = await loadgen.read_response(reader)
                session = headers.get("mcp-session-id")
                if status != 200 or not session:
                    raise RuntimeError(f"initialize failed: HTTP {status} {body[:300]!r}")
                writer.write(initialized_request(port, path, token, session))
                status, _headers, body = await loadgen.read_response(reader)
                if status not in (200, 202):
                    raise RuntimeError(f"notifications/initialized: HTTP {status} {body[:300]!r}")
                sessions.append(session)
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(max(1, min(parallel, count)))))
    return sessions


# -- one configuration --------------------------------------------------------------


@dataclass
class Gateway:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    counts_file: Path | None = None
    # Under callgrind (--instructions): where it writes what it counted.
    callgrind_out: Path | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


class Site:
    """One configuration: its upstream, data directory, database and agent token."""

    def __init__(self, config: Config, options: argparse.Namespace, postgres: Postgres | None):
        self.config = config
        self.options = options
        self.postgres = postgres if config.postgres else None
        self.data_dir = Path(tempfile.mkdtemp(prefix=f"mcpgw-gwbench-{config.key}-"))
        self.upstream: subprocess.Popen[bytes] | None = None
        self.upstream_port = 0
        self.token = ""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        env.update(
            {
                "DATA_DIR": str(self.data_dir),
                "DJANGO_SETTINGS_MODULE": "mcpgw.settings",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
            }
        )
        if self.postgres is not None:
            env["DATABASE_URL"] = self.postgres.url
            if self.options.redis_url:
                env["REDIS_URL"] = self.options.redis_url
        return env

    def manage(self, *args: str) -> str:
        done = subprocess.run(  # noqa: S603 - our own interpreter and arguments
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def setup(self) -> None:
        self.upstream_port = free_port()
        self.upstream = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            [
                sys.executable,
                "-m",
                "bench.upstream_fast",
                "--port",
                str(self.upstream_port),
                "--result-bytes",
                str(self.config.result_bytes),
            ],
            cwd=ROOT,
        )
        wait_for_port(self.upstream_port, self.upstream)
        if self.postgres is not None:
            self.postgres.create()
        self.manage("migrate", "--noinput", "-v0")
        self.manage("add_connection", "--slug", SLUG, "--url", self.upstream_url)
        self.manage("ensure_admin")
        self.token = self.manage("issue_token", "--user", "admin", "--run", "bench").strip()
        if self.config.policy_rules:
            self.manage("shell", "-c", policy_script(self.config.policy_rules))

    @property
    def upstream_url(self) -> str:
        return f"http://{HOST}:{self.upstream_port}/mcp"

    def start_gateway(self, label: str) -> Gateway:
        port = free_port()
        log = self.data_dir / f"gateway-{label}-{port}.log"
        env = self.env()
        counts_file = None
        if self.options.server == "granian":
            # Granian's Rust HTTP server, on the event loop the gateway would serve on.
            command = [sys.executable, "-m", "granian", "--interface", "asgi", "--host", HOST]
            command += ["--port", str(port), "--workers", str(self.options.workers)]
            command += ["--backlog", "2048", "--loop", event_loop_setting()]
            command += ["mcpgw.asgi:application"]
        else:
            # As `make run` serves it: uvicorn with httptools, the launcher's defaults.
            if self.options.count_calls:
                counts_file = self.data_dir / f"counts-{port}.json"
                env["BENCH_COUNTS_FILE"] = str(counts_file)
                if self.options.no_gc_freeze:
                    env["BENCH_GC_FREEZE"] = "0"
                command = [sys.executable, "-m", "bench.counting_gateway"]
            else:
                command = [sys.executable, "-m", "mcpgw.serve"]
            command += ["--host", HOST, "--port", str(port)]
            if self.options.workers != 1:
                command += ["--workers", str(self.options.workers)]
        callgrind_out = None
        if self.options.instructions:
            callgrind_out = Path(self.options.instructions).resolve() / f"{label}-{port}.out"
            valgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={callgrind_out}"]
            command = [*valgrind, *command]
        with open(log, "wb") as handle:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        try:
            # Django's start takes minutes under callgrind.
            wait_for_port(port, process, timeout=900 if callgrind_out else 60)
        except RuntimeError:
            stop(process)
            raise RuntimeError(f"the gateway did not start:\n{log.read_text()[-3000:]}") from None
        return Gateway(process, port, log, counts_file, callgrind_out)

    def teardown(self) -> None:
        stop(self.upstream)
        if self.postgres is not None:
            self.postgres.drop()
        if not self.options.keep:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def policy_script(count: int) -> str:
    """A policy of `count` rules set through approvals.actions.set_policy: exact names
    first, then globs, and only the last glob matches the benchmark's tool (allow)."""
    return f"""
from django.db import transaction
from approvals.actions import set_policy
from approvals.policy import PolicySpec, RuleSpec
from gateway.models import Connection
n = {count}
rules = [RuleSpec(f"admin_tool_{{i}}", "deny") for i in range(n // 2)]
rules += [RuleSpec(f"delete_{{i}}_*", "hold") for i in range(n - n // 2 - 1)]
rules.append(RuleSpec("{TOOL_NAME.split("_")[0]}_*", "allow"))
with transaction.atomic():
    set_policy(Connection.objects.get(slug="{SLUG}"), PolicySpec(rules=tuple(rules)), actor=None)
"""


# -- measuring ----------------------------------------------------------------------


@dataclass
class Cell:
    config: str
    era: str
    clients: int
    direct: list[LoadResult] = field(default_factory=list)
    gateway: list[LoadResult] = field(default_factory=list)
    upstream_cpu: float = 0.0
    gateway_cpu: float = 0.0
    postgres_cpu: float | None = None
    peak_rss: float = 0.0
    load: list[float] = field(default_factory=list)
    counts: list[dict[str, Any]] = field(default_factory=list)
    # --instructions: (instructions the gateway executed, calls) of each measured run.
    instructions: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Summary:
    p50: float
    p95: float
    p99: float
    rate: float
    calls: int
    errors: int


def summarize(results: list[LoadResult]) -> Summary:
    """Percentiles: the median over rounds; calls/s: all calls over all the time."""
    seconds = sum(r.seconds for r in results)
    calls = sum(r.calls for r in results)
    return Summary(
        p50=statistics.median(r.p50_ms for r in results),
        p95=statistics.median(r.p95_ms for r in results),
        p99=statistics.median(r.p99_ms for r in results),
        rate=calls / seconds if seconds else 0.0,
        calls=calls,
        errors=sum(r.errors for r in results),
    )


class Bench:
    def __init__(self, options: argparse.Namespace, mode: Mode, generator: str) -> None:
        self.options = options
        self.mode = mode
        self.generator = generator
        self.cells: list[Cell] = []
        self.memory: list[tuple[int, float, float, float]] = []
        self.memory_site = ""
        self.streams: dict[str, Any] = {}
        self.audit: list[str] = []
        self.py_spy = py_spy_command() if options.profile else None
        if options.profile and self.py_spy is None:
            sys.exit("--profile needs py-spy (or uv to run it)")

    def load(self, port: int, requests: list[bytes], clients: int, seconds: float) -> LoadResult:
        run = loadgen.wrk_load if self.generator == "wrk" else loadgen.python_load
        return run(HOST, port, requests, clients, seconds)

    @contextlib.contextmanager
    def profiled(self, gateway: Gateway, name: str, seconds: float) -> Iterator[None]:
        profiler = None
        if self.py_spy is not None:
            output = Path(self.options.profile) / f"{name}.txt"
            profiler = subprocess.Popen(  # noqa: S603 - py-spy on our own gateway
                [
                    *self.py_spy,
                    "record",
                    "--pid",
                    str(gateway.pid),
                    "--duration",
                    str(math.ceil(seconds)),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--nonblocking",
                    "--output",
                    str(output),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(0.3)  # attaching takes a moment
        if gateway.counts_file is not None:
            os.kill(gateway.pid, signal.SIGUSR2)
        try:
            yield
        finally:
            if profiler is not None:
                profiler.wait(timeout=seconds + 60)

    def read_counts(self, gateway: Gateway) -> dict[str, Any] | None:
        if gateway.counts_file is None:
            return None
        with contextlib.suppress(FileNotFoundError):
            gateway.counts_file.unlink()
        os.kill(gateway.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if gateway.counts_file.exists():
                return dict(json.loads(gateway.counts_file.read_text()))
            time.sleep(0.05)
        return None

    def run_site(self, site: Site) -> None:
        config = site.config
        print(f"\n[{config.key}] {config.title}", flush=True)
        for era in self.options.eras:
            gateway = site.start_gateway(era)
            try:
                self.run_era(site, gateway, era)
            except Exception:
                print(f"gateway log:\n{gateway.log_tail()}", file=sys.stderr)
                raise
            finally:
                # Under callgrind the gateway ends slowly, and writes its counts as it ends.
                stop(gateway.process, timeout=300 if gateway.callgrind_out else 15)
        if self.options.memory == config.key:
            self.measure_memory(site)
        if config.postgres:
            self.measure_audit(site)

    def run_era(self, site: Site, gateway: Gateway, era: str) -> None:
        mode = self.mode
        gateway_path = f"/mcp/{SLUG}"
        most = max(mode.concurrency)
        if era == "legacy":
            direct_sessions = asyncio.run(
                open_sessions(site.upstream_port, "/mcp", site.token, most)
            )
            gateway_sessions = asyncio.run(
                open_sessions(gateway.port, gateway_path, site.token, most)
            )
            direct_requests = [
                call_request(site.upstream_port, "/mcp", era, site.token, s)
                for s in direct_sessions
            ]
            gateway_requests = [
                call_request(gateway.port, gateway_path, era, site.token, s)
                for s in gateway_sessions
            ]
        else:
            direct_requests = [call_request(site.upstream_port, "/mcp", era, site.token)]
            gateway_requests = [call_request(gateway.port, gateway_path, era, site.token)]
        self.check(site, gateway, direct_requests[0], gateway_requests[0])

        warm = min(8, most)
        self.load(site.upstream_port, direct_requests, warm, mode.warmup)
        self.load(gateway.port, gateway_requests, warm, mode.warmup)

        cells = {c: Cell(site.config.key, era, c) for c in mode.concurrency}
        for round_number in range(mode.rounds):
            # Alternate the order too, so that neither side always runs first.
            order = ("direct", "gateway") if round_number % 2 == 0 else ("gateway", "direct")
            for clients in mode.concurrency:
                cell = cells[clients]
                for route in order:
                    if route == "direct":
                        requests = direct_requests[: max(1, clients)]
                        assert site.upstream is not None
                        cpu_before = cpu_seconds(site.upstream.pid)
                        cell.direct.append(
                            self.load(site.upstream_port, requests, clients, mode.seconds)
                        )
                        cell.upstream_cpu += cpu_seconds(site.upstream.pid) - cpu_before
                        continue
                    requests = gateway_requests[: max(1, clients)]
                    name = f"{site.config.key}-{era}-c{clients}-r{round_number + 1}"
                    cpu_before = tree_cpu_seconds(gateway.pid)
                    pg_before = site.postgres.backend_cpu() if site.postgres else None
                    callgrind(gateway, "--zero")
                    with self.profiled(gateway, name, mode.seconds):
                        result = self.load(gateway.port, requests, clients, mode.seconds)
                    executed = callgrind(gateway, f"--dump={name}")
                    if executed is not None:
                        cell.instructions.append((executed, result.calls))
                    cell.gateway_cpu += tree_cpu_seconds(gateway.pid) - cpu_before
                    if site.postgres is not None and pg_before is not None:
                        pg_after = site.postgres.backend_cpu()
                        if pg_after is not None:
                            used = sum(t - pg_before.get(pid, 0.0) for pid, t in pg_after.items())
                            cell.postgres_cpu = (cell.postgres_cpu or 0.0) + used
                    counts = self.read_counts(gateway)
                    if counts is not None:
                        counts["calls"] = [result.calls, 0.0, 0]
                        cell.counts.append(counts)
                        if self.options.count_calls:
                            path = Path(self.options.count_calls) / f"{name}.json"
                            path.write_text(json.dumps(counts, indent=1, sort_keys=True))
                    cell.gateway.append(result)
                    cell.peak_rss = tree_memory_mib(gateway.pid)[1]
                    cell.load.append(os.getloadavg()[0])
                    if result.errors:
                        print(
                            f"  {name}: {result.errors} of {result.calls} calls failed, "
                            f"e.g. {result.sample_error}",
                            file=sys.stderr,
                        )
                print(
                    f"  {era:6} {clients:3} clients, round {round_number + 1}: "
                    f"direct {cell.direct[-1].rate:8,.0f}/s p50 {cell.direct[-1].p50_ms:6.2f} ms"
                    f" | gateway {cell.gateway[-1].rate:7,.0f}/s "
                    f"p50 {cell.gateway[-1].p50_ms:6.2f} ms",
                    flush=True,
                )
        self.cells.extend(cells.values())

    def check(self, site: Site, gateway: Gateway, direct: bytes, through: bytes) -> None:
        """One call each way before measuring: both must succeed, and with the 10 KB
        result the gateway must have masked what the upstream sent."""

        async def both() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
            d = await loadgen.exchange(HOST, site.upstream_port, direct)
            g = await loadgen.exchange(HOST, gateway.port, through)
            return (d[0], d[2]), (g[0], g[2])

        (d_status, d_body), (g_status, g_body) = asyncio.run(both())
        for route, status, body in (("direct", d_status, d_body), ("gateway", g_status, g_body)):
            if status != 200 or loadgen.ERROR_MARK in body:
                raise RuntimeError(f"{route} call failed: HTTP {status} {body[:500]!r}")
        if b"@example.com" in d_body and b"@example.com" in g_body:
            print("  warning: the gateway did not mask the result", file=sys.stderr)

    def measure_memory(self, site: Site) -> None:
        """The gateway's RSS with idle legacy sessions, then with idle GET streams."""
        mode = self.mode
        self.memory_site = site.config.key
        gateway = site.start_gateway("memory")
        path = f"/mcp/{SLUG}"
        try:
            sessions = asyncio.run(open_sessions(gateway.port, path, site.token, 8))
            requests = [call_request(gateway.port, path, "legacy", site.token, s) for s in sessions]
            self.load(gateway.port, requests, 8, max(mode.warmup, 1.0))
            time.sleep(1)
            rss, peak = tree_memory_mib(gateway.pid)
            self.memory.append((0, rss, peak, 0.0))
            print(f"  memory: {rss:.0f} MiB after warm-up, before idle sessions", flush=True)
            for target in mode.session_steps:
                began = time.monotonic()
                added = asyncio.run(
                    open_sessions(gateway.port, path, site.token, target - len(sessions))
                )
                rate = len(added) / (time.monotonic() - began)
                sessions += added
                time.sleep(1)
                rss, peak = tree_memory_mib(gateway.pid)
                self.memory.append((len(sessions), rss, peak, rate))
                print(
                    f"  memory: {rss:.0f} MiB with {len(sessions):,} idle sessions "
                    f"({rate:,.0f} initialized/s)",
                    flush=True,
                )
            self.streams = asyncio.run(self.idle_streams(gateway, sessions[: mode.streams], site))
            self.streams["rss"], self.streams["peak"] = tree_memory_mib(gateway.pid)
        except Exception:
            print(f"gateway log:\n{gateway.log_tail()}", file=sys.stderr)
            raise
        finally:
            stop(gateway.process)

    async def idle_streams(
        self, gateway: Gateway, sessions: list[str], site: Site
    ) -> dict[str, Any]:
        """Open a GET stream in each session, as SDK clients do, and leave it idle; then
        see whether a tools/call still gets through while they are open."""
        path = f"/mcp/{SLUG}"
        statuses: dict[int, int] = {}
        sample: list[str] = []
        writers = []
        began = time.monotonic()
        last_answer = [0.0]

        async def open_one(session: str) -> None:
            reader, writer = await asyncio.open_connection(HOST, gateway.port)
            writers.append(writer)
            writer.write(stream_request(gateway.port, path, site.token, session))
            status, headers = loadgen.parse_head(await reader.readuntil(b"\r\n\r\n"))
            statuses[status] = statuses.get(status, 0) + 1
            last_answer[0] = time.monotonic() - began
            if status != 200 and not sample:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1):
                        body = await loadgen.read_body(reader, status, headers)
                        sample.append(body[:400].decode(errors="replace"))

        tasks = [asyncio.create_task(open_one(s)) for s in sessions]
        _done, pending = await asyncio.wait(tasks, timeout=self.mode.stream_wait)
        waited = time.monotonic() - began
        errors = sum(1 for task in _done if task.exception() is not None)
        snapshot = dict(statuses)
        rss = tree_memory_mib(gateway.pid)[0]
        probe_session = (await open_sessions(gateway.port, path, site.token, 1))[0]
        probe = call_request(gateway.port, path, "legacy", site.token, probe_session)
        started = time.monotonic()
        try:
            async with asyncio.timeout(10):
                status, _headers, body = await loadgen.exchange(HOST, gateway.port, probe)
            call = (
                f"answered in {(time.monotonic() - started) * 1000:.0f} ms"
                if status == 200 and loadgen.ERROR_MARK not in body
                else f"failed: HTTP {status} {body[:120]!r}"
            )
        except TimeoutError:
            call = "no answer within 10 s"
        for task in pending:
            task.cancel()
        for writer in writers:
            writer.close()
        await asyncio.sleep(0.5)
        answers = ", ".join(f"HTTP {k}: {v:,}" for k, v in sorted(snapshot.items())) or "none"
        print(
            f"  streams: of {len(sessions):,} GETs after {waited:.1f} s: {answers}, "
            f"{len(pending):,} unanswered; a tools/call meanwhile: {call}",
            flush=True,
        )
        return {
            "requested": len(sessions),
            "answers": answers,
            "opened": snapshot.get(200, 0),
            "pending": len(pending),
            "errors": errors,
            "last_answer": last_answer[0],
            "sample": " ".join(sample[0].split())[-200:] if sample else "",
            "waited": waited,
            "rss_open": rss,
            "call": call,
        }

    def measure_audit(self, site: Site) -> None:
        """Verify and export the chain this run wrote, as bench.audit_bench does."""
        from . import audit_bench

        saved = dict(os.environ)
        os.environ.update(
            {
                "DATABASE_URL": site.postgres.url if site.postgres else "",
                "DATA_DIR": str(site.data_dir),
                "DJANGO_SETTINGS_MODULE": "mcpgw.settings",
            }
        )
        os.environ.pop("REDIS_URL", None)
        try:
            verified, seconds, error, rss = audit_bench.in_fresh_process(audit_bench.verify)
            status = "OK" if error is None else f"FAILED: {error}"
            self.audit.append(
                f"verify: {verified:,} records in {seconds:.2f} s = "
                f"{verified / seconds if seconds else 0:,.0f} records/s, {status} "
                f"(peak RSS {rss:.0f} MiB)"
            )
            if audit_bench.in_fresh_process(audit_bench.export_available):
                rows, seconds, size, rss = audit_bench.in_fresh_process(audit_bench.export_csv)
                self.audit.append(
                    f"export CSV: {rows:,} rows, {size / 2**20:.1f} MiB in {seconds:.2f} s = "
                    f"{rows / seconds if seconds else 0:,.0f} rows/s (peak RSS {rss:.0f} MiB)"
                )
            else:
                self.audit.append("export: skipped (audit.export has no CSV generator)")
        finally:
            os.environ.clear()
            os.environ.update(saved)

    # -- report -----------------------------------------------------------------------

    def print_report(self) -> None:
        p = print
        p("\n== Per configuration: tools/call through the gateway vs direct ==")
        p(
            "latency ms: median over rounds of each run's percentile. CPU s/1k: CPU seconds per "
            "1,000 calls of the\nupstream process (direct rows) or of the gateway's process(es) "
            "(gateway rows); PG s/1k: the same for\nthe Postgres backends of the scratch "
            "database; peak RSS: the gateway's so far; load: 1-min load\naverage after the run "
            "(other work on the machine shows here)"
        )
        header = (
            f"{'config':9} {'era':6} {'clients':>7} {'route':8} {'p50':>7} {'p95':>7} {'p99':>7} "
            f"{'calls/s':>8} {'vs direct':>9} {'CPU s/1k':>8} {'PG s/1k':>7} "
            f"{'peak RSS':>8} {'errors':>6} {'load':>5}"
        )
        p(header)
        p("-" * len(header))
        for cell in self.cells:
            direct, through = summarize(cell.direct), summarize(cell.gateway)
            ratio = through.rate / direct.rate if direct.rate else 0.0
            upstream = cell.upstream_cpu / direct.calls * 1000 if direct.calls else float("nan")
            cpu = cell.gateway_cpu / through.calls * 1000 if through.calls else float("nan")
            pg = (
                f"{cell.postgres_cpu / through.calls * 1000:7.2f}"
                if cell.postgres_cpu is not None and through.calls
                else f"{'-':>7}"
            )
            p(
                f"{cell.config:9} {cell.era:6} {cell.clients:7} {'direct':8} "
                f"{direct.p50:7.2f} {direct.p95:7.2f} {direct.p99:7.2f} {direct.rate:8,.0f} "
                f"{'':9} {upstream:8.2f} {'':7} {'':8} {direct.errors:6}"
            )
            p(
                f"{'':9} {'':6} {'':7} {'gateway':8} "
                f"{through.p50:7.2f} {through.p95:7.2f} {through.p99:7.2f} {through.rate:8,.0f} "
                f"{ratio:9.1%} {cpu:8.2f} {pg} {cell.peak_rss:6.0f}Mi {through.errors:6} "
                f"{max(cell.load):5.1f}"
            )

        p("\n== Scaling: latency vs clients through the gateway ==")
        p("p50 / p99 ms (added p50 over direct)")
        levels = self.mode.concurrency
        p(f"{'config / era':16}" + "".join(f" {f'{c} clients':>26}" for c in levels))
        for key in dict.fromkeys(c.config for c in self.cells):
            for era in self.options.eras:
                row = {c.clients: c for c in self.cells if c.config == key and c.era == era}
                if not row:
                    continue
                parts = []
                for level in levels:
                    d, g = summarize(row[level].direct), summarize(row[level].gateway)
                    text = f"{g.p50:.2f} / {g.p99:.2f} (+{g.p50 - d.p50:.2f})"
                    parts.append(f" {text:>26}")
                p(f"{key + ' ' + era:16}" + "".join(parts))

        if self.memory:
            p(f"\n== Scaling: gateway memory with idle legacy sessions ({self.memory_site}) ==")
            p(f"{'sessions':>10} {'RSS MiB':>8} {'peak MiB':>9} {'initialized/s':>14}")
            for count, rss, peak, rate in self.memory:
                p(f"{count:10,} {rss:8.0f} {peak:9.0f} {rate:14,.0f}")
            s = self.streams
            if s:
                p(
                    f"idle GET streams: {s['requested']:,} requested at once; after "
                    f"{s['waited']:.1f} s: {s['answers']} (last answer at "
                    f"{s['last_answer']:.1f} s), {s['pending']:,} unanswered, "
                    f"{s['errors']:,} connection errors; gateway RSS {s['rss_open']:.0f} MiB; "
                    f"a tools/call meanwhile: {s['call']}"
                )
                if s["sample"]:
                    p(f"  first refusal: {s['sample']}")
        if self.audit:
            p("\n== Scaling: the audit trail written by this run (bench.audit_bench's way) ==")
            for line in self.audit:
                p(line)
        self.print_targets()
        if self.options.count_calls:
            self.print_counts()
        if self.options.instructions:
            self.print_instructions()

    def print_targets(self) -> None:
        cells = [c for c in self.cells if c.config == "postgres"]
        if not cells:
            return
        print("\n== The performance targets (postgres configuration; see the README) ==")
        if (
            self.options.short
            or self.options.profile
            or self.options.count_calls
            or self.options.instructions
        ):
            print("(not comparable in this mode)")
        for cell in cells:
            d, g = summarize(cell.direct), summarize(cell.gateway)
            if cell.clients == 1:
                added50, added99 = g.p50 - d.p50, g.p99 - d.p99
                verdict = "met" if added50 <= 1 and added99 <= 5 else "MISSED"
                print(
                    f"{cell.era}: added latency at 1 client p50 {added50:+.2f} ms (<= 1), "
                    f"p99 {added99:+.2f} ms (<= 5): {verdict}"
                )
            if cell.clients == 32:
                ratio = g.rate / d.rate if d.rate else 0.0
                verdict = "met" if ratio >= 0.7 else "MISSED"
                print(
                    f"{cell.era}: throughput at 32 clients {ratio:.1%} of direct (>= 70%): "
                    f"{verdict}"
                )
        big = [m for m in self.memory if m[0] >= 10_000]
        if big:
            rss_mb = big[0][1] * 2**20 / 1e6
            verdict = "met" if rss_mb <= 200 else "MISSED"
            print(f"10,000 idle legacy sessions: RSS {rss_mb:.0f} MB (<= 200 MB): {verdict}")

    def print_instructions(self) -> None:
        print("\n== Instructions the gateway process executed per call (callgrind) ==")
        print("config    era    clients   per run (millions)")
        for cell in self.cells:
            runs = [
                f"{done / calls / 1e6:7.2f}" if calls else "no call"
                for done, calls in cell.instructions
            ]
            print(f"{cell.config:9} {cell.era:6} {cell.clients:7}   {' '.join(runs)}")

    def print_counts(self) -> None:
        print("\n== Per call (bench.counting_gateway): count, µs inside, bytes ==")
        for cell in self.cells:
            for counts in cell.counts:
                calls = counts.pop("calls", [0])[0]
                tail = counts.pop("slowest calls", None)
                if not calls:
                    continue
                print(f"\n{cell.config} {cell.era} {cell.clients} clients ({calls:,} calls)")
                longest = {
                    name: values for name, values in counts.items() if name.startswith("gc longest")
                }
                for name, (count, seconds, size) in sorted(
                    counts.items(), key=lambda item: -item[1][1]
                ):
                    if name in longest:
                        continue
                    if count / calls < 0.01:
                        continue
                    print(
                        f"  {count / calls:6.2f} x {seconds / calls * 1e6:9.0f} µs "
                        f"{size / calls:9.0f} B  {name}"
                    )
                for name, (_, seconds, _) in sorted(longest.items()):
                    print(f"  {name}: {seconds * 1e3:.1f} ms")
                if tail:
                    print_tail(tail)


def print_tail(tail: dict[str, Any]) -> None:
    """`bench.counting_gateway`'s breakdown of the slowest 1% of calls against all."""
    slow, every = tail["slowest means"], tail["all"]
    print(
        f"  the slowest 1% of these calls ({tail['slowest']:,} of {tail['calls']:,}), "
        "against all of them (means):"
    )
    for number, label in tail["labels"].items():
        print(
            f"    {slow[number] * 1e6:8.0f} µs against {every[number] * 1e6:6.0f} µs  "
            f"{number}: {label}"
        )
    for event, label in (
        ("gc", "a garbage collection ran"),
        ("gc old", "of them, one of generation 1 or 2"),
        ("checkpoint", "a signed audit checkpoint was written"),
    ):
        print(f"    {slow[event]:8.0%} against {every[event]:6.0%}     of calls: {label}")


# -- main -------------------------------------------------------------------------


def machine_description(
    generator: str, postgres: Postgres | None, options: argparse.Namespace
) -> list[str]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    lines = [
        f"machine: {os.cpu_count()} CPUs ({model}), {memory:.0f} GiB RAM, "
        f"{platform.system()} {platform.release()}; load average at start "
        + ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"software: Python {platform.python_version()}, {server_description(options)}, "
        + (postgres.version() if postgres else "no Postgres"),
    ]
    if generator == "wrk":
        version = subprocess.run(  # noqa: S603 - wrk -v
            [loadgen.wrk_path() or "wrk", "-v"], capture_output=True, text=True, check=False
        )
        lines.append(
            f"load generator: {version.stdout.splitlines()[0].strip()} + bench/wrk/mcp.lua"
        )
    else:
        lines.append("load generator: bench.loadgen's asyncio generator (wrk is not installed)")
    lines.append(
        "generator, upstream (bench.upstream_fast), gateway and Postgres share the machine"
    )
    return lines


def server_description(options: argparse.Namespace) -> str:
    from importlib.metadata import version

    threads = os.environ.get("ASGI_THREADS") or f"default {min(32, (os.cpu_count() or 1) + 4)}"
    loop = event_loop_setting()
    if loop == "uvloop":
        loop = f"uvloop {version('uvloop')}"
    if options.server == "granian":
        return (
            f"gateway on granian {version('granian')} ({options.workers} worker process(es), "
            f"{loop} event loop)"
        )
    return (
        f"gateway on uvicorn {version('uvicorn')} (`python -m mcpgw.serve`: httptools "
        f"{version('httptools')}, {options.workers} process(es), {loop} event loop, "
        f"executor threads {threads})"
    )


def _client_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give client counts such as 1,8,32") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: client counts are 1 or more")
    return counts


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be more than 0")
        return value

    return parse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI mode: quick, numbers not meant")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--database", default="mcpgw_bench_gw", help="scratch database")
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL", ""))
    parser.add_argument("--configs", default="embedded,postgres", help="comma-separated")
    parser.add_argument("--eras", default=",".join(ERAS), help="comma-separated")
    parser.add_argument("--concurrency", type=_client_counts, help="comma-separated client counts")
    parser.add_argument("--seconds", type=_positive(float), help="length of each measured run")
    parser.add_argument(
        "--rounds", type=_positive(int), help="direct/gateway pairs per client count"
    )
    parser.add_argument(
        "--memory",
        default="",
        help="configuration for the idle-session memory test (default: postgres if "
        "measured, else embedded; 'none' to skip)",
    )
    parser.add_argument("--profile", metavar="DIR", help="py-spy every gateway run into DIR")
    parser.add_argument("--count-calls", metavar="DIR", help="count per-call work into DIR")
    parser.add_argument(
        "--instructions",
        metavar="DIR",
        help="run the gateway under valgrind's callgrind and print instructions per call "
        "(one client; callgrind's files go into DIR)",
    )
    parser.add_argument(
        "--no-gc-freeze",
        action="store_true",
        help="with --count-calls: the gateway does not freeze what it loaded at start",
    )
    parser.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        default="uvicorn",
        help="what serves the gateway (uvicorn through `python -m mcpgw.serve`, as `make run` "
        "does, by default)",
    )
    parser.add_argument(
        "--workers", type=_positive(int), default=1, help="uvicorn or granian worker processes"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directories")
    options = parser.parse_args(argv)
    options.configs = [c for c in options.configs.split(",") if c]
    options.eras = [e for e in options.eras.split(",") if e]
    for name in options.configs:
        if name not in CONFIGS:
            parser.error(f"unknown configuration {name!r}; choose from {', '.join(CONFIGS)}")
    for era in options.eras:
        if era not in ERAS:
            parser.error(f"unknown era {era!r}; choose from {', '.join(ERAS)}")
    return options


def main(argv: list[str] | None = None) -> None:
    options = parse_args(argv)
    mode = SHORT if options.short else FULL
    overrides: dict[str, Any] = {}
    if options.concurrency:
        overrides["concurrency"] = options.concurrency
    if options.seconds:
        overrides["seconds"] = options.seconds
    if options.rounds:
        overrides["rounds"] = options.rounds
    mode = Mode(**{**mode.__dict__, **overrides})

    server_url = os.environ.get("DATABASE_URL", "")
    postgres = None
    if "postgres" in options.configs:
        if server_url.startswith(("postgres://", "postgresql://")):
            postgres = Postgres(server_url, options.database)
        else:
            print("DATABASE_URL names no Postgres server: the postgres configuration is skipped")
            options.configs = [c for c in options.configs if c != "postgres"]
    if not options.memory:
        options.memory = "postgres" if "postgres" in options.configs else options.configs[-1]

    if options.generator == "auto":
        generator = "wrk" if loadgen.wrk_path() else "python"
    else:
        generator = options.generator
        if generator == "wrk" and not loadgen.wrk_path():
            sys.exit("wrk is not installed (apt-get install wrk)")
    if options.no_gc_freeze and not options.count_calls:
        sys.exit("--no-gc-freeze needs --count-calls (it runs under bench.counting_gateway)")
    if (options.server != "uvicorn" or options.workers != 1) and options.count_calls:
        sys.exit("--count-calls runs the gateway as one uvicorn process only")
    if options.instructions:
        if not (shutil.which("valgrind") and shutil.which("callgrind_control")):
            sys.exit("--instructions needs valgrind (apt-get install valgrind)")
        if options.count_calls or options.profile:
            sys.exit("--instructions runs the gateway without other probes")
        if options.server == "granian" or options.workers != 1:
            # Granian serves from worker processes, uvicorn too with --workers above 1:
            # callgrind would count their parent, which serves nothing.
            sys.exit("--instructions counts one serving process: uvicorn with 1 worker")
        if mode.concurrency != (1,):
            sys.exit(
                "--instructions counts at one client only (--concurrency 1): under callgrind "
                "a call takes 30-50 times longer, and more clients would time out and retry"
            )
        if options.memory not in ("", "none"):
            sys.exit("--instructions leaves out the memory test (--memory none)")
        options.memory = "none"
    try:
        event_loop_setting()
    except ValueError as exc:
        sys.exit(str(exc))
    for directory in (options.profile, options.count_calls, options.instructions):
        if directory:
            Path(directory).mkdir(parents=True, exist_ok=True)

    # SIGTERM ends the run like Ctrl-C: the finally blocks stop what was started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    arguments = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"command: uv run python -m bench.gateway_bench {arguments}".rstrip())
    for line in machine_description(generator, postgres, options):
        print(line)
    print(
        f"mode: {'short' if options.short else 'full'}; {mode.rounds} round(s) of "
        f"{mode.seconds:g} s per route and client count after {mode.warmup:g} s warm-up"
    )

    bench = Bench(options, mode, generator)
    for key in options.configs:
        site = Site(CONFIGS[key], options, postgres)
        try:
            site.setup()
            bench.run_site(site)
        finally:
            site.teardown()
    bench.print_report()


if __name__ == "__main__":
    main()
