"""The gateway's HTTP/1.1 client for plain-HTTP upstreams (`gateway.http1`), against
servers on real sockets that answer as scripted: reuse of keep-alive connections, bodies
by length, in chunks and up to the close, streamed bodies as they come, the pool's
limit and wait, timeouts, and upstreams that break the protocol."""

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway import http1

Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter
Handler = Callable[[Reader, Writer], Awaitable[None]]


class Scripted:
    """A TCP server on 127.0.0.1 whose every connection runs `handler`."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await self.handler(reader, writer)
        writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


@contextlib.asynccontextmanager
async def scripted(handler: Callable[[Scripted], Handler]) -> AsyncIterator[Scripted]:
    server = Scripted(lambda r, w: handler(server)(r, w))
    server.server = await asyncio.start_server(server._serve, "127.0.0.1", 0)
    try:
        yield server
    finally:
        server.server.close()


def script(
    handle: Callable[[Scripted, Reader, Writer], Awaitable[None]],
) -> Callable[[Scripted], Handler]:
    """A server's script, written as one function of the server and the connection."""
    return lambda server: lambda reader, writer: handle(server, reader, writer)


def pool(url: str, **options: float | int | bool | None) -> http1.Pool:
    settings: dict = {
        "limit": 10,
        "keep_alive": True,
        "wait_timeout": 5.0,
        "connect_timeout": 2.0,
        "read_timeout": 5.0,
    }
    settings.update(options)
    return http1.Pool(url, **settings)


def answering(*answers: bytes) -> Callable[[Scripted], Handler]:
    """Answer each request on a connection with the next of `answers`, then wait."""

    @script
    async def make(server: Scripted, reader: Reader, writer: Writer) -> None:
        for answer in answers:
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()
        await reader.read()

    return make


def json_answer(body: bytes, extra: bytes = b"") -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


HEADERS = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


async def fetch(client: http1.Pool) -> bytes:
    """POST a call and read its whole answer."""
    answer = await client.request("POST", HEADERS, b"{}")
    try:
        return await answer.read()
    finally:
        answer.release()


async def test_calls_share_one_keep_alive_connection_and_send_what_was_asked():
    async with scripted(answering(json_answer(b'{"a":1}'), json_answer(b'{"b":2}'))) as server:
        client = pool(server.url)
        first = await client.request("POST", HEADERS, b'{"id":1}')
        assert (first.status, await first.read()) == (200, b'{"a":1}')
        assert first.headers["content-type"] == "application/json"
        first.release()
        second = await client.request("POST", {**HEADERS, "mcp-session-id": "s1"}, b'{"id":2}')
        assert await second.read() == b'{"b":2}'
        second.release()
        client.close()
        port = server.url.split(":")[2].split("/")[0]
    assert server.connections == 1
    request = server.requests[1].decode()
    assert request.startswith("POST /mcp HTTP/1.1\r\n")
    assert f"\r\nhost: 127.0.0.1:{port}\r\n" in request
    assert "\r\nmcp-session-id: s1\r\n" in request
    assert request.endswith('content-length: 8\r\n\r\n{"id":2}')


async def test_chunked_and_until_close_bodies_are_read_whole():
    chunked = (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n"
    )
    async with scripted(answering(chunked, json_answer(b"x"))) as server:
        client = pool(server.url)
        assert await fetch(client) == b"abcdefg"
        assert await fetch(client) == b"x"
    assert server.connections == 1

    @script
    async def until_close(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nto the")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b" end")

    async with scripted(until_close) as server:
        client = pool(server.url)
        assert await fetch(client) == b"to the end"
        # Such a connection is never reused.
        assert await fetch(client) == b"to the end"
    assert server.connections == 2


async def test_a_streamed_body_is_handed_over_as_it_comes():
    second_sent = asyncio.Event()

    @script
    async def stream(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        writer.write(b"data: one\n\n")
        await writer.drain()
        await asyncio.sleep(0.3)
        second_sent.set()
        writer.write(b"data: two\n\n")

    async with scripted(stream) as server:
        client = pool(server.url)
        answer = await client.request("GET", {"accept": "text/event-stream"})
        assert answer.headers["content-type"] == "text/event-stream"
        parts = []
        async for chunk in answer.content.iter_any():
            if not parts:
                assert not second_sent.is_set()  # the first event came before the second
            parts.append(chunk)
        assert b"".join(parts) == b"data: one\n\ndata: two\n\n"
        answer.release()
    assert "content-length" not in server.requests[0].decode().lower()


async def test_the_pool_limit_makes_calls_wait_and_a_long_wait_fails():
    release_first = asyncio.Event()

    @script
    async def slow_first(server: Scripted, reader: Reader, writer: Writer) -> None:
        while True:
            await server.read_request(reader)
            if len(server.requests) == 1:
                await release_first.wait()
            writer.write(json_answer(str(len(server.requests)).encode()))
            await writer.drain()

    async with scripted(slow_first) as server:
        client = pool(server.url, limit=1, wait_timeout=0.5)
        first = asyncio.ensure_future(client.request("POST", HEADERS, b"{}"))
        await asyncio.sleep(0.1)
        with pytest.raises(http1.PoolTimeout):
            await client.request("POST", HEADERS, b"{}")
        # A waiting call whose caller goes away leaves the line.
        client.wait_timeout = 5.0
        gone = asyncio.ensure_future(client.request("POST", HEADERS, b"{}"))
        await asyncio.sleep(0.05)
        gone.cancel()
        # A waiting call gets the connection when the one before it is done with it.
        second = asyncio.ensure_future(client.request("POST", HEADERS, b"{}"))
        await asyncio.sleep(0.1)
        assert not second.done()
        release_first.set()
        answer = await first
        assert await answer.read() == b"1"
        answer.release()
        answer = await second
        assert await answer.read() == b"2"
        answer.release()
        assert (client._busy, len(client._waiters)) == (0, 0)
    assert server.connections == 1


async def test_many_calls_take_turns_on_the_pool_in_the_order_they_came():
    @script
    async def steady(server: Scripted, reader: Reader, writer: Writer) -> None:
        while True:
            body = await server.read_request(reader)
            await asyncio.sleep(0.01)
            writer.write(json_answer(body))
            await writer.drain()

    async with scripted(steady) as server:
        client = pool(server.url, limit=2)
        finished: list[int] = []

        async def call(n: int) -> None:
            answer = await client.request("POST", HEADERS, str(n).encode())
            assert await answer.read() == str(n).encode()
            answer.release()
            finished.append(n)

        calls = []
        for n in range(30):
            calls.append(asyncio.ensure_future(call(n)))
            await asyncio.sleep(0)  # each call asks for its place before the next
        await asyncio.gather(*calls)
        assert finished == list(range(30))
        assert (client._busy, len(client._waiters)) == (0, 0)
    assert server.connections == 2


async def test_an_answer_released_before_its_end_closes_its_connection():
    @script
    async def partial_then_whole(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        if server.connections == 1:
            # Half of the body, then nothing: the connection cannot serve another call.
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcde")
            await writer.drain()
            await reader.read()
        else:
            while True:
                writer.write(json_answer(b"whole"))
                await writer.drain()
                await server.read_request(reader)

    async with scripted(partial_then_whole) as server:
        client = pool(server.url)
        answer = await client.request("POST", HEADERS, b"{}")
        answer.release()
        assert await fetch(client) == b"whole"
        # An answer read to its end leaves its connection for the next call.
        last = await client.request("POST", HEADERS, b"{}")
        last.release()
    assert server.connections == 2


async def test_a_connection_the_upstream_closed_while_idle_is_not_used_again():
    @script
    async def one_per_connection(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(json_answer(b"ok"))
        await writer.drain()

    async with scripted(one_per_connection) as server:
        client = pool(server.url)
        for _ in range(3):
            assert await fetch(client) == b"ok"
            await asyncio.sleep(0.1)  # the server closes; the client sees it
    assert server.connections == 3


async def test_silence_and_a_stalled_body_time_out():
    @script
    async def silent(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        await reader.read()

    async with scripted(silent) as server:
        client = pool(server.url, read_timeout=0.3)
        with pytest.raises(http1.ReadTimeout):
            await client.request("POST", HEADERS, b"{}")

    @script
    async def stalled(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await writer.drain()
        await reader.read()

    async with scripted(stalled) as server:
        client = pool(server.url, read_timeout=0.3)
        answer = await client.request("POST", HEADERS, b"{}")
        with pytest.raises(http1.ReadTimeout):
            await answer.read()
        answer.release()


async def test_an_answer_cut_short_or_not_http_is_an_error():
    @script
    async def cut(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    async with scripted(cut) as server:
        answer = await pool(server.url).request("POST", HEADERS, b"{}")
        with pytest.raises(http1.Disconnected):
            await answer.read()

    async with scripted(answering(b"SSH-2.0-OpenSSH_9.2\r\n")) as server:
        with pytest.raises(http1.BadAnswer, match="not valid HTTP"):
            await pool(server.url).request("POST", HEADERS, b"{}")

    huge_head = b"HTTP/1.1 200 OK\r\n" + b"x-filler: " + b"a" * 100_000 + b"\r\n\r\n"
    async with scripted(answering(huge_head)) as server:
        with pytest.raises(http1.BadAnswer, match="head over 65536 bytes"):
            await pool(server.url).request("POST", HEADERS, b"{}")

    @script
    async def hang_up(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)

    async with scripted(hang_up) as server:
        with pytest.raises(http1.Disconnected, match="unanswered"):
            await pool(server.url).request("POST", HEADERS, b"{}")


async def test_an_interim_answer_is_skipped():
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + json_answer(b"done")
    async with scripted(answering(interim)) as server:
        answer = await pool(server.url).request("POST", HEADERS, b"{}")
        assert (answer.status, await answer.read()) == (200, b"done")


async def test_connect_failures_name_the_cause():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there
    with pytest.raises(http1.ConnectFailed) as refused:
        await pool(f"http://127.0.0.1:{port}/mcp").request("POST", HEADERS, b"{}")
    assert str(refused.value) == f"cannot connect to 127.0.0.1:{port} (connection refused)"
    with pytest.raises(http1.ConnectFailed) as unknown:
        await pool("http://mcp.no-such-host.invalid/mcp").request("POST", HEADERS, b"{}")
    assert str(unknown.value) == "the host name mcp.no-such-host.invalid does not resolve"


async def test_a_header_with_a_line_break_is_never_sent():
    async with scripted(answering(json_answer(b"x"))) as server:
        client = pool(server.url)
        with pytest.raises(http1.BadRequest, match="line break"):
            await client.request("POST", {**HEADERS, "mcp-method": "a\r\nx-injected: 1"}, b"{}")
        assert await fetch(client) == b"x"
    assert len(server.requests) == 1 and b"x-injected" not in server.requests[0]


async def test_a_slow_reader_of_a_stream_holds_a_bounded_buffer():
    @script
    async def firehose(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        for _ in range(400):  # 8 MB in all
            writer.write(b"data: " + b"z" * 20_000 + b"\n\n")
            await writer.drain()

    async with scripted(firehose) as server:
        answer = await pool(server.url).request("GET", {"accept": "text/event-stream"})
        total = 0
        most = 0
        async for chunk in answer.content.iter_any():
            total += len(chunk)
            most = max(most, answer._buffered)
            await asyncio.sleep(0.001)
        answer.release()
    assert total == 400 * 20_008
    # Reading stops past the limit; what one read of the socket brings may come on top.
    assert most <= http1.STREAM_BUFFER + 512 * 1024, most


async def test_an_answer_whole_in_the_buffer_leaves_its_connection_reading():
    # 300 KB come in reads that pass the stream buffer's limit, and the last of them ends
    # the answer: the connection must not go back to the pool with its reading stopped.
    big = json_answer(b"x" * 300_000)
    async with scripted(answering(big, json_answer(b"next"))) as server:
        client = pool(server.url, read_timeout=2.0)
        answer = await client.request("POST", HEADERS, b"{}")
        await asyncio.sleep(0.2)  # the whole answer arrives; nobody reads it
        answer.release()
        assert await fetch(client) == b"next"


async def test_a_large_body_to_an_upstream_that_stops_reading_times_out():
    @script
    async def never_reads(server: Scripted, reader: Reader, writer: Writer) -> None:
        await asyncio.sleep(30)

    async with scripted(never_reads) as server:
        client = pool(server.url, read_timeout=0.5)
        with pytest.raises(http1.ReadTimeout):
            await asyncio.wait_for(client.request("POST", HEADERS, b"x" * 8_000_000), timeout=10)


async def test_header_values_beyond_ascii_go_as_utf8_and_nul_is_refused():
    async with scripted(answering(json_answer(b"ok"))) as server:
        client = pool(server.url)
        with pytest.raises(http1.BadRequest):
            await client.request("POST", {"authorization": "Bearer a\0b"}, b"{}")
        answer = await client.request("POST", {"authorization": "Bearer café"}, b"{}")
        answer.release()
    assert "authorization: Bearer café\r\n".encode() in server.requests[0]


async def test_no_body_answers_connection_close_and_switching_protocols():
    no_content = b"HTTP/1.1 204 No Content\r\n\r\n"
    closing = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"
    async with scripted(answering(no_content, closing)) as server:
        client = pool(server.url)
        answer = await client.request("POST", HEADERS, b"{}")
        assert (answer.status, await answer.read()) == (204, b"")
        answer.release()
        answer = await client.request("POST", HEADERS, b"{}")  # the same connection
        assert await answer.read() == b"ok"
        answer.release()
        assert client._idle == []  # the upstream said it closes this one
    assert server.connections == 1

    upgrade = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n"
    )
    async with scripted(answering(upgrade)) as server:
        with pytest.raises(http1.BadAnswer, match="switched protocols"):
            await pool(server.url).request("POST", HEADERS, b"{}")


async def test_closing_the_pool_ends_the_answers_under_way():
    ended = asyncio.Event()

    @script
    async def endless(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the client closes
        ended.set()

    async with scripted(endless) as server:
        client = pool(server.url, keep_alive=False, limit=None)
        answer = await client.request("GET", {"accept": "text/event-stream"})
        client.close()
        with pytest.raises(http1.Disconnected):
            async for _chunk in answer.content.iter_any():
                pass
        await asyncio.wait_for(ended.wait(), 5)


async def test_idle_connections_close_after_the_keep_alive_time(monkeypatch):
    monkeypatch.setattr(http1, "KEEP_ALIVE", 0.3)
    closed = asyncio.Event()

    @script
    async def keeps_open(server: Scripted, reader: Reader, writer: Writer) -> None:
        await server.read_request(reader)
        writer.write(json_answer(b"ok"))
        await writer.drain()
        await reader.read()  # until the client closes
        closed.set()

    async with scripted(keeps_open) as server:
        client = pool(server.url)
        answer = await client.request("POST", HEADERS, b"{}")
        await answer.read()
        answer.release()
        assert len(client._idle) == 1
        await asyncio.wait_for(closed.wait(), 5)
        assert client._idle == []


def test_urls_with_credentials_or_tls_stay_with_aiohttp():
    from gateway.upstream import _plain

    assert _plain("http://127.0.0.1:8080/mcp")
    assert _plain("http://mcp.internal/mcp")
    assert not _plain("https://mcp.example/mcp")
    assert not _plain("http://user:secret@127.0.0.1:8080/mcp")
