"""ASGI entry point: /mcp/ goes to the gateway's data path, everything else to Django.

Run in production with:
    python -m mcpgw.serve --host 0.0.0.0 --port 8000
(uvicorn with httptools on uvloop's event loop, `mcpgw/serve.py`; see the README's
"Production").
"""

import asyncio
import gc
import os
import re

from django.conf import settings
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcpgw.settings")
django_asgi_app = get_asgi_application()

from celery import current_app  # noqa: E402
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402
from django.urls import get_resolver  # noqa: E402

import approvals.routing  # noqa: E402
from gateway import channel_transports  # noqa: E402
from gateway.endpoint import mcp_app  # noqa: E402
from mcpgw import periodic, serving  # noqa: E402

# What the first requests and tasks would import (every view, through the URLconf, and the
# apps' Celery tasks) is imported now, so that it is frozen below with the rest.
get_resolver().url_patterns  # noqa: B018 - loading it imports the views
current_app.loader.import_default_modules()
periodic.start()

# What is loaded by now (Django, the apps, the libraries) lives as long as the process.
# Frozen, it is left out of the collector's full collections, which otherwise walk all of
# it with the event loop stopped. Under the benchmark at one client: 70 ms at a time with
# nothing frozen; 13-15 ms with views and tasks imported after the freeze; 5-7 ms with
# those frozen too; 1-2 ms once calls stopped making a Django connection object each
# (`mcpgw.db.backend`).
gc.collect()
gc.freeze()

console_app = ASGIStaticFilesHandler(django_asgi_app)
# Console, API and /healthz requests served at once (see CONSOLE_MAX_CONCURRENT_REQUESTS).
console_slots = asyncio.Semaphore(settings.CONSOLE_MAX_CONCURRENT_REQUESTS)


SSE_PATH = re.compile(r"^/mcp/(?P<slug>[a-z0-9][a-z0-9-]{0,63})/(?P<part>sse|messages)/?$")
WS_MCP_PATH = re.compile(r"^/ws/mcp/(?P<slug>[a-z0-9][a-z0-9-]{0,63})/?$")

# The console's WebSockets check the browser's origin and session; agents' MCP
# WebSockets authenticate every message with their bearer token instead.
console_websockets = AllowedHostsOriginValidator(
    AuthMiddlewareStack(URLRouter(approvals.routing.websocket_urlpatterns))
)


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    path = scope["path"]
    if path.startswith("/mcp/"):
        legacy = SSE_PATH.match(path)
        if legacy and legacy["part"] == "sse" and scope["method"] == "GET":
            await channel_transports.sse_stream(scope, receive, send, legacy["slug"])
        elif legacy and legacy["part"] == "messages" and scope["method"] == "POST":
            await channel_transports.sse_message(scope, receive, send, legacy["slug"])
        else:
            await mcp_app(scope, receive, send)
    else:
        async with console_slots:
            await console_app(scope, receive, send)


async def websocket_app(scope, receive, send):  # type: ignore[no-untyped-def]
    match = WS_MCP_PATH.match(scope["path"])
    if match:
        await channel_transports.websocket_app(scope, receive, send, match["slug"])
    else:
        await console_websockets(scope, receive, send)


application = ProtocolTypeRouter(
    {"http": http_app, "websocket": websocket_app, "lifespan": serving.lifespan}
)
