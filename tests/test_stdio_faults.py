"""stdio upstreams that break, a thousand times: a server that crashes in the middle of a
call, one that never answers, and ones that write garbage to stdout. Every call gets a
clear JSON-RPC error within the timeout (or, when the garbage comes before a proper answer,
the answer), a crashed server is replaced by a fresh process on the session's next call,
no connection ever runs more processes than its `max_processes`, and afterwards the
gateway process has no server processes, file handles or threads left over.

Server processes are counted exactly: every process the gateway starts writes its pid to
a file (the command is `sh -c 'echo $$ >> FILE; exec python FIXTURE MODE'`, and exec
keeps the pid)."""

import asyncio
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from audit.models import AuditRecord, Kind
from tests.conftest import FIXTURES, Server, issue_token, start_gateway, stop
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)

# A server that has said nothing for this long has stopped answering.
TIMEOUT = 1

HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "faults", "version": "1"},
    },
}
INITIALIZED = json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode()
MODERN_HEADERS = {
    "MCP-Protocol-Version": "2026-07-28",
    "Mcp-Method": "tools/call",
    "Mcp-Name": "work",
}
MODERN_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
}


def call_body(request_id: int, era: str = "legacy") -> bytes:
    params: dict[str, Any] = {"name": "work", "arguments": {}}
    if era == "modern":
        params["_meta"] = MODERN_META
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
    ).encode()


@dataclass(frozen=True)
class Fault:
    """One way to break: the fixture that does it, and what the agent should see."""

    slug: str
    script: str
    mode: str
    max_processes: int
    expect_code: int | None  # None: the call succeeds
    expect_text: str
    # legacy: agents in sessions (one server process each); modern: 2026-07-28 agents,
    # whose calls share the connection's one process.
    era: str = "legacy"


CRASH = Fault("crashy", "stdio_faulty.py", "crash", 4, -32010, "exited (code 3)")
CRASH_MODERN = Fault(
    "crashy-modern", "stdio_faulty.py", "crash", 3, -32010, "exited (code 3)", era="modern"
)
SILENT = Fault(
    "silent", "stdio_faulty.py", "silent", 10, -32011, f"stopped answering for {TIMEOUT} s"
)
GARBAGE = Fault("noisy", "stdio_faulty.py", "garbage", 4, None, "worked")
GARBLED = Fault("garbled", "stdio_garbled.py", "exit", 4, -32010, "exited (code 0)")


@pytest.fixture(scope="module")
def impatient_gateway(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A gateway that gives a server 1 s to answer a call (starting one still gets the
    default GATEWAY_STDIO_START_TIMEOUT)."""
    server = start_gateway(
        tmp_path_factory.mktemp("stdio-faults"), GATEWAY_UPSTREAM_TIMEOUT=str(TIMEOUT)
    )
    yield server
    stop(server.process)


def register(fault: Fault, pid_log: Path, max_processes: int | None = None) -> None:
    script = 'echo $$ >> "$0"; exec "$@"'
    # The fixture ignores the trailing slug=...; it tells the connections' processes apart.
    argv = [sys.executable, str(FIXTURES / fault.script), fault.mode, f"slug={fault.slug}"]
    call_command(
        "add_connection",
        "--slug",
        fault.slug,
        "--transport",
        "stdio",
        "--command",
        "/bin/sh",
        "--arg=-c",
        f"--arg={script}",
        f"--arg={pid_log}",
        *[f"--arg={arg}" for arg in argv],
        "--max-processes",
        str(max_processes or fault.max_processes),
    )


def started(pid_log: Path) -> list[int]:
    if not pid_log.exists():
        return []
    return [int(line) for line in pid_log.read_text().split()]


# -- the gateway process, seen from /proc ----------------------------------------------


def children(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live (not yet reaped counts too) child of `pid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # The command name may hold spaces and parentheses: parse after the last ")".
                fields = stat.read().rsplit(b")", 1)[1].split()
            if int(fields[1]) != pid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                found.append((int(entry), cmdline.read().replace(b"\0", b" ").decode()))
        except (OSError, IndexError, ValueError):
            continue
    return found


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError("no Threads line")


@dataclass
class Footprint:
    children: int
    open_files: int
    threads: int

    @classmethod
    def of(cls, pid: int) -> "Footprint":
        return cls(len(children(pid)), open_files(pid), threads(pid))


class ProcessWatch:
    """Samples the gateway's children in a thread: the most each connection ran at once."""

    def __init__(self, pid: int, slugs: list[str]) -> None:
        self.pid = pid
        self.slugs = slugs
        self.most: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now: Counter[str] = Counter()
            for _pid, cmdline in children(self.pid):
                for slug in self.slugs:
                    if f"slug={slug} " in cmdline:
                        now[slug] += 1
            for slug, count in now.items():
                self.most[slug] = max(self.most[slug], count)
            self.samples += 1
            self._stop.wait(0.01)

    def __enter__(self) -> "ProcessWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- an agent speaking raw JSON-RPC ----------------------------------------------------


def parse_reply(response: httpx.Response, request_id: int) -> dict[str, Any]:
    """The JSON-RPC response with `request_id`, from a JSON body or an SSE stream."""
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        for line in response.text.splitlines():
            if line.startswith("data:") and line[5:].strip():
                message = json.loads(line[5:])
                if message.get("id") == request_id:
                    return message
        raise AssertionError(f"no response to {request_id} in {response.text!r}")
    message = response.json()
    assert message.get("id") == request_id, message
    return message


@dataclass
class Tally:
    calls: Counter[str] = field(default_factory=Counter)
    sessions: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)


async def initialize(http: httpx.AsyncClient, url: str, token: str) -> httpx.Response:
    return await http.post(
        url, headers={**HEADERS, "Authorization": f"Bearer {token}"}, json=INITIALIZE
    )


async def end_session(http: httpx.AsyncClient, url: str, token: str, session: str) -> None:
    ended = await http.delete(
        url, headers={"Authorization": f"Bearer {token}", "Mcp-Session-Id": session}
    )
    assert ended.status_code == 200, ended.text


def unexpected(fault: Fault, response: httpx.Response, request_id: int) -> str | None:
    """What is wrong with the answer to a call, or None if it is what `fault` gives."""
    try:
        message = parse_reply(response, request_id)
    except (AssertionError, ValueError) as exc:
        return f"{fault.slug}: {response.status_code} {exc}"
    if fault.expect_code is None:
        content = (message.get("result") or {}).get("content") or [{}]
        if content[0].get("text") != fault.expect_text:
            return f"{fault.slug}: {message}"
        return None
    error = message.get("error") or {}
    if error.get("code") != fault.expect_code or fault.expect_text not in error.get("message", ""):
        return f"{fault.slug}: {message}"
    return None


async def legacy_agent(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    fault: Fault,
    calls: int,
    per_session: int,
    tally: Tally,
) -> None:
    """`calls` tools/calls in sessions of `per_session`, each session ended with DELETE."""
    request_id = 0
    while calls > 0:
        init = await initialize(http, url, token)
        if init.status_code != 200 or "mcp-session-id" not in init.headers:
            tally.refused[fault.slug] += 1
            tally.unexpected.append(f"{fault.slug} initialize: {init.status_code} {init.text}")
            return
        headers = {
            **HEADERS,
            "Authorization": f"Bearer {token}",
            "Mcp-Session-Id": init.headers["mcp-session-id"],
            "MCP-Protocol-Version": "2025-11-25",
        }
        await http.post(url, headers=headers, content=INITIALIZED)
        tally.sessions[fault.slug] += 1
        for _ in range(min(calls, per_session)):
            request_id += 1
            response = await http.post(url, headers=headers, content=call_body(request_id))
            tally.calls[fault.slug] += 1
            if problem := unexpected(fault, response, request_id):
                tally.unexpected.append(problem)
        calls -= per_session
        deleted = await http.delete(url, headers=headers)
        if deleted.status_code != 200:
            tally.unexpected.append(f"{fault.slug} DELETE: {deleted.status_code}")


async def modern_agent(
    http: httpx.AsyncClient, url: str, token: str, fault: Fault, calls: int, tally: Tally
) -> None:
    """`calls` stateless 2026-07-28 tools/calls."""
    headers = {**HEADERS, **MODERN_HEADERS, "Authorization": f"Bearer {token}"}
    for request_id in range(1, calls + 1):
        response = await http.post(url, headers=headers, content=call_body(request_id, "modern"))
        tally.calls[fault.slug] += 1
        if problem := unexpected(fault, response, request_id):
            tally.unexpected.append(problem)


def wait_for(check, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def outcome_counts(slug: str, expected_total: int) -> Counter[str]:
    """Outcome records are written just after the agent got its answer: wait for them."""
    counts: Counter[str] = Counter()

    def done() -> bool:
        counts.clear()
        counts.update(
            AuditRecord.objects.filter(
                kind=Kind.CALL_OUTCOME, connection=slug, method="tools/call"
            ).values_list("outcome", flat=True)
        )
        return sum(counts.values()) >= expected_total

    wait_for(done)
    return counts


# -- the tests -------------------------------------------------------------------------


async def test_each_fault_gives_a_clear_error_and_a_fresh_process(
    alice, impatient_gateway, tmp_path
):
    """The official SDK as the agent: the error it raises names what went wrong, and
    the session goes on in a new process after a crash."""
    from mcp.shared.exceptions import MCPError

    for fault in (CRASH, GARBLED, SILENT):
        register(fault, tmp_path / f"{fault.slug}.pids")
    token = issue_token("alice")
    base = f"{impatient_gateway.url}/mcp"

    async with mcp_client(f"{base}/{GARBLED.slug}", token, "legacy") as client:
        first = client.server_info.version
        with pytest.raises(MCPError, match=r"exited \(code 0\)") as raised:
            await client.call_tool("work", {})
        assert raised.value.error.code == -32010
        await client.list_tools()
        # The session's process after the crash is another one.
        assert started(tmp_path / "garbled.pids")[0] == int(first)
        assert len(started(tmp_path / "garbled.pids")) == 2

    async with mcp_client(f"{base}/{CRASH.slug}", token, "legacy") as client:
        for _ in range(3):
            with pytest.raises(MCPError, match=r"exited \(code 3\)"):
                await client.call_tool("work", {})
    assert len(started(tmp_path / "crashy.pids")) == 3

    async with mcp_client(f"{base}/{SILENT.slug}", token, "legacy") as client:
        for _ in range(2):
            with pytest.raises(MCPError, match=f"stopped answering for {TIMEOUT} s") as raised:
                await client.call_tool("work", {})
            assert raised.value.error.code == -32011
        # A silent call does not end the session's process: it still answers the rest.
        assert [tool.name for tool in (await client.list_tools()).tools] == ["work"]
    assert len(started(tmp_path / "silent.pids")) == 1
    assert wait_for(lambda: not children(impatient_gateway.process.pid))


async def test_max_processes_refuses_the_session_over_the_limit(alice, impatient_gateway, tmp_path):
    register(GARBAGE, tmp_path / "noisy.pids", max_processes=2)
    token = issue_token("alice")
    url = f"{impatient_gateway.url}/mcp/{GARBAGE.slug}"
    async with httpx.AsyncClient(timeout=30) as http:
        # Six agents at once: two get a process, four a clear error naming the limit.
        replies = await asyncio.gather(*(initialize(http, url, token) for _ in range(6)))
        answers = [parse_reply(reply, 0) for reply in replies]
        sessions = [
            r.headers["mcp-session-id"]
            for r, a in zip(replies, answers, strict=True)
            if "result" in a
        ]
        errors = [a["error"] for a in answers if "error" in a]
        assert len(sessions) == 2, answers
        assert len(started(tmp_path / "noisy.pids")) == 2
        assert len(errors) == 4, answers
        for error in errors:
            assert error["code"] == -32010
            assert "already runs 2 processes, its limit" in error["message"]
        # Ending a session frees its place.
        await end_session(http, url, token, sessions.pop())
        third = await initialize(http, url, token)
        assert "result" in parse_reply(third, 0), third.text
        sessions.append(third.headers["mcp-session-id"])
        assert len(started(tmp_path / "noisy.pids")) == 3
        for session in sessions:
            await end_session(http, url, token, session)
    assert wait_for(lambda: not children(impatient_gateway.process.pid))


# The thousand calls: fault -> (calls, agents at once, calls per legacy session).
PLAN: dict[Fault, tuple[int, int, int]] = {
    CRASH: (300, CRASH.max_processes, 10),
    CRASH_MODERN: (100, 2, 0),
    GARBLED: (250, GARBLED.max_processes, 10),
    GARBAGE: (250, GARBAGE.max_processes, 25),
    SILENT: (100, SILENT.max_processes, 5),
}
# Before measuring: every agent once, so pools and caches are as full as they get.
WARM_UP = {fault: (agents, agents, 1) for fault, (_, agents, _) in PLAN.items()}


async def run_plan(url: str, token: str, plan: dict[Fault, tuple[int, int, int]]) -> Tally:
    tally = Tally()
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)
    ) as http:
        agents = []
        for fault, (calls, concurrency, per_session) in plan.items():
            share, extra = divmod(calls, concurrency)
            for n in range(concurrency):
                mine = share + (1 if n < extra else 0)
                target = f"{url}/{fault.slug}"
                if fault.era == "modern":
                    agents.append(modern_agent(http, target, token, fault, mine, tally))
                else:
                    agents.append(
                        legacy_agent(http, target, token, fault, mine, per_session, tally)
                    )
        await asyncio.gather(*agents)
    return tally


async def test_a_thousand_broken_calls_leave_nothing_behind(alice, tmp_path):
    # A gateway of its own, so that what it holds before and after is this test's alone.
    gateway = start_gateway(tmp_path, GATEWAY_UPSTREAM_TIMEOUT=str(TIMEOUT))
    try:
        await thousand_calls(gateway, tmp_path)
    finally:
        stop(gateway.process)
    # It ended on SIGTERM by itself, ending what it still ran (stop() kills a gateway
    # that takes over 10 s: one that signals every server it ever started, say).
    assert gateway.process.returncode in (0, 128 + signal.SIGTERM), gateway.process.returncode


async def thousand_calls(gateway: Server, tmp_path: Path) -> None:
    pid = gateway.process.pid
    for fault in PLAN:
        register(fault, tmp_path / f"{fault.slug}.pids")
    token = issue_token("alice")
    url = f"{gateway.url}/mcp"

    warm = await run_plan(url, token, WARM_UP)
    assert warm.unexpected == [], warm.unexpected[:10]
    assert wait_for(lambda: not children(pid)), children(pid)
    spawned_before = {fault: len(started(tmp_path / f"{fault.slug}.pids")) for fault in PLAN}
    before = Footprint.of(pid)

    with ProcessWatch(pid, [fault.slug for fault in PLAN]) as watch:
        tally = await run_plan(url, token, PLAN)

    assert tally.unexpected == [], (len(tally.unexpected), tally.unexpected[:10])
    assert sum(tally.calls.values()) == 1000
    spawned = {
        fault.slug: len(started(tmp_path / f"{fault.slug}.pids")) - spawned_before[fault]
        for fault in PLAN
    }
    for fault, (calls, _agents, _per_session) in PLAN.items():
        assert tally.calls[fault.slug] == calls
        assert tally.refused[fault.slug] == 0
        assert watch.most[fault.slug] <= fault.max_processes, (fault.slug, watch.most)
        if fault.era == "modern":
            # One process for many calls; how many depends on how the crashes fell.
            assert spawned[fault.slug] >= 1
        elif fault.mode in ("crash", "exit"):
            # Every call found its session's process gone and started a fresh one.
            assert spawned[fault.slug] == calls, (fault.slug, spawned)
        else:
            # One process per session, kept for all of the session's calls.
            assert spawned[fault.slug] == tally.sessions[fault.slug], (fault.slug, spawned)

    # Every call is in the audit trail with its outcome (the warm-up's calls too).
    expected = {CRASH: "upstream_error", CRASH_MODERN: "upstream_error"}
    expected |= {GARBLED: "upstream_error", SILENT: "timeout", GARBAGE: "ok"}
    for fault, outcome in expected.items():
        total = PLAN[fault][0] + WARM_UP[fault][0]
        assert outcome_counts(fault.slug, total) == {outcome: total}, fault.slug

    # Nothing left behind: no server process, no file handle, no thread.
    assert wait_for(lambda: not children(pid)), children(pid)
    wait_for(lambda: open_files(pid) <= before.open_files + 5, timeout=5)
    after = Footprint.of(pid)
    print(
        f"\ngateway {pid} before {before}, after {after}; server processes started "
        f"{spawned}, most at once {dict(watch.most)} ({watch.samples} samples)"
    )
    assert after.children == 0
    assert after.open_files <= before.open_files + 5, (before, after)
    assert after.threads <= before.threads + 2, (before, after)
