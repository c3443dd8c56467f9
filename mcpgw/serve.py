"""The production server: daphne, on uvloop's event loop.

    python -m mcpgw.serve -e tcp:port=8000:interface=0.0.0.0:backlog=2048 mcpgw.asgi:application

Takes daphne's arguments unchanged. daphne makes its event loop (on which Twisted's reactor,
the application, aiohttp's upstream connections and psycopg's audit connection all run)
when its server module is imported, with asyncio's loop policy of that moment; this sets
uvloop's first, then runs daphne's command line. uvloop's loop is written in C where
asyncio's runs every turn of the loop, its timers and its socket transports in Python:
a tool call costs about 9% fewer instructions on it (see the README's "Performance").

GATEWAY_EVENT_LOOP=asyncio serves on asyncio's own loop instead (for comparison, or where
uvloop is not available).
"""

import asyncio
import os
import sys

LOOPS = ("uvloop", "asyncio")


def event_loop_setting() -> str:
    """GATEWAY_EVENT_LOOP, checked: uvloop (the default) or asyncio."""
    name = os.environ.get("GATEWAY_EVENT_LOOP", "").strip().lower() or "uvloop"
    if name not in LOOPS:
        raise ValueError(f"GATEWAY_EVENT_LOOP must be one of {', '.join(LOOPS)}, not {name!r}")
    return name


def use_event_loop() -> None:
    """Make the event loops made from now on the configured kind.

    Must run before daphne's server module is imported."""
    if "daphne.server" in sys.modules:
        raise RuntimeError("daphne's event loop exists already: choose the loop before it")
    name = event_loop_setting()
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    try:
        use_event_loop()
    except ValueError as exc:
        sys.exit(f"mcpgw.serve: {exc}")
    from daphne.cli import CommandLineInterface

    sys.argv[0] = "daphne"
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
