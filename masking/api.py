"""/api/masking-rules/: the same rules and validation as the console."""

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.authentication import SessionAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from console.authentication import ApiTokenAuthentication
from console.roles import ADMIN, has_role
from gateway.models import Connection

from . import actions
from .models import MaskingRule


class IsAdmin(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        return has_role(request.user, ADMIN)


class RuleSerializer(serializers.ModelSerializer):
    connection = serializers.SlugRelatedField(
        slug_field="slug", queryset=Connection.objects.all(), required=False, allow_null=True
    )

    class Meta:
        model = MaskingRule
        fields = [
            "id",
            "name",
            "entity",
            "kind",
            "detector",
            "pattern",
            "words",
            "style",
            "scope",
            "connection",
            "tool",
            "mask_for_agent",
            "enabled",
            "order",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]


def _save(serializer: RuleSerializer, rule: MaskingRule, actor: Any) -> MaskingRule:
    for field, value in serializer.validated_data.items():
        setattr(rule, field, value)
    try:
        return actions.save_rule(rule, actor=actor)
    except DjangoValidationError as exc:
        raise serializers.ValidationError(exc.message_dict) from None


class Base(APIView):
    authentication_classes = [SessionAuthentication, ApiTokenAuthentication]
    permission_classes = [IsAdmin]


NOT_FOUND = OpenApiResponse(description="No such rule")
INVALID_RULE = OpenApiResponse(description="Invalid rule")


class RuleListView(Base):
    @extend_schema(
        operation_id="masking_rules_list",
        responses=RuleSerializer(many=True),
        summary="Masking rules in evaluation order (admins)",
    )
    def get(self, request: Request) -> Response:
        rules = MaskingRule.objects.select_related("connection").in_evaluation_order()
        return Response(RuleSerializer(rules, many=True).data)

    @extend_schema(
        operation_id="masking_rules_create",
        request=RuleSerializer,
        responses={201: RuleSerializer, 400: INVALID_RULE},
        summary="Add a masking rule (admins)",
    )
    def post(self, request: Request) -> Response:
        serializer = RuleSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        rule = _save(serializer, MaskingRule(), request.user)
        return Response(RuleSerializer(rule).data, status=status.HTTP_201_CREATED)


class RuleDetailView(Base):
    @extend_schema(
        operation_id="masking_rules_retrieve",
        responses={200: RuleSerializer, 404: NOT_FOUND},
        summary="One masking rule (admins)",
    )
    def get(self, request: Request, pk: int) -> Response:
        return Response(RuleSerializer(get_object_or_404(MaskingRule, pk=pk)).data)

    @extend_schema(
        operation_id="masking_rules_update",
        request=RuleSerializer,
        responses={200: RuleSerializer, 400: INVALID_RULE, 404: NOT_FOUND},
        summary="Change a masking rule (admins); fields left out stay as they are",
    )
    def patch(self, request: Request, pk: int) -> Response:
        rule = get_object_or_404(MaskingRule, pk=pk)
        serializer = RuleSerializer(rule, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        return Response(RuleSerializer(_save(serializer, rule, request.user)).data)

    @extend_schema(
        operation_id="masking_rules_destroy",
        responses={204: None, 404: NOT_FOUND},
        summary="Delete a masking rule (admins)",
    )
    def delete(self, request: Request, pk: int) -> Response:
        actions.delete_rule(get_object_or_404(MaskingRule, pk=pk), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
