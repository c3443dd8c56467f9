"""Server-sent events: an incremental parser for upstream streams and an encoder."""

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class StreamStalled(Exception):
    """No complete line arrived for the allowed time (bytes trickling in do not count)."""


async def parse_events(
    chunks: AsyncIterator[bytes], line_timeout: float | None = None
) -> AsyncIterator[Event]:
    """Yield events as soon as their terminating blank line arrives (no buffering).

    With `line_timeout`, raise StreamStalled when no complete line (an event line or a
    keep-alive comment) arrived for that long."""
    buffer = b""
    data: list[str] = []
    event_type = ""
    event_id: str | None = None
    retry: int | None = None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + line_timeout if line_timeout else None
    iterator = aiter(chunks)
    while True:
        try:
            if deadline is None:
                chunk = await anext(iterator)
            else:
                chunk = await asyncio.wait_for(anext(iterator), max(deadline - loop.time(), 0))
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise StreamStalled from None
        buffer += chunk
        while True:
            cut = _line_end(buffer)
            if cut is None:
                break
            end, skip = cut
            line = buffer[:end].decode("utf-8", errors="replace")
            buffer = buffer[end + skip :]
            if deadline is not None and line_timeout is not None:
                deadline = loop.time() + line_timeout
            if line == "":
                if data or event_id is not None or retry is not None:
                    yield Event("\n".join(data), event_type or "message", event_id, retry)
                data, event_type, event_id, retry = [], "", None, None
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                event_type = value
            elif field == "id" and "\0" not in value:
                event_id = value
            elif field == "retry" and value.isdigit():
                retry = int(value)


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    """Where the first line ends (\n, \r\n or \r) and how long its terminator is."""
    newline = buffer.find(b"\n")
    carriage = buffer.find(b"\r")
    if carriage == -1 or (newline != -1 and newline < carriage):
        return None if newline == -1 else (newline, 1)
    if carriage + 1 == len(buffer):
        return None  # may be the first half of \r\n
    return carriage, 2 if buffer[carriage + 1] == 0x0A else 1


def encode(event: Event) -> bytes:
    parts = []
    if event.event and event.event != "message":
        parts.append(f"event: {event.event}")
    else:
        parts.append("event: message")
    if event.id is not None:
        parts.append(f"id: {event.id}")
    if event.retry is not None:
        parts.append(f"retry: {event.retry}")
    parts.extend(f"data: {line}" for line in event.data.split("\n"))
    return ("\n".join(parts) + "\n\n").encode()


KEEPALIVE = b": keep-alive\n\n"
