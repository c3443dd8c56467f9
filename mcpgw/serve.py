"""The production server: uvicorn, with httptools' HTTP parser, on uvloop's event loop.

    python -m mcpgw.serve --host 0.0.0.0 --port 8000

Takes uvicorn's arguments (`python -m mcpgw.serve --help`), with the gateway's defaults
in front of them, so that any of them can be given otherwise:

- the application `mcpgw.asgi:application` unless one is named;
- httptools' HTTP parser (C), with a request's head (request line and headers) limited to
  64 KiB (`mcpgw.serving.HttpProtocol`: 431 beyond), and the websockets library for
  WebSockets;
- the event loop GATEWAY_EVENT_LOOP names: uvloop (the default) or asyncio;
- a listen queue of 2048 connections (`--backlog`; uvicorn's default too, kept here
  whatever uvicorn's becomes): a short one drops connections opened in a burst, see the
  README's "Production";
- idle keep-alive connections closed after 75 s (`--timeout-keep-alive`), longer than a
  load balancer's own keep-alive to its upstreams (nginx: 60 s), so that the balancer,
  not the gateway, ends an idle connection and never sends a request down one the
  gateway is closing;
- no proxy headers: the client's address is the peer's. Behind a load balancer, give
  `--proxy-headers --forwarded-allow-ips <its address>` (docker-compose.yml does);
- uvicorn's own log lines (start, stop, the access log on stdout) in the form of the
  gateway's, with their time (`mcpgw/uvicorn_logging.json`);
- at SIGTERM, responses under way get 5 s to end (`--timeout-graceful-shutdown`), then the
  ASGI lifespan's shutdown writes the audit records that wait to share a commit and ends
  the upstream sessions this process opened (`mcpgw.serving`).
"""

import os
import re
import signal
import sys
from pathlib import Path
from types import FrameType

LOOPS = ("uvloop", "asyncio")

DEFAULTS = (
    "--http",
    "mcpgw.serving:HttpProtocol",
    "--ws",
    "websockets-sansio",
    "--lifespan",
    "on",
    "--backlog",
    "2048",
    "--timeout-keep-alive",
    "75",
    "--timeout-graceful-shutdown",
    "5",
    "--no-proxy-headers",
    "--no-server-header",
    "--log-config",
    str(Path(__file__).with_name("uvicorn_logging.json")),
)
APPLICATION = "mcpgw.asgi:application"
APPLICATION_NAME = re.compile(r"^[\w.]+:[\w.]+$")  # module:attribute


def event_loop_setting() -> str:
    """GATEWAY_EVENT_LOOP, checked: uvloop (the default) or asyncio."""
    name = os.environ.get("GATEWAY_EVENT_LOOP", "").strip().lower() or "uvloop"
    if name not in LOOPS:
        raise ValueError(f"GATEWAY_EVENT_LOOP must be one of {', '.join(LOOPS)}, not {name!r}")
    return name


def arguments(given: list[str]) -> list[str]:
    """uvicorn's command line: the gateway's defaults, then what was given (uvicorn takes
    the last of an option given twice), then the application unless one was named."""
    command = [*DEFAULTS, "--loop", event_loop_setting(), *given]
    if not any(APPLICATION_NAME.match(word) for word in given):
        command.append(APPLICATION)
    return command


def _stopped(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main() -> None:
    try:
        command = arguments(sys.argv[1:])
    except ValueError as exc:
        sys.exit(f"mcpgw.serve: {exc}")
    # uvicorn handles SIGTERM and SIGINT while it serves; once its shutdown is complete it
    # raises the signal again for the handler that was there before: this one, so that a
    # stop that went as it should ends with status 0 (and no KeyboardInterrupt traceback).
    signal.signal(signal.SIGTERM, _stopped)
    signal.signal(signal.SIGINT, _stopped)
    import uvicorn.main

    uvicorn.main.main(args=command, prog_name="python -m mcpgw.serve")


if __name__ == "__main__":
    main()
