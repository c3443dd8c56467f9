"""What the gateway changes in daphne (`mcpgw/serving.py`): requests driven through daphne's
own HTTP protocol with an in-memory transport, and a real gateway process stopped as an
operator stops it; the event loop it serves on (`mcpgw/serve.py`)."""

import asyncio
import gc
import os
import subprocess
import sys
from email.headerregistry import ContentTypeHeader
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from daphne import server as daphne_server
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from mcpgw import serving
from tests.conftest import ROOT, Server, add_connection, issue_token, start_gateway, stop
from tests.test_admission_cache import modern_call, modern_headers


class _ApplicationQueue:
    def __init__(self) -> None:
        self.messages: list[dict] = []

    def put_nowait(self, message: dict) -> None:
        self.messages.append(message)


def _post(content_type: str, body: bytes) -> bytes:
    head = (
        f"POST /mcp/bench HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def test_posts_reach_the_application_whole_and_twisted_neither_parses_nor_logs_them() -> None:
    serving.use_lean_factory()
    serving.use_lean_factory()  # twice: asgi.py may be loaded again in one process
    scopes: list[dict] = []
    queue = _ApplicationQueue()
    twisted_events: list[dict] = []
    received: list = []  # daphne's request objects, which the application answers through

    def create_application(request: object, scope: dict) -> _ApplicationQueue:
        scopes.append(scope)
        received.append(request)
        return queue

    server = SimpleNamespace(
        connections={},
        protocol_connected=lambda request: None,
        protocol_disconnected=lambda request: None,
        create_application=create_application,
        log_action=lambda *args: None,
        server_name="daphne",
        root_path="",
        request_buffer_size=8192,
        proxy_forwarded_address_header=None,
        proxy_forwarded_port_header=None,
        proxy_forwarded_proto_header=None,
    )
    requests = [
        ("application/json", b'{"jsonrpc":"2.0","id":1,"method":"ping"}'),
        ("application/x-www-form-urlencoded", b"username=admin&password=x"),
        ("multipart/form-data; boundary=zz", b'--zz\r\nContent-Disposition: form-data; name="a"'),
    ] * 5
    transports = []
    factory = daphne_server.HTTPFactory(server)  # the factory daphne's server makes
    factory.startFactory()
    gc.collect()
    gc.disable()  # the header classes Twisted used to make would linger until collected
    globalLogPublisher.addObserver(twisted_events.append)
    try:
        classes_before = len(ContentTypeHeader.__subclasses__())
        for content_type, body in requests:
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            transports.append(StringTransport())
            protocol.makeConnection(transports[-1])
            protocol.dataReceived(_post(content_type, body))
            # The application's answer.
            received[-1].handle_reply({"type": "http.response.start", "status": 200})
            received[-1].handle_reply({"type": "http.response.body", "body": b"{}"})
        classes_after = len(ContentTypeHeader.__subclasses__())
    finally:
        globalLogPublisher.removeObserver(twisted_events.append)
        gc.enable()
        factory.stopFactory()

    assert [s["method"] for s in scopes] == ["POST"] * len(requests)
    bodies = [m["body"] for m in queue.messages if m["type"] == "http.request"]
    assert bodies == [body for _, body in requests]
    assert all(t.value().startswith(b"HTTP/1.1 200 OK\r\n") for t in transports)
    # Twisted parsed each POST's Content-Type with the email package, which makes a class
    # per header parsed (and reference cycles only the collector frees).
    assert classes_after == classes_before
    # Nor does Twisted format an access-log line of its own for each request.
    assert not [e for e in twisted_events if "/mcp/bench" in str(e.get("log_io", ""))]


async def test_a_request_is_let_go_of_when_its_application_ends_not_a_second_later() -> None:
    # daphne keeps each request (with its application instance, scope and queue) in the
    # server's connections until a sweep once a second; the gateway's requests go as soon
    # as their application has ended. One that failed stays for the sweep, which logs it.
    serving.use_lean_factory()

    async def application(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})
        await asyncio.sleep(0.05)  # work after the answer, as the outcome record is
        if scope["path"] == "/mcp/fails":
            raise RuntimeError("after the answer")

    server = daphne_server.Server(application, endpoints=["tcp:port=0"])
    server.connections = {}  # as Server.run makes it
    factory = daphne_server.HTTPFactory(server)
    requests = {}
    for path in ("/mcp/ok", "/mcp/fails"):
        known = set(server.connections)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(
            _post("application/json", b"{}").replace(b"/mcp/bench", path.encode())
        )
        (request,) = set(server.connections) - known
        requests[path] = (request, transport)
    for _ in range(100):
        if all(t.value().startswith(b"HTTP/1.1 200 OK") for _, t in requests.values()):
            break
        await asyncio.sleep(0.01)
    answered, failed = requests["/mcp/ok"][0], requests["/mcp/fails"][0]
    assert answered in server.connections  # its application is still at work
    await asyncio.sleep(0.2)
    assert answered not in server.connections
    assert failed in server.connections
    assert isinstance(server.connections[failed]["application_instance"].exception(), RuntimeError)


def call_add(gateway: Server, token: str) -> None:
    """A 2026-07-28 call of the legacy upstream's `add`, answered through the gateway."""
    answer = httpx.post(
        f"{gateway.url}/mcp/old",
        headers=modern_headers(token, "add"),
        json=modern_call("add", {"a": 2, "b": 3}),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert '"content":[{"text":"5","type":"text"}]' in answer.text  # an SSE event


@pytest.mark.django_db(transaction=True)
def test_a_stopped_gateway_ends_the_upstream_session_it_kept_for_stateless_agents(
    alice, tmp_path, legacy_upstream: Server
) -> None:
    # A 2026-07-28 agent calls a server that predates that version: the gateway opens a
    # session of its own on the server and keeps it for such calls.
    add_connection("old", legacy_upstream.url)
    token = issue_token("alice")
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


def _log(directory: Path, server: Server) -> str:
    return (directory / f"gateway-{server.port}.log").read_text()


def test_the_gateway_process_serves_on_uvloop(gateway: Server, gateway_data_dir: Path) -> None:
    # The session's gateway, which every end-to-end test uses, started as `make run` starts it.
    assert f"serving on the uvloop {version('uvloop')} event loop" in _log(
        gateway_data_dir, gateway
    )


@pytest.mark.django_db(transaction=True)
def test_gateway_event_loop_asyncio_serves_on_asyncios_own_loop(
    alice, tmp_path, legacy_upstream: Server
) -> None:
    add_connection("old", legacy_upstream.url)
    token = issue_token("alice")
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
        [sys.executable, "-m", "mcpgw.serve", "-e", "tcp:port=0", "mcpgw.asgi:application"],
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
