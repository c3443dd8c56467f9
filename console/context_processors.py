from typing import Any

from django.http import HttpRequest

from .roles import user_roles


def roles(request: HttpRequest) -> dict[str, Any]:
    """The current user's roles, so the navigation shows only what they may open."""
    return {"user_roles": user_roles(getattr(request, "user", None))}
