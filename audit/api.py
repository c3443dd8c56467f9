"""The audit trail's REST API: list (keyset-paged), one record, and the exports."""

from typing import Any
from urllib.parse import urlencode

from django.http import HttpResponseBase
from django.urls import reverse
from rest_framework import serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import (
    api_view,
    authentication_classes,
    content_negotiation_class,
    permission_classes,
    renderer_classes,
)
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from console.authentication import ApiTokenAuthentication
from gateway.models import AgentToken

from .export import EXPORT_FIELDS, Exporter, Format, export_response
from .filters import (
    AuditFilter,
    InvalidFilters,
    can_read_audit,
    get_record_for_user,
    page,
    parse_filters,
    records_visible_to,
)
from .models import AuditRecord

# The token class comes first so that an unauthenticated request gets 401 and a
# `WWW-Authenticate: Bearer` challenge.
AUTHENTICATION = [ApiTokenAuthentication, SessionAuthentication]


class CanReadAudit(BasePermission):
    message = "Reading the audit trail needs the admin or auditor role."

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_read_audit(request.user)


class IgnoreAcceptHeader(BaseContentNegotiation):
    """Exports answer in their own format whatever the client accepts; errors in JSON."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        return renderers[0], renderers[0].media_type


class AuditRecordOutput(serializers.ModelSerializer[AuditRecord]):
    class Meta:
        model = AuditRecord
        fields = EXPORT_FIELDS


def filters_from(request: Request) -> AuditFilter:
    try:
        # `format` is DRF's own parameter for choosing a renderer.
        return parse_filters(request.query_params, also_allowed=("format",))
    except InvalidFilters as exc:
        errors = {
            api_settings.NON_FIELD_ERRORS_KEY if field == "__all__" else field: messages
            for field, messages in exc.errors.items()
        }
        raise serializers.ValidationError(errors) from None


@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanReadAudit])
def record_list(request: Request) -> Response:
    filters = filters_from(request)
    found = page(records_visible_to(request.user), filters)
    next_url = None
    if found.next_before is not None:
        params = {**filters.as_params(), "before": str(found.next_before)}
        next_url = request.build_absolute_uri(f"{reverse('audit-api:list')}?{urlencode(params)}")
    return Response({"results": AuditRecordOutput(found.records, many=True).data, "next": next_url})


@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanReadAudit])
def record_detail(request: Request, seq: int) -> Response:
    return Response(AuditRecordOutput(get_record_for_user(request.user, seq)).data)


def _export(request: Request, fmt: Format) -> HttpResponseBase:
    filters = filters_from(request)
    records = records_visible_to(request.user)
    token = request.auth if isinstance(request.auth, AgentToken) else None
    exporter = Exporter(
        user_id=request.user.pk,
        username=request.user.get_username(),
        token=token.display if token else "",
        run_label=token.run_label if token else "",
        client_address=request.META.get("REMOTE_ADDR", "")[:64],
        user_agent=request.headers.get("User-Agent", "")[:500],
    )
    # An ASGIRequest has a scope; the test client and WSGI servers get a plain iterator.
    serve_async = getattr(request, "scope", None) is not None
    return export_response(records, filters, fmt, exporter, serve_async=serve_async)


@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanReadAudit])
@renderer_classes([JSONRenderer])
@content_negotiation_class(IgnoreAcceptHeader)
def export_csv(request: Request) -> HttpResponseBase:
    return _export(request, "csv")


@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanReadAudit])
@renderer_classes([JSONRenderer])
@content_negotiation_class(IgnoreAcceptHeader)
def export_jsonl(request: Request) -> HttpResponseBase:
    return _export(request, "jsonl")
