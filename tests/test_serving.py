"""What the gateway turns off in daphne (`mcpgw/serving.py`), driven through daphne's own
HTTP protocol with an in-memory transport."""

import gc
from email.headerregistry import ContentTypeHeader
from types import SimpleNamespace

from daphne.http_protocol import HTTPFactory
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mcpgw import serving


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


def test_post_bodies_reach_the_application_whole_without_twisted_parsing_them() -> None:
    serving.skip_form_parsing()
    serving.skip_form_parsing()  # idempotent: asgi.py may be loaded again in one process
    scopes: list[dict] = []
    queue = _ApplicationQueue()

    def create_application(protocol: object, scope: dict) -> _ApplicationQueue:
        scopes.append(scope)
        return queue

    server = SimpleNamespace(
        protocol_connected=lambda request: None,
        protocol_disconnected=lambda request: None,
        create_application=create_application,
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
    gc.collect()
    gc.disable()  # the header classes Twisted used to make would linger until collected
    try:
        classes_before = len(ContentTypeHeader.__subclasses__())
        for content_type, body in requests:
            protocol = HTTPFactory(server).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(_post(content_type, body))
        classes_after = len(ContentTypeHeader.__subclasses__())
    finally:
        gc.enable()

    assert [s["method"] for s in scopes] == ["POST"] * len(requests)
    bodies = [m["body"] for m in queue.messages if m["type"] == "http.request"]
    assert bodies == [body for _, body in requests]
    # Twisted parsed each POST's Content-Type with the email package, which makes a class
    # per header parsed (and reference cycles only the collector frees).
    assert classes_after == classes_before
