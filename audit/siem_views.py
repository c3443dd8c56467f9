from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from console.roles import ADMIN, AUDITOR, role_required

from .models import AuditHead, SiemSink


@role_required(ADMIN, AUDITOR)
def sinks(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "audit/sinks.html",
        {
            "sinks": SiemSink.objects.all(),
            "head": AuditHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0,
        },
    )
