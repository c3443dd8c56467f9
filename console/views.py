from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.db import connection as db_connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from gateway import catalog
from gateway.models import AgentToken, Connection, ToolDefinition

from .access import get_connection_for_user
from .roles import ADMIN, has_role


@login_required
def home(request: HttpRequest) -> HttpResponse:
    tokens = AgentToken.objects.select_related("user", "connection")
    if not request.user.is_superuser:
        tokens = tokens.filter(user=request.user)
    return render(
        request,
        "console/home.html",
        {
            "connections": Connection.objects.all(),
            "tokens": tokens[:50],
            "base_url": request.build_absolute_uri("/").rstrip("/"),
        },
    )


def healthz(request: HttpRequest) -> JsonResponse:
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


@login_required
def connection_tools(request: HttpRequest, slug: str) -> HttpResponse:
    """The tool catalog of a connection: pin state, and what changed since approval."""
    connection = get_connection_for_user(request.user, slug)
    tools = [
        {"row": row, "diff": catalog.diff(row) if row.state == "changed" else ""}
        for row in ToolDefinition.objects.filter(connection=connection)
    ]
    return render(
        request,
        "console/connection_tools.html",
        {"connection": connection, "tools": tools, "can_approve": has_role(request.user, ADMIN)},
    )


@require_POST
@login_required
def approve_tools(request: HttpRequest, slug: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, slug, write=True)
    names = request.POST.getlist("tool") or None
    count = catalog.approve(connection, names=names, actor=request.user)
    messages.success(request, f"Approved {count} tool definition(s) of {connection.slug}.")
    return redirect("connection-tools", slug=connection.slug)
