from django.contrib.auth.decorators import login_required
from django.db import connection as db_connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from gateway.models import AgentToken, Connection


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
