"""The gateway's start and end as the server that serves it sees them: ASGI lifespan events.

Start: the log says which event loop serves (uvloop or asyncio; see `mcpgw.serve`).

Shutdown: uvicorn stops on SIGTERM or SIGINT: it stops accepting connections, lets the
responses under way end (for `--timeout-graceful-shutdown`, then cancels them) and then
sends the lifespan's shutdown event. The gateway then writes the audit records that wait
to share a commit (`audit.writer.flush`), then ends the upstream sessions and server
processes this process opened for itself (`gateway.upstream.close_all`): the session it
keeps per upstream for stateless agents gets its DELETE, as the MCP specification asks of
a client that no longer needs a session. Agents' own sessions are left alone: another
process behind the load balancer may go on serving them.
"""

import asyncio
import logging
from importlib.metadata import version
from typing import Any

log = logging.getLogger(__name__)

# How long shutdown waits for the last audit records, and for upstreams to end their
# sessions.
SHUTDOWN_SECONDS = 5.0


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    if type(loop).__module__.partition(".")[0] == "uvloop":
        return f"uvloop {version('uvloop')}"
    return "asyncio"


async def lifespan(scope: dict[str, Any], receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            log.info("serving on the %s event loop", event_loop_name(asyncio.get_running_loop()))
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await end_process()
            await send({"type": "lifespan.shutdown.complete"})
            return


async def end_process() -> None:
    from audit import writer
    from gateway import upstream

    try:
        # Outcome records that wait to share a commit are written first.
        await asyncio.wait_for(writer.flush(), SHUTDOWN_SECONDS)
    except Exception:
        log.warning("writing the last audit records at shutdown failed", exc_info=True)
    try:
        await asyncio.wait_for(upstream.close_all(), SHUTDOWN_SECONDS)
    except Exception:  # shutdown goes on whatever an upstream does
        log.warning("ending upstream sessions at shutdown failed", exc_info=True)
