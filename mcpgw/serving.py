"""What the gateway changes in the HTTP server that serves it (daphne), when it loads.

Form bodies: Twisted, under daphne, looks at every POST's Content-Type to parse form bodies
into `request.args`, which daphne never reads: it hands the body to the application, and
Django and the data path parse it themselves. Twisted's parse of the header goes through the
email package, which makes a new class for each header it parses: about 70 µs of every tool
call, and a dozen objects in reference cycles that only the garbage collector frees (nearly
all it found to free under the benchmark; its collections stop the event loop).

Finished requests: daphne forgets a request (its entry in the server's connections, which
holds the application instance, its scope and its queue) in a sweep once a second. Under
load that keeps a second's worth of requests alive: the collector's middle-generation
collections walk all of them, and each sweep frees hundreds at once, both with the event
loop stopped. The gateway's requests are forgotten as soon as their application instance
has ended without an error; the sweep still handles the rest (errors, which it logs, and
requests whose client went away).

Access log: Twisted also formats a combined-log line for every request and hands it to its
own log, which daphne passes on to the `daphne.server` logger at INFO, below the level it
records. daphne writes the access log that operators read (`--access-log`, or stdout) itself.

Shutdown: daphne stops on SIGTERM or SIGINT by stopping Twisted's reactor, and has no ASGI
lifespan events. Before the reactor stops, the gateway writes the audit records that wait
to share a commit (`audit.writer.flush`), then ends the upstream sessions and server
processes this process opened for itself (`gateway.upstream.close_all`): the session it keeps
per upstream for stateless agents gets its DELETE, as the MCP specification asks of a client
that no longer needs a session. Agents' own sessions are left alone: another process behind
the load balancer may go on serving them.
"""

import asyncio
import logging
import sys
from importlib.metadata import version

from daphne import http_protocol

log = logging.getLogger(__name__)

# How long shutdown waits for upstreams to end their sessions.
SHUTDOWN_SECONDS = 5.0


class WebRequest(http_protocol.WebRequest):
    """daphne's request, without Twisted's parsing of form bodies, and let go of as soon as
    its application instance has ended."""

    def __init__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def finish(self):  # type: ignore[no-untyped-def]
        super().finish()
        details = self.server.connections.get(self)
        instance = details.get("application_instance") if details else None
        if instance is not None:
            instance.add_done_callback(self._release)

    def _release(self, instance: "asyncio.Future[None]") -> None:
        """Forget this request, as daphne's once-a-second sweep (`application_checker`)
        would, if its application ended without an error (an error is left to the sweep,
        which logs it)."""
        details = self.server.connections.get(self)
        if (
            details is None
            or details.get("application_instance") is not instance
            or "disconnected" not in details
            or instance.cancelled()
            or instance.exception() is not None
        ):
            return
        del self.server.connections[self]


class HTTPFactory(http_protocol.HTTPFactory):
    """daphne's factory, making the requests above and without Twisted's access log line."""

    def buildProtocol(self, addr):  # type: ignore[no-untyped-def]
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = WebRequest
        return protocol

    def log(self, request: object) -> None:
        return None


def use_lean_factory() -> None:
    """daphne's server makes its factory from the name it imported (`daphne.server`)."""
    from daphne import server

    if not issubclass(server.HTTPFactory, HTTPFactory):
        server.HTTPFactory = HTTPFactory


def event_loop_name(loop: asyncio.AbstractEventLoop) -> str:
    if type(loop).__module__.partition(".")[0] == "uvloop":
        return f"uvloop {version('uvloop')}"
    return "asyncio"


def log_event_loop() -> None:
    """Say which event loop serves, under daphne (whose loop exists by now; see
    `mcpgw.serve`)."""
    loop = getattr(sys.modules.get("daphne.server"), "twisted_loop", None)
    if loop is not None:
        log.info("serving on the %s event loop", event_loop_name(loop))


def end_upstreams_at_shutdown() -> None:
    """Under daphne (whose asyncio reactor is installed by now), a trigger before the reactor
    stops; elsewhere nothing (importing the reactor would install Twisted's default)."""
    reactor = sys.modules.get("twisted.internet.reactor")
    if reactor is not None and not getattr(reactor, "_gateway_ends_upstreams", False):
        reactor._gateway_ends_upstreams = True
        reactor.addSystemEventTrigger("before", "shutdown", _end_upstreams)


def _end_upstreams():  # type: ignore[no-untyped-def]
    from twisted.internet.defer import Deferred

    from audit import writer
    from gateway import upstream

    async def end() -> None:
        try:
            # Outcome records that wait to share a commit are written first.
            await asyncio.wait_for(writer.flush(), SHUTDOWN_SECONDS)
        except Exception:
            log.warning("writing the last audit records at shutdown failed", exc_info=True)
        try:
            await asyncio.wait_for(upstream.close_all(), SHUTDOWN_SECONDS)
        except Exception:  # shutdown goes on whatever an upstream does
            log.warning("ending upstream sessions at shutdown failed", exc_info=True)

    # The reactor runs on the asyncio loop, so Twisted waits for this before stopping.
    return Deferred.fromFuture(asyncio.ensure_future(end()))
