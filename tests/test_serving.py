"""How the gateway is served (`mcpgw/serve.py`, `mcpgw/serving.py`): the launcher's command
line, the event loop, the client's address behind a proxy, and a real gateway process
stopped as an operator stops it."""

import asyncio
import io
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
import uvicorn.logging

from audit.models import AuditRecord, Kind
from mcpgw import serve, serving
from tests.conftest import ROOT, Server, add_connection, issue_token, start_gateway, stop
from tests.test_admission_cache import modern_call, modern_headers
from tests.test_listen_backlog import last_value


def test_the_launcher_puts_the_gateways_defaults_before_what_it_is_given() -> None:
    command = serve.arguments(["--host", "0.0.0.0", "--port", "8000", "--backlog", "64"])
    assert last_value(command, "--http") == "mcpgw.serving:HttpProtocol"  # httptools, capped
    assert last_value(command, "--loop") == "uvloop"
    assert last_value(command, "--lifespan") == "on"
    assert last_value(command, "--backlog") == "64"  # what was given wins
    assert command[-1] == "mcpgw.asgi:application"
    assert "--proxy-headers" not in command
    behind_proxy = serve.arguments(["--proxy-headers", "other.asgi:app"])
    assert behind_proxy.index("--proxy-headers") > behind_proxy.index("--no-proxy-headers")
    assert behind_proxy[-1] == "other.asgi:app"
    assert "mcpgw.asgi:application" not in behind_proxy


def _exchange(port: int, request: bytes, piece: int) -> bytes:
    """What the gateway answers `request` (which asks it to close the connection after),
    sent `piece` bytes at a time."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        try:
            for start in range(0, len(request), piece):
                connection.sendall(request[start : start + piece])
        except OSError:  # the gateway answered and closed before the rest was sent
            pass
        answer = b""
        try:
            while chunk := connection.recv(65536):
                answer += chunk
        except ConnectionResetError:  # closed with some of the request unread: answered
            pass
        return answer


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("piece", [1_000_000, 1000])
def test_a_request_head_over_64_kib_is_refused_with_431(gateway: Server, piece: int) -> None:
    def health(header_bytes: int) -> bytes:
        return (
            b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"X-Padding: " + b"a" * header_bytes + b"\r\n\r\n"
        )

    refused = _exchange(gateway.port, health(70_000), piece)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), refused[:200]
    assert json.loads(body)["error"] == {
        "code": -32600,
        "message": "Request header fields too large: more than 65536 bytes",
    }
    # Just under the limit, and a body after the head in the same reads, are served.
    assert _exchange(gateway.port, health(60_000), piece).startswith(b"HTTP/1.1 200 ")
    call = (
        b"POST /mcp/none HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 60000\r\n"
        b"X-Padding: " + b"a" * 60_000 + b"\r\n\r\n" + b" " * 59_998 + b"{}"
    )
    assert _exchange(gateway.port, call, piece).startswith(b"HTTP/1.1 401 ")


@pytest.fixture
def token(alice, legacy_upstream: Server) -> str:  # type: ignore[no-untyped-def]
    """Alice's token, and the connection `old` to the legacy upstream."""
    add_connection("old", legacy_upstream.url)
    return issue_token("alice")


@pytest.mark.django_db(transaction=True)
def test_an_http_1_0_client_gets_a_sized_answer(gateway: Server) -> None:
    answer = _exchange(
        gateway.port,
        b"POST /mcp/none HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1\r\n\r\n{",
        piece=1_000_000,
    )
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), answer
    assert b"transfer-encoding" not in head.lower()
    assert f"content-length: {len(body)}".encode() in head.lower()
    assert json.loads(body)["error"]["code"] == -32600


def _segments_received(connection: socket.socket) -> int:
    """TCP segments with data that the socket has received (Linux's tcp_info)."""
    info = connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int.from_bytes(info[152:156], sys.byteorder)  # tcpi_data_segs_in


def _read_answer(connection: socket.socket) -> bytes:
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += connection.recv(65536)
    head, _, body = answer.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))
    while len(body) < length:
        body += connection.recv(65536)
    return head + b"\r\n\r\n" + body


@pytest.mark.django_db(transaction=True)
def test_an_answer_reaches_the_client_in_one_segment(gateway: Server) -> None:
    """The head and the body of an answer leave in one write: the agent reads one TCP
    segment per answer, not two (loopback carries up to 64 KiB in one)."""
    refused = (
        b"POST /mcp/none HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Accept: application/json, text/event-stream\r\nContent-Length: 1\r\n\r\n{"
    )
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as connection:
        for request, status in [(refused, b" 401 "), (health, b" 200 ")] * 3:
            before = _segments_received(connection)
            connection.sendall(request)
            answer = _read_answer(connection)
            assert status in answer.split(b"\r\n", 1)[0], answer
            time.sleep(0.05)  # nothing more comes
            assert _segments_received(connection) - before == 1, answer


def call_add(gateway: Server, token: str, **headers: str) -> None:
    """A 2026-07-28 call of the legacy upstream's `add`, answered through the gateway."""
    answer = httpx.post(
        f"{gateway.url}/mcp/old",
        headers={**modern_headers(token, "add"), **headers},
        json=modern_call("add", {"a": 2, "b": 3}),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert '"content":[{"text":"5","type":"text"}]' in answer.text  # an SSE event


@pytest.mark.django_db(transaction=True)
def test_a_stopped_gateway_ends_the_upstream_session_it_kept_for_stateless_agents(
    token: str, tmp_path: Path, legacy_upstream: Server
) -> None:
    # A 2026-07-28 agent calls a server that predates that version: the gateway opens a
    # session of its own on the server and keeps it for such calls.
    gateway = start_gateway(tmp_path)
    try:
        call_add(gateway, token)
        before_stop = legacy_upstream.seen()
        assert not [r for r in before_stop if r["method"] == "DELETE"]
    finally:
        stop(gateway.process)  # SIGTERM, as docker stop and systemd send
    assert gateway.process.returncode == 0
    (call,) = [r for r in legacy_upstream.seen() if r["rpc_method"] == "tools/call"]
    session = call["headers"]["mcp-session-id"]
    deletes = [r for r in legacy_upstream.seen() if r["method"] == "DELETE"]
    assert [r["headers"].get("mcp-session-id") for r in deletes] == [session]


@pytest.mark.django_db(transaction=True)
def test_a_stopped_gateway_does_not_wait_for_open_streams_past_its_grace(
    token: str, tmp_path: Path, legacy_upstream: Server
) -> None:
    gateway = start_gateway(tmp_path)
    try:
        call_add(gateway, token)
        # An agent's legacy SSE stream, open until the agent or the gateway ends it.
        stream = socket.create_connection(("127.0.0.1", gateway.port), timeout=30)
        stream.sendall(
            f"GET /mcp/old/sse HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
        )
        received = b""
        while b"event: endpoint" not in received:
            chunk = stream.recv(65536)
            assert chunk, received
            received += chunk
        began = time.monotonic()
    finally:
        stop(gateway.process)
    # docker stop sends SIGKILL after 10 s: the stream is ended after the 5 s grace, and
    # the shutdown (audit records, upstream sessions) still runs.
    assert gateway.process.returncode == 0
    assert time.monotonic() - began < 9
    assert "Application shutdown complete" in _log(tmp_path, gateway)
    stream.close()
    deletes = [r for r in legacy_upstream.seen() if r["method"] == "DELETE"]
    assert len(deletes) == 1


@pytest.mark.django_db(transaction=True)
def test_the_client_address_comes_from_a_trusted_proxy_only(token: str, tmp_path: Path) -> None:
    (tmp_path / "direct").mkdir()
    (tmp_path / "proxied").mkdir()
    direct = start_gateway(tmp_path / "direct")
    behind_proxy = start_gateway(
        tmp_path / "proxied", "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1"
    )
    try:
        call_add(direct, token, **{"X-Forwarded-For": "203.0.113.7"})
        call_add(behind_proxy, token, **{"X-Forwarded-For": "203.0.113.9"})
    finally:
        stop(direct.process)
        stop(behind_proxy.process)
    addresses = AuditRecord.objects.filter(kind=Kind.CALL_REQUEST, target="add").order_by("seq")
    # Without --proxy-headers anyone could name any address: the peer's is recorded.
    assert list(addresses.values_list("client_address", flat=True)) == [
        "127.0.0.1",
        "203.0.113.9",
    ]


def _log(directory: Path, server: Server) -> str:
    return (directory / f"gateway-{server.port}.log").read_text()


def test_the_gateway_process_serves_on_uvloop(gateway: Server, gateway_data_dir: Path) -> None:
    # The session's gateway, which every end-to-end test uses, started as `make run` starts it.
    assert f"serving on the uvloop {version('uvloop')} event loop" in _log(
        gateway_data_dir, gateway
    )


def test_the_access_log_says_when_who_asked_for_what(
    gateway: Server, gateway_data_dir: Path
) -> None:
    assert httpx.get(f"{gateway.url}/healthz?from=access-log-test").status_code == 200
    line = re.compile(
        r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO uvicorn\.access 127\.0\.0\.1:\d+ - "
        r'"GET /healthz\?from=access-log-test HTTP/1\.1" 200 OK$',
        re.M,
    )
    assert line.search(_log(gateway_data_dir, gateway))


@pytest.mark.parametrize("status", [200, 202, 401, 431, 599])
def test_the_access_lines_are_those_uvicorns_formatter_writes(status: int) -> None:
    fmt = '%(levelname)s %(name)s %(client_addr)s - "%(request_line)s" %(status_code)s'
    args = ("127.0.0.1:5000", "POST", "/mcp/demo?x=1", "1.1", status)
    ours = serving.AccessFormatter(fmt)
    theirs = uvicorn.logging.AccessFormatter(fmt, use_colors=False)
    for _ in range(2):  # the second time from the kept status text
        record = logging.LogRecord(
            "uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d', args, None
        )
        assert ours.format(record) == theirs.format(record)
    assert ours.format(record).startswith(
        'INFO uvicorn.access 127.0.0.1:5000 - "POST /mcp/demo?x=1'
    )


class _Stream(io.StringIO):
    """A log stream that counts its writes."""

    writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


def _access_logger(name: str) -> tuple[logging.Logger, _Stream]:
    stream = _Stream()
    handler = serving.AccessLogHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"tests.access.{name}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_access_lines_emitted_on_the_loop_are_written_after_its_step_in_one_write() -> None:
    logger, stream = _access_logger("deferred")

    async def answer_two_requests() -> None:
        logger.info("first")
        logger.info("second")
        # uvicorn emits the line before it writes the answer: nothing is written yet.
        assert stream.getvalue() == ""
        await asyncio.sleep(0)
        assert stream.getvalue() == "first\nsecond\n"
        assert stream.writes == 1
        logger.info("third")
        await asyncio.sleep(0)
        assert stream.getvalue() == "first\nsecond\nthird\n"

    asyncio.run(answer_two_requests())


def test_access_lines_without_a_loop_are_written_at_once_after_those_waiting() -> None:
    logger, stream = _access_logger("threads")
    logger.info("no loop")
    assert stream.getvalue() == "no loop\n"

    async def emit_then_log_from_a_thread() -> None:
        logger.info("on the loop")
        # A thread's line finds one waiting (the loop is held until the thread is done):
        # the waiting one goes first, order is kept.
        thread = threading.Thread(target=logger.info, args=("from a thread",))
        thread.start()
        thread.join()
        assert stream.getvalue() == "no loop\non the loop\nfrom a thread\n"
        logger.info("waiting at flush")
        logger.handlers[0].flush()  # as logging.shutdown does at the end of the process
        assert stream.getvalue().endswith("from a thread\nwaiting at flush\n")
        logger.info("emitted last")

    asyncio.run(emit_then_log_from_a_thread())
    assert stream.getvalue().count("waiting at flush") == 1
    assert stream.getvalue().endswith("waiting at flush\nemitted last\n")


def test_access_lines_left_by_a_closed_loop_are_written_by_flush_and_close() -> None:
    logger, stream = _access_logger("closed")

    def emit_as_the_loop_stops(text: str) -> None:
        # The loop stops before the callback that would write the line runs, and closes.
        loop = asyncio.new_event_loop()
        loop.call_soon(logger.info, text)
        loop.call_soon(loop.stop)
        loop.run_forever()
        loop.close()

    emit_as_the_loop_stops("left waiting")
    assert stream.getvalue() == ""
    logger.handlers[0].flush()
    assert stream.getvalue() == "left waiting\n"
    emit_as_the_loop_stops("left at close")
    assert stream.getvalue() == "left waiting\n"
    logger.handlers[0].close()
    assert stream.getvalue() == "left waiting\nleft at close\n"


def test_an_access_line_that_cannot_be_formatted_leaves_the_others_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logger, stream = _access_logger("broken")

    async def emit() -> None:
        logger.info("before")
        logger.info("%d items", "not a number")
        logger.info("after")
        await asyncio.sleep(0)

    asyncio.run(emit())
    assert stream.getvalue() == "before\nafter\n"
    assert "not a number" in capsys.readouterr().err  # logging's own report of the error


@pytest.mark.django_db(transaction=True)
def test_gateway_event_loop_asyncio_serves_on_asyncios_own_loop(token: str, tmp_path: Path) -> None:
    gateway = start_gateway(tmp_path, GATEWAY_EVENT_LOOP="asyncio")
    try:
        call_add(gateway, token)
    finally:
        stop(gateway.process)
    assert gateway.process.returncode == 0
    log = _log(tmp_path, gateway)
    assert "serving on the asyncio event loop" in log
    assert "uvloop" not in log


@pytest.mark.parametrize("value", ["epoll", "tokio"])
def test_an_unknown_gateway_event_loop_is_refused_before_serving(value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcpgw.serve", "--port", "0"],
        cwd=ROOT,
        env={**os.environ, "GATEWAY_EVENT_LOOP": value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"mcpgw.serve: GATEWAY_EVENT_LOOP must be one of uvloop, asyncio, not '{value}'"
    )
