"""ASGI entry point: /mcp/ goes to the gateway's data path, everything else to Django.

Run in production with: daphne -b 0.0.0.0 -p 8000 mcpgw.asgi:application
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mcpgw.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

import approvals.routing  # noqa: E402
from gateway.endpoint import mcp_app  # noqa: E402
from mcpgw import periodic  # noqa: E402

periodic.start()

console_app = ASGIStaticFilesHandler(django_asgi_app)


async def http_app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["path"].startswith("/mcp/"):
        await mcp_app(scope, receive, send)
    else:
        await console_app(scope, receive, send)


application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(approvals.routing.websocket_urlpatterns))
        ),
    }
)
