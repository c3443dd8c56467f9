"""The audit trail's REST API: list (keyset-paged), one record, and the exports."""

from typing import Any
from urllib.parse import urlencode

from django import forms
from django.http import HttpResponseBase
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
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

from .export import CONTENT_TYPES, EXPORT_FIELDS, Exporter, Format, export_response
from .filters import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    AuditFilter,
    AuditFilterForm,
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


# -- schema-only: the query parameters and the shapes the views below answer with --------

FILTER_HELP = {
    "since": "Records created at or after this moment (ISO 8601, UTC unless an offset is given).",
    "until": "Records created before this moment (ISO 8601); must be later than since.",
    "connection": "Connection slug.",
    "user": "Username.",
    "token": "Gateway token by public id, or in its display form mgw_<id>….",
    "run": "Run label.",
    "tool": "Part of the tool name (or other target), case-insensitive.",
    "outcome": "Outcome of a call.",
    "kind": "Kind of record.",
    "method": "MCP method, e.g. tools/call.",
    "session": "MCP session id.",
    "before": "Only records with a lower seq (the cursor that `next` links carry).",
    "limit": f"Page size, at most {MAX_LIMIT}.",
}


def _filter_schema(field: forms.Field) -> dict[str, Any]:
    if isinstance(field, forms.DateTimeField):
        return {"type": "string", "format": "date-time"}
    if isinstance(field, forms.IntegerField):
        schema: dict[str, Any] = {"type": "integer"}
        if field.min_value is not None:
            schema["minimum"] = field.min_value
        if field.max_value is not None:
            schema["maximum"] = field.max_value
            if field.max_value > 2**31 - 1:
                schema["format"] = "int64"
        return schema
    if isinstance(field, forms.ChoiceField):
        return {"type": "string", "enum": [value for value, _ in field.choices if value]}
    schema = {"type": "string"}
    if getattr(field, "max_length", None):
        schema["maxLength"] = field.max_length
    return schema


def _filter_parameter(name: str, field: forms.Field, *, export: bool) -> OpenApiParameter:
    """One of AuditFilterForm's fields as a query parameter, so the two never drift apart."""
    description = FILTER_HELP.get(name, "")
    default = None
    if name == "limit":
        if export:
            description = "Accepted, and ignored: an export is never cut short."
        else:
            default = DEFAULT_LIMIT
    return OpenApiParameter(
        name,
        _filter_schema(field),
        OpenApiParameter.QUERY,
        description=description,
        default=default,
    )


def filter_parameters(*, export: bool = False) -> list[OpenApiParameter]:
    return [
        _filter_parameter(name, field, export=export)
        for name, field in AuditFilterForm.base_fields.items()
    ]


class AuditRecordListOutput(serializers.Serializer[Any]):
    results = AuditRecordOutput(many=True)
    next = serializers.URLField(
        allow_null=True, help_text="The next (older) page with the same filters, or null."
    )


INVALID_FILTERS = OpenApiResponse(description="Unknown or invalid query parameters")


def export_schema(fmt: Format, summary: str, description: str) -> Any:
    return extend_schema(
        operation_id=f"audit_export_{fmt}",
        parameters=[
            *filter_parameters(export=True),
            OpenApiParameter(
                "Content-Disposition",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[200],
                description=f'attachment; filename="audit-<YYYYmmddTHHMMSSZ>.{fmt}"',
            ),
            OpenApiParameter(
                "X-Audit-Checkpoint",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                response=[200],
                description="The latest signed checkpoint as compact JSON, or null.",
            ),
        ],
        responses={
            (200, CONTENT_TYPES[fmt].split(";")[0]): OpenApiResponse(
                response=OpenApiTypes.STR, description=description
            ),
            400: INVALID_FILTERS,
        },
        summary=summary,
    )


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


@extend_schema(
    operation_id="audit_list",
    parameters=filter_parameters(),
    responses={200: AuditRecordListOutput, 400: INVALID_FILTERS},
    summary="Audit records, newest first, a page at a time (admins and auditors)",
)
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


@extend_schema(
    operation_id="audit_retrieve",
    responses={200: AuditRecordOutput, 404: OpenApiResponse(description="No such record")},
    summary="One audit record by its seq (admins and auditors)",
)
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


@export_schema(
    "csv",
    summary="Export the selected records as CSV, oldest first (admins and auditors)",
    description="A header row, then one row per record. JSON values are compact JSON; "
    "a cell that a spreadsheet would run as a formula starts with an apostrophe.",
)
@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanReadAudit])
@renderer_classes([JSONRenderer])
@content_negotiation_class(IgnoreAcceptHeader)
def export_csv(request: Request) -> HttpResponseBase:
    return _export(request, "csv")


@export_schema(
    "jsonl",
    summary="Export the selected records as JSON Lines, oldest first (admins and auditors)",
    description="One record per line, as its hash is computed over, then a last line "
    '{"checkpoint": ..., "public_key": ...} to verify the chain against.',
)
@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanReadAudit])
@renderer_classes([JSONRenderer])
@content_negotiation_class(IgnoreAcceptHeader)
def export_jsonl(request: Request) -> HttpResponseBase:
    return _export(request, "jsonl")
