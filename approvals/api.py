"""REST API: the approval queue and decisions, and each connection's policy."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.exceptions import APIException, PermissionDenied
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response

from console.authentication import ApiTokenAuthentication
from console.roles import ADMIN, APPROVER, has_role

from . import actions
from .models import (
    MAX_REASON,
    Action,
    Approval,
    Status,
    approvals_for_user,
    get_approval_for_user,
    get_connection_for_policy,
    validate_tool_pattern,
)
from .policy import PolicySpec, RuleSpec

# The token class comes first so that an unauthenticated request gets 401 and a
# `WWW-Authenticate: Bearer` challenge.
AUTHENTICATION = [ApiTokenAuthentication, SessionAuthentication]
MAX_LIST = 500


class Conflict(APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "The request is no longer pending."
    default_code = "conflict"


class CanDecide(BasePermission):
    message = "Deciding held calls needs the approver or admin role."

    def has_permission(self, request: Request, view: Any) -> bool:
        return has_role(request.user, ADMIN, APPROVER)


class IsAdmin(BasePermission):
    message = "Editing policies needs the admin role."

    def has_permission(self, request: Request, view: Any) -> bool:
        return has_role(request.user, ADMIN)


class ApprovalOutput(serializers.ModelSerializer[Approval]):
    connection = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    token = serializers.CharField(source="token_display")
    decided_by = serializers.CharField(source="decider")

    class Meta:
        model = Approval
        fields = [
            "id",
            "status",
            "connection",
            "tool",
            "arguments",
            "arguments_digest",
            "requester",
            "token",
            "run_label",
            "call_id",
            "created_at",
            "hold_until",
            "expires_at",
            "decided_at",
            "decided_by",
            "reason",
            "used_at",
        ]


class ApprovalListInput(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=Status.values, required=False)
    connection = serializers.SlugField(required=False)
    tool = serializers.CharField(required=False, max_length=200)
    limit = serializers.IntegerField(required=False, min_value=1, max_value=MAX_LIST, default=100)


class DecisionInput(serializers.Serializer[Any]):
    reason = serializers.CharField(
        required=False, allow_blank=True, max_length=MAX_REASON, default=""
    )


# -- schema-only: the shapes the views below answer with ---------------------------------


class ApprovalListOutput(serializers.Serializer[Any]):
    results = ApprovalOutput(many=True)


NOT_FOUND = OpenApiResponse(description="No such approval")
DECISION_RESPONSES = {
    200: ApprovalOutput,
    400: OpenApiResponse(description="Invalid reason"),
    403: OpenApiResponse(description="Not an approver, or deciding a call you made yourself"),
    404: NOT_FOUND,
    409: OpenApiResponse(description="Already decided, or expired"),
}


@extend_schema(
    operation_id="approvals_list",
    parameters=[ApprovalListInput],
    responses={200: ApprovalListOutput, 400: OpenApiResponse(description="Invalid filters")},
    summary="Approval requests (held calls), newest first (approvers and admins)",
)
@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanDecide])
def approval_list(request: Request) -> Response:
    params = ApprovalListInput(data=request.query_params)
    params.is_valid(raise_exception=True)
    found = approvals_for_user(request.user)
    if "status" in params.validated_data:
        found = found.filter(status=params.validated_data["status"])
    if "connection" in params.validated_data:
        found = found.filter(connection__slug=params.validated_data["connection"])
    if "tool" in params.validated_data:
        found = found.filter(tool=params.validated_data["tool"])
    found = found.order_by("-created_at", "-pk")[: params.validated_data["limit"]]
    return Response({"results": ApprovalOutput(found, many=True).data})


@extend_schema(
    operation_id="approvals_retrieve",
    responses={200: ApprovalOutput, 404: NOT_FOUND},
    summary="One approval request and its decision (approvers and admins)",
)
@api_view(["GET"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanDecide])
def approval_detail(request: Request, pk: int) -> Response:
    return Response(ApprovalOutput(get_approval_for_user(request.user, pk)).data)


def _decide(request: Request, pk: int, *, approve: bool) -> Response:
    approval = get_approval_for_user(request.user, pk)
    data = DecisionInput(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        decided = actions.decide(
            approval, approve=approve, actor=request.user, reason=data.validated_data["reason"]
        )
    except (actions.SelfApprovalRefused, actions.NotAnApprover) as exc:
        raise PermissionDenied(str(exc)) from None
    except (actions.AlreadyDecided, actions.ApprovalExpired) as exc:
        raise Conflict(str(exc)) from None
    return Response(ApprovalOutput(decided).data)


@extend_schema(
    operation_id="approvals_approve",
    request=DecisionInput,
    responses=DECISION_RESPONSES,
    summary="Approve a pending call, with an optional reason",
)
@api_view(["POST"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanDecide])
def approve(request: Request, pk: int) -> Response:
    return _decide(request, pk, approve=True)


@extend_schema(
    operation_id="approvals_deny",
    request=DecisionInput,
    responses=DECISION_RESPONSES,
    summary="Deny a pending call, with an optional reason",
)
@api_view(["POST"])
@authentication_classes(AUTHENTICATION)
@permission_classes([CanDecide])
def deny(request: Request, pk: int) -> Response:
    return _decide(request, pk, approve=False)


def _tool_pattern(value: str) -> None:
    try:
        validate_tool_pattern(value)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.messages) from None


def _token_id(value: str) -> str:
    """Tokens by public id; their display form `mgw_<id>…` is accepted too."""
    return value.removeprefix("mgw_").removesuffix("…").removesuffix("...")


ACTION_CHOICE_ERROR = {
    "invalid_choice": f'"{{input}}" is not an action: use one of {", ".join(Action.values)}.'
}


# One schema component for every field holding an action (rule actions and the default
# action), rather than one enum per field name with the same choices.
@extend_schema_field(
    {
        "type": "string",
        "enum": Action.values,
        "description": "allow, deny, or hold (the call waits for an approver).",
    },
    component_name="ActionEnum",
)
class ActionField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Action.values, error_messages=ACTION_CHOICE_ERROR, **kwargs)


class RuleInput(serializers.Serializer[Any]):
    tool = serializers.CharField(max_length=200, validators=[_tool_pattern])
    action = ActionField()
    groups = serializers.ListField(
        child=serializers.CharField(max_length=150), required=False, default=list
    )


class GrantsInput(serializers.Serializer[Any]):
    users = serializers.ListField(child=serializers.CharField(max_length=150), default=list)
    groups = serializers.ListField(child=serializers.CharField(max_length=150), default=list)
    tokens = serializers.ListField(child=serializers.CharField(max_length=40), default=list)


class PolicyInput(serializers.Serializer[Any]):
    """A whole policy: PUT replaces rules, default action and grants together."""

    default_action = ActionField()
    rules = RuleInput(many=True, allow_empty=True)
    grants = GrantsInput()

    def to_spec(self) -> PolicySpec:
        data = self.validated_data
        grants = data["grants"]
        return PolicySpec(
            default_action=data["default_action"],
            rules=tuple(
                RuleSpec(r["tool"], r["action"], tuple(dict.fromkeys(r["groups"])))
                for r in data["rules"]
            ),
            grant_users=tuple(dict.fromkeys(grants["users"])),
            grant_groups=tuple(dict.fromkeys(grants["groups"])),
            grant_tokens=tuple(dict.fromkeys(_token_id(t) for t in grants["tokens"])),
        )


def _policy_output(slug: str, spec: PolicySpec) -> dict[str, Any]:
    return {"connection": slug, **spec.as_dict()}


def save_policy(connection: Any, data: Any, actor: Any) -> PolicySpec:
    """Validate a policy document and save it; serializers.ValidationError on bad input."""
    document = PolicyInput(data=data)
    document.is_valid(raise_exception=True)
    try:
        return actions.set_policy(connection, document.to_spec(), actor=actor)
    except actions.InvalidPolicy as exc:
        raise serializers.ValidationError(exc.errors) from None
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.message_dict) from None


# -- schema-only: the policy document as GET and PUT answer with it -----------------------


class PolicyRuleOutput(serializers.Serializer[Any]):
    tool = serializers.CharField()
    action = ActionField()
    groups = serializers.ListField(child=serializers.CharField())


class PolicyGrantsOutput(serializers.Serializer[Any]):
    users = serializers.ListField(child=serializers.CharField())
    groups = serializers.ListField(child=serializers.CharField())
    tokens = serializers.ListField(child=serializers.CharField(), help_text="Tokens by public id.")


class PolicyOutput(serializers.Serializer[Any]):
    connection = serializers.SlugField()
    default_action = ActionField()
    rules = PolicyRuleOutput(many=True)
    grants = PolicyGrantsOutput()


POLICY_NOT_FOUND = OpenApiResponse(description="No such connection")


@extend_schema(
    methods=["GET"],
    operation_id="connections_policy_retrieve",
    responses={200: PolicyOutput, 404: POLICY_NOT_FOUND},
    summary="A connection's policy: default action, rules and grants (admins)",
)
@extend_schema(
    methods=["PUT"],
    operation_id="connections_policy_update",
    request=PolicyInput,
    responses={
        200: PolicyOutput,
        400: OpenApiResponse(description="Invalid policy"),
        404: POLICY_NOT_FOUND,
    },
    summary="Replace a connection's whole policy (admins)",
)
@api_view(["GET", "PUT"])
@authentication_classes(AUTHENTICATION)
@permission_classes([IsAdmin])
def connection_policy(request: Request, slug: str) -> Response:
    connection = get_connection_for_policy(request.user, slug)
    if request.method == "PUT":
        spec = save_policy(connection, request.data, request.user)
    else:
        spec = PolicySpec.of(connection)
    return Response(_policy_output(connection.slug, spec))
