from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_GET

from .jwt import configured_issuer
from .jwt import enabled as oidc_enabled
from .models import Connection


@require_GET
def protected_resource_metadata(request: HttpRequest, slug: str) -> JsonResponse:
    """RFC 9728 metadata for /mcp/<slug>: how an agent obtains a token for it."""
    connection = Connection.objects.filter(slug=slug).first()
    if connection is None:
        return JsonResponse({"error": "not_found"}, status=404)
    base = settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/")
    response = JsonResponse(
        {
            "resource": f"{base}/mcp/{slug}",
            "resource_name": connection.name,
            "bearer_methods_supported": ["header"],
            # Gateway-issued tokens come from the console or `manage.py issue_token`;
            # with OpenID Connect configured, agents may also bring the provider's tokens.
            "authorization_servers": [configured_issuer()] if oidc_enabled() else [],
        }
    )
    response["Access-Control-Allow-Origin"] = "*"
    return response
