"""Upstream MCP servers that are local commands speaking JSON-RPC over stdio.

Only commands an admin registered on a connection ever run; nothing an agent sends
reaches a command line. Processes:
- one per legacy-era agent session (an MCP stdio server holds one session), and one
  shared per connection for 2026-07-28 agents, which are stateless: without a session
  when the server speaks 2026-07-28 itself, else in a session the gateway opens with the
  server (declaring no client capabilities);
- the era is detected by sending `server/discover` to a fresh process (a 2026-07-28
  server answers it and the process stays for stateless requests; a legacy one refuses
  it and that process ends), cached for GATEWAY_ERA_CACHE_SECONDS and detected again
  after a server process died;
- ids of requests without a session, and every progress token, are rewritten to ones
  unique in the process, so calls of different agents sharing it cannot collide;
- started on demand, ended with the agent's session (DELETE), after
  GATEWAY_STDIO_IDLE_SECONDS without a call, or at shutdown: stdin closed first, then
  SIGTERM, then SIGKILL; what the server leaves in its process group (children of a
  wrapper, helpers) is ended once it has exited;
- at most `max_processes` per connection and gateway process;
- a crash fails the calls in flight with a clear error, at once even if a child of the
  server holds its stdout open, and the session's next call starts a fresh process
  (re-initialized with the agent's original parameters);
- stderr goes to the gateway's log under the connection's name.
A session's process lives in the gateway process that started it: with several gateway
processes, route a session's requests to one of them (see README) or each process
starts its own server process for the session when a request lands there.
"""

import asyncio
import atexit
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from . import jsonrpc, protocol, sse
from .jsonrpc import Message
from .replies import (
    Accepted,
    Answered,
    DetectsEra,
    ListenerReply,
    refused_discover,
    unclaimed_to,
)
from .upstream import InitializeRefused, LegacySession, SessionExpired, UpstreamFailure

log = logging.getLogger(__name__)

LINE_LIMIT = 32 * 1024 * 1024

# Process groups of every server this gateway process started, ended at exit even if the
# event loop is gone (server processes run in their own session, so a signal to the
# gateway does not reach them).
_running_groups: set[int] = set()


def _end_all_at_exit() -> None:
    groups = list(_running_groups)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, sig)
        if sig == signal.SIGTERM and groups:
            time.sleep(0.2)


atexit.register(_end_all_at_exit)
# Handlers can only be set from the main thread (the module may first be imported
# elsewhere, e.g. by a worker thread resolving URLs).
if threading.current_thread() is threading.main_thread():
    for _sig in (signal.SIGTERM, signal.SIGINT):
        _previous = signal.getsignal(_sig)
        if _previous in (signal.SIG_DFL, None):
            # Exit normally (running atexit) instead of dying without cleanup.
            signal.signal(_sig, lambda signum, frame: sys.exit(128 + signum))
# Environment a registered command starts with, besides its own configured variables.
BASE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "TMPDIR", "VIRTUAL_ENV", "PYTHONPATH")
# How long each step of ending a server's process group may take (SIGTERM, then SIGKILL).
END_STEP_SECONDS = 2.0
# How long the end of a server's output may lag behind its exit before the calls waiting
# on it are failed anyway (a child of the server may hold its stdout open).
EXIT_GRACE_SECONDS = 0.5


def _wait_for_exit(
    pid: int, loop: asyncio.AbstractEventLoop, exited: "asyncio.Future[int | None]"
) -> None:
    """In a thread: wait for the process to exit, leaving it to be reaped by the event loop
    (WNOWAIT), and tell the loop its exit code (None if the loop reaped it first)."""
    code: int | None
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        code = None
    else:
        code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def settle() -> None:
        if not exited.done():
            exited.set_result(code)

    with contextlib.suppress(RuntimeError):  # the loop has closed
        loop.call_soon_threadsafe(settle)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_runs(pgid: int) -> bool:
    """Whether a process of the group still runs. Zombies, which no signal ends, do not
    count: where the gateway is a container's first process, orphans it never waited for
    stay zombies, and ending a group must not wait for them."""
    if not _group_exists(pgid):
        return False
    try:
        entries = list(os.scandir("/proc"))
    except OSError:
        return True
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            with open(f"{entry.path}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:
            continue
        # After the command's name (in parentheses): state, parent, process group.
        fields = stat[stat.rindex(b")") + 2 :].split(maxsplit=3)
        if int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


async def _end_group(pgid: int) -> None:
    """End what is left of a server's process group once the server itself exited: its
    children (a wrapper such as `npx` or `sh -c` leaves the real server behind, which may
    not stop with it), SIGTERM first, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not _group_runs(pgid):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + END_STEP_SECONDS
        while _group_runs(pgid) and time.monotonic() < deadline:  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.05)


class StdioProcess:
    """One running server: its stdin for requests, its stdout routed back to callers."""

    def __init__(self, upstream: "StdioUpstream", key: str) -> None:
        self.upstream = upstream
        self.key = key
        self.process: asyncio.subprocess.Process | None = None
        self.pending: dict[Any, asyncio.Queue[Message | None]] = {}
        self.listeners: list[asyncio.Queue[Message | None]] = []
        self.last_used = time.monotonic()
        self.exit_reason = ""
        self.closing = False
        # Whether it serves stateless agents (`shared_session`, `_sessionless_process`).
        self.shared = False
        # The request (upstream id) each progress token sent to the server belongs to.
        self.tokens: dict[Any, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._write_lock = asyncio.Lock()
        self._ids = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        spec = self.upstream
        env = {name: os.environ[name] for name in BASE_ENV if name in os.environ}
        env.update(spec.env)
        try:
            self.process = await asyncio.create_subprocess_exec(
                spec.command,
                *spec.args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=spec.cwd or None,
                env=env,
                limit=LINE_LIMIT,
                start_new_session=True,
            )
        except OSError as exc:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {spec.slug}: cannot start {spec.command!r}: {exc.strerror or exc}",
            ) from None
        _running_groups.add(self.process.pid)
        self._tasks = [
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]
        self._tasks.append(asyncio.ensure_future(self._watch_exit(self._tasks[0])))

    async def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            while True:
                try:
                    line = await self.process.stdout.readline()
                except ValueError:
                    log.warning(
                        "upstream %s wrote a line over %d bytes", self.upstream.slug, LINE_LIMIT
                    )
                    continue
                if not line:
                    break
                try:
                    message = jsonrpc.validate(json.loads(line))
                except (ValueError, jsonrpc.InvalidMessage):
                    log.warning(
                        "upstream %s wrote something that is not JSON-RPC; ignored",
                        self.upstream.slug,
                    )
                    continue
                self._route(message)
        finally:
            code = await self.process.wait()
            self._ended(code)
            # What it left running in its group (children of a wrapper) ends with it.
            await _end_group(self.process.pid)
            # As after close(): once the group is empty its id may belong to an unrelated
            # process, so the exit handler must not signal it.
            _running_groups.discard(self.process.pid)

    def _ended(self, code: int) -> None:
        """The server exited: the calls waiting on it fail with its exit code."""
        if self.exit_reason:
            return
        self.exit_reason = f"the server process exited (code {code})"
        for queue in [*self.pending.values(), *self.listeners]:
            queue.put_nowait(None)
        if not self.closing:
            # A server that died may come back as another program (or version).
            self.upstream.forget_era()

    async def _watch_exit(self, reader: "asyncio.Task[None]") -> None:
        """A child of the server may keep its stdout open after the server exited (it
        inherited it, or, on uvloop, which does not close other descriptors for a new
        process, copies of it): the calls then fail shortly after the exit, not at their
        timeout, and what is left of the server's process group is ended."""
        assert self.process is not None
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[int | None] = loop.create_future()
        # asyncio's `Process.wait` returns only once the pipes have closed too: a thread
        # learns of the exit itself (without reaping the process, which stays the loop's).
        threading.Thread(
            target=_wait_for_exit, args=(self.process.pid, loop, exited), daemon=True
        ).start()
        code = await exited
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(reader), EXIT_GRACE_SECONDS)
            return
        if code is None:
            code = self.process.returncode
        self._ended(-1 if code is None else code)
        await _end_group(self.process.pid)

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        server_log = logging.getLogger(f"gateway.upstream.{self.upstream.slug}")
        while True:
            line = await self.process.stderr.readline()
            if not line:
                return
            server_log.info("%s", line.decode(errors="replace").rstrip()[:2000])

    def _route(self, message: Message) -> None:
        if message.is_response:
            queue = self.pending.get(message.id)
            if queue is not None:
                queue.put_nowait(message)
            return
        # Progress belongs to the call that asked for it; other notifications and the
        # server's own requests go to the calls in flight, or else to the GET stream.
        token = (
            message.params.get("progressToken")
            if message.method == "notifications/progress"
            else None
        )
        owner = self.pending.get(self.tokens.get(token)) if isinstance(token, str) else None
        if owner is not None:
            targets = [owner]
        else:
            targets = unclaimed_to(
                message,
                list(self.pending.values()),
                self.listeners,
                shared=self.shared,
                upstream=self.upstream.slug,
                reply=self.write,
            )
        for queue in targets:
            queue.put_nowait(message)

    async def write(self, payload: dict[str, Any]) -> None:
        if not self.alive:
            raise SessionExpired
        assert self.process is not None and self.process.stdin is not None
        async with self._write_lock:
            try:
                self.process.stdin.write(jsonrpc.dumps(payload) + b"\n")
                await self.process.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                reason = await self._why_gone()
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_UNAVAILABLE, f"upstream {self.upstream.slug}: {reason}"
                ) from None
        self.last_used = time.monotonic()

    async def _why_gone(self) -> str:
        """Why writing to the server failed: its exit, which the pipe's end can precede."""
        if not self.exit_reason and self.process is not None:
            with contextlib.suppress(TimeoutError):
                code = await asyncio.wait_for(self.process.wait(), END_STEP_SECONDS)
                return f"the server process exited (code {code})"
        return self.exit_reason or "the server process is gone"

    def next_id(self) -> str:
        self._ids += 1
        return f"gw-{self._ids}"

    async def close(self) -> None:
        """Close stdin, then SIGTERM, then SIGKILL to its process group, waiting a little
        between each."""
        process = self.process
        self.closing = True
        if process is None:
            return
        if process.returncode is None:
            if process.stdin is not None:
                with contextlib.suppress(Exception):
                    process.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout=END_STEP_SECONDS)
        await _end_group(process.pid)
        _running_groups.discard(process.pid)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass
class StdioReply:
    """The answer to one request: the messages the server writes until its response."""

    process: StdioProcess
    request_id: Any
    queue: asyncio.Queue[Message | None]
    name: str
    status: int = 200
    size: int = 0
    is_sse: bool = True
    session_id: str | None = None
    closed: bool = False
    timeout: float | None = None
    # The id and progress token the caller gave the request, where they were rewritten.
    original_id: Any = None
    rewritten_id: bool = False
    sent_token: str | None = None
    original_token: Any = None
    # initialize may not be cancelled (the protocol says so); every other request is,
    # when the gateway stops waiting for its answer.
    cancellable: bool = True
    answered: bool = False

    async def events(
        self, idle_timeout: float | None = None
    ) -> AsyncIterator[tuple[sse.Event, Message | None]]:
        timeout = self.timeout or idle_timeout or settings.GATEWAY["UPSTREAM_TIMEOUT"]
        while not self.closed:
            try:
                message = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_TIMEOUT,
                    f"upstream {self.name} stopped answering for {timeout:g} s",
                    outcome="timeout",
                ) from None
            if message is None:
                reason = self.process.exit_reason or "the server process ended"
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_UNAVAILABLE, f"upstream {self.name}: {reason}"
                )
            final = message.is_response and message.id == self.request_id
            if final and self.rewritten_id:
                message = Message({**message.payload, "id": self.original_id})
            elif (
                self.sent_token is not None
                and message.method == "notifications/progress"
                and message.params.get("progressToken") == self.sent_token
            ):
                params = {**message.params, "progressToken": self.original_token}
                message = Message({**message.payload, "params": params})
            if final:
                self.answered = True
            yield sse.Event(data=""), message
            if final:
                await self.aclose()
                return

    async def first_response(self) -> Message:
        async for _event, message in self.events():
            if message is not None and message.is_response:
                return message
        raise UpstreamFailure(
            jsonrpc.UPSTREAM_PROTOCOL_ERROR, f"upstream {self.name} sent no response"
        )

    async def read_message(self) -> Message | None:
        return await self.first_response()

    async def read_body(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            self.process.pending.pop(self.request_id, None)
            self.process.tokens.pop(self.sent_token, None)
            if self.cancellable and not self.answered and self.process.alive:
                # Timed out, or its agent went away: the server may stop working on it.
                with contextlib.suppress(Exception):
                    await self.process.write(
                        {
                            "jsonrpc": "2.0",
                            "method": "notifications/cancelled",
                            "params": {
                                "requestId": self.request_id,
                                "reason": "the gateway stopped waiting for the answer",
                            },
                        }
                    )


@dataclass
class StdioUpstream(DetectsEra):
    """The gateway's client for one stdio connection, with the same interface as the
    HTTP `Upstream` so the data path treats both alike."""

    slug: str
    command: str
    args: list[str]
    cwd: str
    env: dict[str, str]
    max_processes: int
    processes: dict[str, StdioProcess] = field(default_factory=dict)
    _shared: LegacySession | None = field(default=None, init=False)
    _shared_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _sweeper: asyncio.Task[None] | None = field(default=None, init=False)
    # Processes being started: not in `processes` yet, but they count toward the limit.
    _starting: int = field(default=0, init=False)
    # Whether the server answers server/discover (2026-07-28), with the time we learnt it.
    # What a legacy server answered the probe (replayed to agents that send
    # server/discover themselves).
    _discover_refusal: dict[str, Any] | None = field(default=None, init=False)
    # The process 2026-07-28 requests go to when the server speaks that era (no session).
    _sessionless: StdioProcess | None = field(default=None, init=False)
    _sessionless_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    @property
    def name(self) -> str:
        return self.slug

    # -- era detection -------------------------------------------------------------

    async def _probe_discover(self) -> dict[str, Any] | None:
        """server/discover to a fresh process, kept for stateless requests if it answers."""
        process = await self._spawn()
        result: Any = None
        try:
            reply = await self._request(process, protocol.discover_request("gateway-probe"))
            reply.timeout = settings.GATEWAY["STDIO_START_TIMEOUT"]
            message = await reply.first_response()
            await reply.aclose()
            result = message.payload.get("result")
            error = message.payload.get("error")
            self._discover_refusal = error if isinstance(error, dict) else None
        except (UpstreamFailure, SessionExpired) as exc:
            # A legacy server may ignore the request before initialize, or exit.
            log.info("upstream %s did not answer server/discover: %s", self.slug, exc)
            self._discover_refusal = None
        except BaseException:
            self.processes.pop(process.key, None)
            await process.close()
            raise
        modern = (
            isinstance(result, dict)
            and isinstance(result.get("supportedVersions"), list)
            and protocol.MODERN_VERSION in result["supportedVersions"]
        )
        if modern and process.alive:
            process.shared = True
            async with self._sessionless_lock:
                previous, self._sessionless = self._sessionless, process
            if previous is not None and previous is not process:
                self.processes.pop(previous.key, None)
                await previous.close()
            return result
        self.processes.pop(process.key, None)
        await process.close()
        return result if modern else None

    async def _sessionless_process(self) -> StdioProcess:
        async with self._sessionless_lock:
            process = self._sessionless
            if process is None or not process.alive or process.key not in self.processes:
                process = self._sessionless = await self._spawn()
                process.shared = True
            return process

    async def _spawn(self) -> StdioProcess:
        self._reap()
        if len(self.processes) + self._starting >= self.max_processes:
            raise UpstreamFailure(
                jsonrpc.UPSTREAM_UNAVAILABLE,
                f"upstream {self.slug} already runs {self.max_processes} processes, its limit; "
                "end an agent session or try again later",
            )
        key = f"stdio-{secrets.token_hex(12)}"
        process = StdioProcess(self, key)
        # Starting yields to other requests, which must find this place taken.
        self._starting += 1
        try:
            await process.start()
        finally:
            self._starting -= 1
        self.processes[key] = process
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        return process

    def _reap(self) -> None:
        for key, process in list(self.processes.items()):
            if not process.alive:
                self.processes.pop(key, None)

    async def _sweep(self) -> None:
        idle = settings.GATEWAY["STDIO_IDLE_SECONDS"]
        while self.processes:
            await asyncio.sleep(min(idle, 30))
            now = time.monotonic()
            for key, process in list(self.processes.items()):
                busy = process.pending or process.listeners
                if not process.alive or (not busy and now - process.last_used > idle):
                    self.processes.pop(key, None)
                    await process.close()

    async def initialize(self, params: dict[str, Any]) -> LegacySession:
        process = await self._spawn()
        try:
            reply = await self._request(
                process,
                {"jsonrpc": "2.0", "id": "gateway-init", "method": "initialize", "params": params},
            )
            reply.timeout = settings.GATEWAY["STDIO_START_TIMEOUT"]
            message = await reply.first_response()
            await reply.aclose()
            if "error" in message.payload:
                error = message.payload["error"]
                raise InitializeRefused(error if isinstance(error, dict) else {}, 200)
            result = message.payload.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("protocolVersion"), str):
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_PROTOCOL_ERROR,
                    f"upstream {self.slug} answered initialize without a protocol version",
                )
            await process.write({"jsonrpc": "2.0", "method": "notifications/initialized"})
        except BaseException:
            self.processes.pop(process.key, None)
            await process.close()
            raise
        return LegacySession(process.key, result["protocolVersion"], result)

    async def _request(
        self, process: StdioProcess, payload: dict[str, Any], *, rewrite_id: bool = False
    ) -> StdioReply:
        original_id = payload["id"]
        request_id = process.next_id() if rewrite_id else original_id
        sent_token, original_token = None, None
        params = payload.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        if isinstance(meta, dict) and "progressToken" in meta:
            # Agents sharing a process may pick the same token: the server gets one of ours.
            assert isinstance(params, dict)
            sent_token, original_token = process.next_id(), meta["progressToken"]
            meta = {**meta, "progressToken": sent_token}
            payload = {**payload, "params": {**params, "_meta": meta}}
            process.tokens[sent_token] = request_id
        queue: asyncio.Queue[Message | None] = asyncio.Queue()
        process.pending[request_id] = queue
        try:
            await process.write({**payload, "id": request_id})
        except BaseException:
            process.pending.pop(request_id, None)
            process.tokens.pop(sent_token, None)
            raise
        return StdioReply(
            process,
            request_id,
            queue,
            self.slug,
            original_id=original_id,
            rewritten_id=rewrite_id,
            sent_token=sent_token,
            original_token=original_token,
            cancellable=payload.get("method") != "initialize",
        )

    def _process(self, session_id: str | None) -> StdioProcess:
        process = self.processes.get(session_id or "")
        if process is None or not process.alive:
            # Gone (crashed, idle, or started by another gateway process): the data path
            # re-initializes, as for an HTTP upstream that forgot a session.
            self.processes.pop(session_id or "", None)
            raise SessionExpired
        return process

    async def post(
        self,
        message: dict[str, Any] | bytes,
        *,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> "StdioReply | Accepted | Answered":
        payload = json.loads(message) if isinstance(message, bytes) else message
        if not session_id:
            return await self._post_sessionless(payload)
        process = self._process(session_id)
        if "method" in payload and "id" in payload:
            if payload["id"] in process.pending:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_PROTOCOL_ERROR, "a request with this id is already in flight"
                )
            return await self._request(process, payload)
        await process.write(payload)
        return Accepted()

    async def _post_sessionless(
        self, payload: dict[str, Any]
    ) -> "StdioReply | Accepted | Answered":
        """A 2026-07-28 request: to the process without a session, if the server is modern."""
        if not await self.is_modern():
            return refused_discover(self._discover_refusal, payload.get("id"))
        if not ("method" in payload and "id" in payload):
            # 2026-07-28 has no client-to-server notifications on this path.
            return Accepted()
        process = await self._sessionless_process()
        return await self._request(process, payload, rewrite_id=True)

    async def send(
        self,
        method: str,
        *,
        body: bytes | None = None,
        session_id: str | None = None,
        protocol_version: str | None = None,
        extra: dict[str, str] | None = None,
        accept: str = "",
    ) -> "StdioReply | Accepted":
        if method == "DELETE":
            process = self.processes.pop(session_id or "", None)
            if process is not None:
                await process.close()
            return Accepted(status=200)
        if method == "GET":
            try:
                process = self._process(session_id)
            except SessionExpired:
                raise UpstreamFailure(
                    jsonrpc.UPSTREAM_UNAVAILABLE,
                    f"upstream {self.slug}: the session's server process is gone; "
                    "the next request starts a fresh one",
                ) from None
            return ListenerReply(process.listeners)
        raise UpstreamFailure(jsonrpc.UPSTREAM_PROTOCOL_ERROR, f"{method} is not used with stdio")

    async def shared_session(self, *, renew: LegacySession | None = None) -> LegacySession:
        async with self._shared_lock:
            # Its process may have exited and still be listed (a process is forgotten only
            # when a request, the sweep or a new process finds it gone): then it is renewed
            # now, not by the request the caller sends it, which would find it gone.
            process = self.processes.get(self._shared.session_id) if self._shared else None
            alive = process is not None and process.alive
            if not alive or self._shared is renew:
                self._shared = await self.initialize(protocol.gateway_initialize_params())
                self.processes[self._shared.session_id].shared = True
            assert self._shared is not None
            return self._shared

    async def end_session(self, session: LegacySession) -> None:
        await self.send("DELETE", session_id=session.session_id)

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        processes = list(self.processes.values())
        self.processes.clear()
        await asyncio.gather(*(p.close() for p in processes), return_exceptions=True)
