"""REST API for what the console does with connections and tokens.

Thin views: validate the input, fetch objects through `console.access`, call the action
in `gateway.actions`, serialize the output. Session authentication (with CSRF) for the
browser, `Authorization: Bearer mgw_…` tokens with the `api` scope for scripts.
"""

from datetime import timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils.cache import add_never_cache_headers
from django.utils.timezone import now
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway import actions
from gateway.models import AgentToken, Connection

from .access import (
    connections_for_user,
    get_connection_for_user,
    get_token_for_user,
    has_console_role,
    may_issue_for_others,
    tokens_for_user,
)
from .authentication import ApiTokenAuthentication
from .roles import ADMIN, has_role
from .serializers import (
    ConnectionCreateInput,
    ConnectionOutput,
    ConnectionTestOutput,
    ConnectionUpdateInput,
    TokenCreatedOutput,
    TokenCreateInput,
    TokenListInput,
    TokenOutput,
)
from .views import run_connection_test, with_health


class ApiTokenScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Describes gateway api tokens in the OpenAPI schema."""

    target_class = "console.authentication.ApiTokenAuthentication"
    name = "apiToken"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "A gateway token with the api scope: issue_token --scope api.",
        }


class HasConsoleRole(BasePermission):
    """Any of the roles admin, approver, auditor, viewer (also guards the API docs)."""

    message = "The API needs a role: admin, approver, auditor or viewer."

    def has_permission(self, request: Request, view: Any) -> bool:
        return has_console_role(request.user)


class IsAdmin(BasePermission):
    message = "Changing connections needs the admin role."

    def has_permission(self, request: Request, view: Any) -> bool:
        return has_role(request.user, ADMIN)


class ConsoleAPIView(APIView):
    # The token class first: an unauthenticated request gets 401 with a Bearer challenge.
    authentication_classes = [ApiTokenAuthentication, SessionAuthentication]
    permission_classes = [HasConsoleRole]


def _invalid(exc: DjangoValidationError) -> serializers.ValidationError:
    if hasattr(exc, "error_dict"):
        return serializers.ValidationError(exc.message_dict)
    return serializers.ValidationError({"non_field_errors": exc.messages})


def _connection_output(request: Request, connection: Connection) -> dict[str, Any]:
    annotated = with_health(Connection.objects.filter(pk=connection.pk)).first() or connection
    return ConnectionOutput(annotated, context={"request": request}).data


# -- connections -------------------------------------------------------------------


class ConnectionListView(ConsoleAPIView):
    @extend_schema(
        operation_id="connections_list",
        responses=ConnectionOutput(many=True),
        summary="List connections, with the outcome of the last call through each",
    )
    def get(self, request: Request) -> Response:
        connections = with_health(connections_for_user(request.user))
        return Response(ConnectionOutput(connections, many=True, context={"request": request}).data)

    @extend_schema(
        operation_id="connections_create",
        request=ConnectionCreateInput,
        responses={201: ConnectionOutput},
        summary="Register a connection (admins)",
    )
    def post(self, request: Request) -> Response:
        if not has_role(request.user, ADMIN):
            raise PermissionDenied(IsAdmin.message)
        data = ConnectionCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        try:
            connection, _ = actions.save_connection(
                slug=values["slug"],
                name=values.get("name", ""),
                transport=values["transport"],
                url=values.get("url", ""),
                enabled=values["enabled"],
                headers=values.get("headers"),
                stdio=data.stdio_spec(None, values["transport"]),
                create_only=True,
                actor=request.user,
            )
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        return Response(_connection_output(request, connection), status=status.HTTP_201_CREATED)


class ConnectionDetailView(ConsoleAPIView):
    @extend_schema(operation_id="connections_retrieve", responses=ConnectionOutput)
    def get(self, request: Request, slug: str) -> Response:
        connection = get_connection_for_user(request.user, slug)
        return Response(_connection_output(request, connection))

    @extend_schema(
        operation_id="connections_update",
        request=ConnectionUpdateInput,
        responses=ConnectionOutput,
        summary="Change a connection (admins); fields left out stay as they are",
    )
    def patch(self, request: Request, slug: str) -> Response:
        connection = get_connection_for_user(request.user, slug, write=True)
        data = ConnectionUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        transport = values.get("transport", connection.transport)
        url = values.get("url", connection.url)
        data.check_complete(transport, url, values.get("command", connection.command))
        try:
            connection, _ = actions.save_connection(
                slug=connection.slug,
                name=values.get("name", connection.name),
                transport=values.get("transport"),
                url=url,
                enabled=values.get("enabled", connection.enabled),
                headers=values.get("headers"),
                stdio=data.stdio_spec(connection, transport),
                actor=request.user,
            )
        except DjangoValidationError as exc:
            raise _invalid(exc) from None
        return Response(_connection_output(request, connection))

    @extend_schema(
        operation_id="connections_destroy",
        responses={204: None},
        summary="Delete a connection with its catalog, policy and the tokens limited to it",
    )
    def delete(self, request: Request, slug: str) -> Response:
        connection = get_connection_for_user(request.user, slug, write=True)
        actions.delete_connection(connection, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class ConnectionTestView(ConsoleAPIView):
    @extend_schema(
        operation_id="connections_test",
        request=None,
        responses=ConnectionTestOutput,
        summary="Contact the upstream (discover or initialize) and list its tools (admins)",
    )
    def post(self, request: Request, slug: str) -> Response:
        connection = get_connection_for_user(request.user, slug, write=True)
        result = run_connection_test(connection, actor=request.user)
        return Response(ConnectionTestOutput(result.as_dict()).data)


# -- tokens --------------------------------------------------------------------------


class TokenListView(ConsoleAPIView):
    @extend_schema(
        operation_id="tokens_list",
        parameters=[TokenListInput],
        responses=TokenOutput(many=True),
        summary="Your tokens (everyone's for admins), newest first",
    )
    def get(self, request: Request) -> Response:
        params = TokenListInput(data=request.query_params)
        params.is_valid(raise_exception=True)
        tokens = tokens_for_user(request.user)
        active = params.validated_data["active"]
        if active is True:
            tokens = tokens.active()
        elif active is False:
            tokens = tokens.exclude(pk__in=AgentToken.objects.active().values("pk"))
        tokens = tokens.order_by("-created_at", "-pk")[: params.validated_data["limit"]]
        return Response(TokenOutput(tokens, many=True).data)

    @extend_schema(
        operation_id="tokens_create",
        request=TokenCreateInput,
        responses={201: TokenCreatedOutput},
        summary="Issue a run token; the response holds the token, shown this once",
    )
    def post(self, request: Request) -> Response:
        data = TokenCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        owner = _owner(request, values.get("owner"))
        connection = None
        if values["connection"]:
            found = connections_for_user(request.user).filter(slug=values["connection"])
            connection = found.first()
            if connection is None:
                raise serializers.ValidationError({"connection": ["No such connection."]})
        ttl = _ttl(request, values["ttl_seconds"])
        token, secret = actions.issue_token(
            user=owner,
            connection=connection,
            ttl=ttl,
            run_label=values["run_label"],
            scopes=values["scopes"],
            actor=request.user,
        )
        response = Response(
            {**TokenOutput(token).data, "token": secret}, status=status.HTTP_201_CREATED
        )
        add_never_cache_headers(response)
        return response


def _owner(request: Request, username: str | None) -> Any:
    if not username or username == request.user.get_username():
        return request.user
    if not may_issue_for_others(request.user):
        raise PermissionDenied("Only admins may issue tokens for other people.")
    owner = get_user_model().objects.filter(username=username, is_active=True).first()
    if owner is None:
        raise serializers.ValidationError({"owner": ["No active user of that name."]})
    return owner


def _ttl(request: Request, seconds: int | None) -> timedelta | None:
    """A token issued with an API token never outlives the token that issued it."""
    ttl = timedelta(seconds=seconds) if seconds is not None else None
    parent = request.auth if isinstance(request.auth, AgentToken) else None
    if parent is None or parent.expires_at is None:
        return ttl
    left = parent.expires_at - now()
    if ttl is None or ttl > left:
        raise serializers.ValidationError(
            {
                "ttl_seconds": [
                    "A token issued with an API token cannot outlive it: use at most "
                    f"{max(0, int(left.total_seconds()))} seconds."
                ]
            }
        )
    return ttl


class TokenRevokeView(ConsoleAPIView):
    @extend_schema(
        operation_id="tokens_revoke",
        request=None,
        responses={200: TokenOutput, 404: OpenApiResponse(description="No such token")},
        summary="Revoke a token (your own; any for admins). Revoking twice is harmless",
    )
    def post(self, request: Request, public_id: str) -> Response:
        token = get_token_for_user(request.user, public_id)
        actions.revoke_token(token, actor=request.user)
        token.refresh_from_db()
        return Response(TokenOutput(token).data)
