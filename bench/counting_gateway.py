"""The gateway's server with counters on the data path's costly steps, for `gateway_bench
--count-calls`.

    python -m bench.counting_gateway --host 127.0.0.1 --port P

Takes the arguments of `python -m mcpgw.serve`, and serves as it does. It changes nothing
in the gateway: before uvicorn loads the application it wraps, from
outside, the few library entry points every call goes through, and counts calls and
time per call site:

- `sync_to_async` hops, by the function they run: time awaited on the event loop, and
  time spent inside the function on the worker thread (the difference is the hop:
  queueing for one of the executor's threads and the hand-offs);
- SQL statements (by their first words), commits and new database connections;
- `json.dumps`/`json.loads` and RFC 8785 canonicalization, by caller, with bytes;
- masking (`Masker.mask_text`/`mask_json`, `masking.service.mask_payload`), by caller;
- upstream requests (`httpx.AsyncClient.send`) and new upstream TCP connections;
- the garbage collector's collections by generation (time per call, and the longest,
  during which the event loop stood still);
- the wall-clock phases of each tools/call that went upstream, one after the other (named
  "phase N: ..."): from the request reaching the application to its write-ahead audit
  record, that record (of which the wait for the audit writer, busy with an earlier
  record, and the database's round trip for it), the upstream until its answer's head,
  reading, masking and encoding that answer, and writing the answer to the agent;
- for the slowest 1% of those calls (by their whole time) against all of them: each
  phase's mean, and how many saw a collection of the garbage collector, one of an older
  generation (1 or 2), or a signed audit checkpoint written while they ran: what the
  slow calls spend their extra time on.

BENCH_GC_FREEZE=0 (`gateway_bench --no-gc-freeze`) keeps the application from freezing
what it loaded at start (`mcpgw/asgi.py`), to compare collection pauses with and without.

SIGUSR2 resets the counters; SIGUSR1 writes them as JSON to $BENCH_COUNTS_FILE. The
wrappers cost time themselves: never compare timings taken with this launcher with the
harness's ordinary runs.
"""

import contextvars
import functools
import json
import os
import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

_lock = threading.Lock()
# name -> [count, seconds, bytes]
_counts: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
_in_wrapper = threading.local()


def _add(name: str, seconds: float = 0.0, size: int = 0) -> None:
    with _lock:
        entry = _counts[name]
        entry[0] += 1
        entry[1] += seconds
        entry[2] += size


def _caller(depth: int = 2) -> str:
    """The first frame outside the json module and this file, as module:function."""
    frame = sys._getframe(depth)
    while frame is not None and (
        frame.f_code.co_filename == __file__ or "/json/" in frame.f_code.co_filename
    ):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    module = frame.f_globals.get("__name__", "?")
    return f"{module}:{frame.f_code.co_qualname}"


def _name_of(func: Any) -> str:
    func = getattr(func, "func", func)  # functools.partial
    module = getattr(func, "__module__", "?")
    return f"{module}:{getattr(func, '__qualname__', repr(func))}"


def _sql_kind(sql: str) -> str:
    """A statement's kind and table, e.g. SELECT audit_audithead FOR UPDATE."""
    words = sql.replace("(", " ").split()
    upper = [word.upper() for word in words]
    kind = upper[0] if upper else "?"
    for marker in ("FROM", "INTO", "UPDATE"):
        if marker in upper[1:] or (marker == "UPDATE" and kind == "UPDATE"):
            index = upper.index(marker)
            if index + 1 < len(words):
                kind = f"{kind} {words[index + 1].strip(chr(34))}"
                break
    if "FOR UPDATE" in sql.upper():
        kind += " FOR UPDATE"
    return kind


def _timed(owner: Any, attribute: str, label: Callable[..., str]) -> None:
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_in_wrapper, "active", False):
            return original(*args, **kwargs)
        _in_wrapper.active = True
        began = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            _in_wrapper.active = False
            _add(label(*args, **kwargs), time.perf_counter() - began)

    setattr(owner, attribute, wrapper)


def install() -> None:
    import asgiref.sync
    import httpcore._async.connection
    import httpx
    import rfc8785

    # -- sync_to_async hops --------------------------------------------------------
    hop_call = asgiref.sync.SyncToAsync.__call__
    hop_thread = asgiref.sync.SyncToAsync.thread_handler

    async def counted_call(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await hop_call(self, *args, **kwargs)
        finally:
            _add(f"hop awaited {_name_of(self.func)}", time.perf_counter() - began)

    def counted_thread(self: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return hop_thread(self, *args, **kwargs)
        finally:
            _add(f"hop inside {_name_of(self.func)}", time.perf_counter() - began)

    asgiref.sync.SyncToAsync.__call__ = counted_call  # type: ignore[method-assign]
    asgiref.sync.SyncToAsync.thread_handler = counted_thread  # type: ignore[method-assign]

    # -- JSON ----------------------------------------------------------------------
    dumps, loads = json.dumps, json.loads

    def counted_dumps(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = dumps(*args, **kwargs)
        _add(f"json.dumps by {_caller()}", time.perf_counter() - began, len(out))
        return out

    def counted_loads(data: Any, *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        out = loads(data, *args, **kwargs)
        _add(f"json.loads by {_caller()}", time.perf_counter() - began, len(data))
        return out

    json.dumps = counted_dumps
    json.loads = counted_loads
    canonical = rfc8785.dumps

    def counted_canonical(value: Any) -> bytes:
        began = time.perf_counter()
        out = canonical(value)
        _add(f"rfc8785.dumps by {_caller(3)}", time.perf_counter() - began, len(out))
        return out

    rfc8785.dumps = counted_canonical

    # -- upstream HTTP -------------------------------------------------------------
    send = httpx.AsyncClient.send

    async def counted_send(self: Any, request: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return await send(self, request, **kwargs)
        finally:
            _add(f"httpx send {request.method}", time.perf_counter() - began)

    httpx.AsyncClient.send = counted_send  # type: ignore[method-assign]
    connect = httpcore._async.connection.AsyncHTTPConnection._connect

    async def counted_connect(self: Any, request: Any) -> Any:
        _add("upstream TCP connection opened")
        return await connect(self, request)

    httpcore._async.connection.AsyncHTTPConnection._connect = counted_connect  # type: ignore[method-assign]


def install_django() -> None:
    """Wrappers on Django and the project's modules, once settings are configured."""
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.backends.utils import CursorWrapper

    execute = CursorWrapper.execute
    executemany = CursorWrapper.executemany

    def counted_execute(self: Any, sql: str, params: Any = None) -> Any:
        began = time.perf_counter()
        try:
            return execute(self, sql, params)
        finally:
            _add(f"SQL {_sql_kind(sql)}", time.perf_counter() - began)

    def counted_executemany(self: Any, sql: str, param_list: Any) -> Any:
        began = time.perf_counter()
        try:
            return executemany(self, sql, param_list)
        finally:
            _add(f"SQL many {_sql_kind(sql)}", time.perf_counter() - began)

    CursorWrapper.execute = counted_execute  # type: ignore[method-assign]
    CursorWrapper.executemany = counted_executemany  # type: ignore[method-assign]
    _timed(BaseDatabaseWrapper, "commit", lambda *a, **k: "DB commit")
    _timed(BaseDatabaseWrapper, "connect", lambda *a, **k: "DB connection opened")

    from masking import service
    from masking.engine import Masker

    _timed(Masker, "mask_text", lambda *a, **k: f"mask_text (outermost) by {_caller(3)}")
    _timed(Masker, "mask_json", lambda *a, **k: f"mask_json (outermost) by {_caller(3)}")
    _timed(service, "mask_payload", lambda *a, **k: f"mask_payload by {_caller(3)}")


_gc_started = [0.0]
# How many of each event so far: a call that ends with a higher count than it began with
# saw one while it ran.
_events = {"gc": 0, "gc old": 0, "checkpoint": 0}


def _gc_callback(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
        return
    seconds = time.perf_counter() - _gc_started[0]
    generation = info["generation"]
    _events["gc"] += 1
    if generation:
        _events["gc old"] += 1
    _add(f"gc collections, generation {generation}", seconds)
    with _lock:
        longest = _counts[f"gc longest pause, generation {generation}"]
        longest[0] = 1
        longest[1] = max(longest[1], seconds)


def install_gc() -> None:
    import gc

    gc.callbacks.append(_gc_callback)
    if os.environ.get("BENCH_GC_FREEZE") == "0":
        gc.freeze = lambda: None


# The phases of the request being served (a dict of stamps), per task.
_phase_stamps: "contextvars.ContextVar[dict[str, float]]" = contextvars.ContextVar("phases")
PHASES = (
    ("1", "request in, to its audit record", "in", "record"),
    ("2", "write-ahead audit record", "record", "recorded"),
    ("2a", "  of it: waiting for the audit writer", "record", "writer"),
    ("2b", "  of it: the database's round trip", "sent", "committed"),
    ("3", "upstream, until its answer's head", "upstream", "head"),
    ("4", "answer read, masked and encoded", "head", "respond"),
    ("5", "answer written to the agent", "respond", "responded"),
    ("1-5", "request in to answer written", "in", "responded"),
)


# Each tools/call's phases in seconds (by PHASES' number) and, as 0 or 1, the events it
# saw (by _events' name), for `_tail`; at most this many calls are kept.
_calls: list[dict[str, float]] = []
MAX_CALLS = 200_000


def _tail() -> dict[str, Any] | None:
    """The slowest 1% of the calls kept (by their whole time, phase 1-5) against all of
    them: the mean of each phase and the share of calls that saw each event."""
    with _lock:
        calls = list(_calls)
    if len(calls) < 100:
        return None
    calls.sort(key=lambda call: call["1-5"])
    slowest = calls[-(len(calls) // 100) :]
    keys = [number for number, *_ in PHASES] + list(_events)

    def means(group: list[dict[str, float]]) -> dict[str, float]:
        return {key: sum(call.get(key, 0.0) for call in group) / len(group) for key in keys}

    return {
        "calls": len(calls),
        "slowest": len(slowest),
        "labels": {number: label.strip() for number, label, *_ in PHASES},
        "all": means(calls),
        "slowest means": means(slowest),
    }


def _stamp(name: str) -> None:
    stamps = _phase_stamps.get(None)
    if stamps is not None and name not in stamps:
        stamps[name] = time.perf_counter()


def install_phases() -> None:
    """Stamps for the phases of a tools/call (see the module's docstring)."""
    from audit import writer
    from audit.models import Kind
    from gateway import endpoint, pipeline, upstream

    def around(owner: Any, attribute: str, before: str | None, after: str | None) -> None:
        original = getattr(owner, attribute)

        @functools.wraps(original)
        async def stamped(*args: Any, **kwargs: Any) -> Any:
            if before:
                _stamp(before)
            result = await original(*args, **kwargs)
            if after:
                _stamp(after)
            return result

        setattr(owner, attribute, stamped)

    around(upstream.Upstream, "post", "upstream", "head")
    around(endpoint.Exchange, "respond", "respond", "responded")

    # The audit writer works in a task of its own, for whichever calls wait: its stamps
    # are kept by the request record's call id, and go to the call once it is recorded.
    by_call: dict[Any, dict[str, float]] = {}

    def stamp_records(calls: list[Any], name: str, *, again: bool = False) -> None:
        now = time.perf_counter()
        for call_id in calls:
            stamps = by_call.setdefault(call_id, {})
            if again or name not in stamps:
                stamps[name] = now

    record_request = pipeline.record_request

    async def stamped_record_request(call: Any) -> None:
        _stamp("record")
        try:
            await record_request(call)
        finally:
            stamps = by_call.pop(call.call_id, {})
            own = _phase_stamps.get(None)
            if own is not None:
                own.update(stamps)
        _stamp("recorded")

    pipeline.record_request = stamped_record_request
    append_many = writer.PostgresChain.append_many

    async def stamped_append_many(self: Any, rows: list[dict[str, Any]]) -> Any:
        stamp_records([r["call_id"] for r in rows if r.get("kind") == Kind.CALL_REQUEST], "writer")
        return await append_many(self, rows)

    writer.PostgresChain.append_many = stamped_append_many
    append_at = writer.PostgresChain._append_at

    async def stamped_append_at(self: Any, connection: Any, records: Any, head: Any) -> Any:
        calls = [record.call_id for record in records if record.kind == Kind.CALL_REQUEST]
        stamp_records(calls, "sent")
        result = await append_at(self, connection, records, head)
        # The last statement's answer: a batch that finds the head moved is sent again.
        stamp_records(calls, "committed", again=True)
        return result

    writer.PostgresChain._append_at = stamped_append_at
    checkpoint = writer._checkpoint

    async def counted_checkpoint(record: Any) -> None:
        _events["checkpoint"] += 1
        await checkpoint(record)

    writer._checkpoint = counted_checkpoint

    import mcpgw.asgi

    application = mcpgw.asgi.application

    async def phased(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/mcp"):
            return await application(scope, receive, send)
        stamps = {"in": time.perf_counter()}
        _phase_stamps.set(stamps)
        began = dict(_events)
        await application(scope, receive, send)
        if {"recorded", "head", "responded"} <= stamps.keys():
            call = {name: float(count > began[name]) for name, count in _events.items()}
            for number, label, start, end in PHASES:
                if start in stamps and end in stamps:
                    call[number] = stamps[end] - stamps[start]
                    _add(f"phase {number}: {label}", call[number])
            with _lock:
                if len(_calls) < MAX_CALLS:
                    _calls.append(call)

    mcpgw.asgi.application = phased


def _dump(*_: Any) -> None:
    path = os.environ.get("BENCH_COUNTS_FILE")
    if not path:
        return
    with _lock:
        snapshot = {name: list(values) for name, values in _counts.items()}
    snapshot["threads alive"] = [threading.active_count(), 0.0, 0]
    tail = _tail()
    if tail is not None:
        snapshot["slowest calls"] = tail  # type: ignore[assignment]
    with open(path + ".tmp", "w") as handle:
        json.dump(snapshot, handle)
    os.replace(path + ".tmp", path)


def _reset(*_: Any) -> None:
    with _lock:
        _counts.clear()
        _calls.clear()


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcpgw.settings")
    install()
    install_gc()
    import django

    django.setup()
    install_django()
    install_phases()
    signal.signal(signal.SIGUSR1, _dump)
    signal.signal(signal.SIGUSR2, _reset)
    from mcpgw import serve

    serve.main()


if __name__ == "__main__":
    main()
