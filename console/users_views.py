"""Users and roles: who holds which role, and where the role comes from."""

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.paginator import Paginator
from django.db.models import Prefetch, Q
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from . import oidc
from .roles import ADMIN, ROLES, role_required

PAGE_SIZE = 100


@dataclass(frozen=True)
class RoleGrant:
    role: str
    # Where it comes from, in words: "IdP group gw-admins", "assigned locally", "superuser".
    source: str


def _grants(user: Any) -> list[RoleGrant]:
    if user.is_superuser:
        return [RoleGrant(role, "superuser") for role in ROLES]
    held = {group.name for group in user.role_groups}
    grants = []
    for role in ROLES:
        if role not in held:
            continue
        if not oidc.is_idp_managed(user):
            source = "assigned locally"
        elif groups := settings.OIDC_ROLE_MAP.get(role):
            source = f"IdP group {' or '.join(groups)}"
        else:
            source = "IdP, no longer in the role map (removed at next login)"
        grants.append(RoleGrant(role, source))
    return grants


@role_required(ADMIN)
def users(request: HttpRequest) -> HttpResponse:
    role = request.GET.get("role", "")
    people = (
        get_user_model()
        .objects.order_by("username")
        .prefetch_related(
            Prefetch(
                "groups",
                queryset=Group.objects.filter(name__in=ROLES),
                to_attr="role_groups",
            )
        )
    )
    if role in ROLES:
        people = people.filter(Q(groups__name=role) | Q(is_superuser=True)).distinct()
    else:
        role = ""
    page = Paginator(people, PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {"user": user, "idp": oidc.is_idp_managed(user), "grants": _grants(user)} for user in page
    ]
    return render(
        request,
        "console/users.html",
        {
            "rows": rows,
            "page": page,
            "roles": ROLES,
            "role": role,
            "oidc_enabled": oidc.enabled(),
            "provider_name": oidc.provider_name(),
            "role_map": [(name, settings.OIDC_ROLE_MAP.get(name, ())) for name in ROLES],
            "password_login": settings.PASSWORD_LOGIN,
            "groups_claim": settings.OIDC_GROUPS_CLAIM,
        },
    )
