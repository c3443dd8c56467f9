"""Policy (rules, default action, grants) and held calls (approvals) of each connection."""

import fnmatch
import json
import re
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import models
from django.shortcuts import get_object_or_404
from django.utils.timezone import now

from audit.canonical import canonical, sha256_hex, storable
from console.roles import ADMIN, APPROVER, has_role
from gateway.models import AgentToken, Connection

MAX_TOOL_PATTERN = 200
MAX_REASON = 1000
GLOB_CHARACTERS = frozenset("*?[")
# MCP tool names are letters, digits, "_", "-", "." and "/"; patterns add "*", "?" and
# character classes such as [abc] or [!abc].
_PATTERN_CHARACTERS = re.compile(r"^[A-Za-z0-9_\-./*?\[\]!]+$")


class Action(models.TextChoices):
    ALLOW = "allow"
    DENY = "deny"
    HOLD = "hold", "hold (needs approval)"


def is_glob(pattern: str) -> bool:
    return any(char in GLOB_CHARACTERS for char in pattern)


def tool_matches(pattern: str, tool: str) -> bool:
    """Exact names compare equal; globs match case-sensitively, as tool names are."""
    if is_glob(pattern):
        return fnmatch.fnmatchcase(tool, pattern)
    return pattern == tool


def validate_tool_pattern(pattern: str) -> None:
    """An exact tool name or a glob: `*` any run of characters, `?` one, `[abc]`/`[!abc]`."""
    if not pattern:
        raise ValidationError("Give a tool name or a glob such as delete_*.")
    if len(pattern) > MAX_TOOL_PATTERN:
        raise ValidationError(f"Keep tool patterns to {MAX_TOOL_PATTERN} characters.")
    if not _PATTERN_CHARACTERS.match(pattern):
        raise ValidationError(
            f"{pattern!r}: use letters, digits, _ - . / and the glob characters * ? [ ] !."
        )
    depth = 0
    for index, char in enumerate(pattern):
        if char == "[":
            if depth:
                raise ValidationError(f"{pattern!r}: character classes cannot be nested.")
            if pattern[index + 1 : index + 2] == "]" or pattern[index + 1 : index + 3] == "!]":
                raise ValidationError(f"{pattern!r}: a character class cannot be empty.")
            depth = 1
        elif char == "]":
            if not depth:
                raise ValidationError(f"{pattern!r}: ']' without an opening '['.")
            depth = 0
        elif char == "!" and not (depth and pattern[index - 1] == "["):
            raise ValidationError(f"{pattern!r}: '!' only negates a class, as in [!abc].")
    if depth:
        raise ValidationError(f"{pattern!r}: '[' without a closing ']'.")


class ConnectionPolicy(models.Model):
    """A connection's default action, and whether grants restrict who may use it.

    Connections without a row behave as default_action=allow, restricted=False.
    """

    connection = models.OneToOneField(
        Connection, primary_key=True, on_delete=models.CASCADE, related_name="policy"
    )
    default_action = models.CharField(max_length=8, choices=Action.choices, default=Action.ALLOW)
    # True once an admin saved a non-empty grant list. Grants that disappear later (a user
    # or group deleted) then leave the connection closed, not open to everyone.
    restricted = models.BooleanField(default=False)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        verbose_name_plural = "connection policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(default_action__in=Action.values),
                name="policy_default_action_valid",
            )
        ]

    def __str__(self) -> str:
        return f"policy of {self.connection_id}"


class PolicyRuleQuerySet(models.QuerySet["PolicyRule"]):
    def in_order(self) -> "PolicyRuleQuerySet":
        return self.order_by("position", "id")


class PolicyRule(models.Model):
    """One rule: calls to tools matching `tool` get `action`, for everyone or some groups."""

    connection = models.ForeignKey(
        Connection, on_delete=models.CASCADE, related_name="policy_rules"
    )
    position = models.PositiveIntegerField()
    tool = models.CharField(max_length=MAX_TOOL_PATTERN, validators=[validate_tool_pattern])
    action = models.CharField(max_length=8, choices=Action.choices)
    # Empty: the rule applies to everyone. Otherwise to members of any of these groups.
    groups = models.ManyToManyField(Group, blank=True, related_name="+")
    created_at = models.DateTimeField(default=now)

    objects = PolicyRuleQuerySet.as_manager()

    class Meta:
        ordering = ["connection", "position"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "position"], name="policy_rule_position_unique"
            ),
            models.CheckConstraint(
                condition=models.Q(action__in=Action.values), name="policy_rule_action_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.position}. {self.tool} -> {self.action}"

    @property
    def is_exact(self) -> bool:
        return not is_glob(self.tool)

    def matches(self, tool: str) -> bool:
        return tool_matches(self.tool, tool)


class GrantQuerySet(models.QuerySet["Grant"]):
    def for_caller(self, user_id: int, token_id: int) -> "GrantQuerySet":
        return self.filter(
            models.Q(user_id=user_id)
            | models.Q(token_id=token_id)
            | models.Q(group__user__id=user_id)
        )


class Grant(models.Model):
    """Who may use a connection at all: one user, one group, or one agent token."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="grants")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    token = models.ForeignKey(
        AgentToken, null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    created_at = models.DateTimeField(default=now)

    objects = GrantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(user__isnull=False, group__isnull=True, token__isnull=True)
                | models.Q(user__isnull=True, group__isnull=False, token__isnull=True)
                | models.Q(user__isnull=True, group__isnull=True, token__isnull=False),
                name="grant_names_exactly_one_grantee",
            ),
            models.UniqueConstraint(
                fields=["connection", "user"],
                condition=models.Q(user__isnull=False),
                name="grant_user_once",
            ),
            models.UniqueConstraint(
                fields=["connection", "group"],
                condition=models.Q(group__isnull=False),
                name="grant_group_once",
            ),
            models.UniqueConstraint(
                fields=["connection", "token"],
                condition=models.Q(token__isnull=False),
                name="grant_token_once",
            ),
        ]

    def __str__(self) -> str:
        grantee = self.user_id or self.group_id or self.token_id
        return f"grant on {self.connection_id} to {grantee}"


def digest_arguments(arguments: Any) -> str:
    """SHA-256 of the exact arguments as canonical JSON (RFC 8785).

    The data path binds an approval to this digest: the identical retry of a call has the
    same digest, a call with any argument changed does not.
    """
    return sha256_hex(canonical(storable(arguments)))


class Status(models.TextChoices):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class ApprovalQuerySet(models.QuerySet["Approval"]):
    def pending(self) -> "ApprovalQuerySet":
        return self.filter(status=Status.PENDING)

    def decided(self) -> "ApprovalQuerySet":
        return self.exclude(status=Status.PENDING)

    def for_connection(self, connection: Connection | int) -> "ApprovalQuerySet":
        return self.filter(connection=connection)

    def past_expiry(self) -> "ApprovalQuerySet":
        return self.filter(expires_at__lte=now())

    def reusable(
        self, *, connection_id: int, token_id: int, tool: str, arguments_digest: str
    ) -> "ApprovalQuerySet":
        """Approved for exactly this caller and call, not used yet, not expired."""
        return self.filter(
            status=Status.APPROVED,
            used_at__isnull=True,
            expires_at__gt=now(),
            connection_id=connection_id,
            token_id=token_id,
            tool=tool,
            arguments_digest=arguments_digest,
        )

    def queue(self) -> "ApprovalQuerySet":
        return self.pending().select_related("connection").order_by("created_at", "pk")


class Approval(models.Model):
    """A held tool call waiting for, or carrying, a person's decision."""

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    tool = models.CharField(max_length=200)
    # Masked before they get here: approvers see what the audit trail stores.
    arguments = models.JSONField(null=True, blank=True)
    # digest_arguments() of the exact (unmasked) arguments.
    arguments_digest = models.CharField(max_length=64)
    # Who asked: kept as values too, so the request outlives users and tokens.
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    requester = models.CharField(max_length=150)
    token = models.ForeignKey(AgentToken, null=True, on_delete=models.SET_NULL, related_name="+")
    token_display = models.CharField(max_length=40, blank=True)
    run_label = models.CharField(max_length=200, blank=True)
    # The audit trail's call id of the call that was held.
    call_id = models.CharField(max_length=64, blank=True)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.PENDING)
    created_at = models.DateTimeField(default=now)
    # Until then the agent's request is kept waiting; afterwards it may retry.
    hold_until = models.DateTimeField()
    expires_at = models.DateTimeField()
    decided_at = models.DateTimeField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decider = models.CharField(max_length=150, blank=True)
    reason = models.TextField(blank=True, max_length=MAX_REASON)
    # Set once, when the approved call goes upstream.
    used_at = models.DateTimeField(null=True, blank=True)
    # Set once, by the notification task that claims this request.
    notified_at = models.DateTimeField(null=True, blank=True)

    objects = ApprovalQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=Status.values), name="approval_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(status=Status.PENDING, decided_at__isnull=True)
                | (~models.Q(status=Status.PENDING) & models.Q(decided_at__isnull=False)),
                name="approval_decided_at_iff_decided",
            ),
            models.CheckConstraint(
                condition=models.Q(used_at__isnull=True) | models.Q(status=Status.APPROVED),
                name="approval_only_approved_is_used",
            ),
            models.CheckConstraint(
                condition=models.Q(expires_at__gte=models.F("created_at")),
                name="approval_expires_after_creation",
            ),
        ]
        indexes = [
            # The live queue (pending, oldest first) and the expiry sweep.
            models.Index(
                fields=["expires_at"],
                condition=models.Q(status=Status.PENDING),
                name="approval_pending_by_expiry",
            ),
            models.Index(
                fields=["created_at"],
                condition=models.Q(status=Status.PENDING),
                name="approval_pending_by_age",
            ),
            # reusable_approval(): the identical retry of a call approved after it timed out.
            models.Index(
                fields=["token", "connection", "tool", "arguments_digest"],
                condition=models.Q(status=Status.APPROVED, used_at__isnull=True),
                name="approval_reusable",
            ),
            # The history tab, newest first.
            models.Index(fields=["-created_at"], name="approval_history"),
        ]

    def __str__(self) -> str:
        return f"approval {self.pk} ({self.status}) {self.tool}"

    @property
    def is_pending(self) -> bool:
        return self.status == Status.PENDING

    def is_expired(self, at: datetime | None = None) -> bool:
        return self.expires_at <= (at or now())

    def is_reusable(self) -> bool:
        return self.status == Status.APPROVED and self.used_at is None and not self.is_expired()

    @property
    def age(self) -> timedelta:
        return now() - self.created_at

    @property
    def time_left(self) -> timedelta:
        return max(self.expires_at - now(), timedelta(0))

    @property
    def agent_waiting(self) -> bool:
        return self.is_pending and self.hold_until > now()

    def arguments_pretty(self) -> str:
        return json.dumps(self.arguments, indent=2, ensure_ascii=False, sort_keys=True)

    def console_path(self) -> str:
        return f"/approvals/#approval-{self.pk}"

    def summary(self) -> dict[str, Any]:
        """What the live queue and the notifications say about a request (JSON-safe)."""
        return {
            "id": self.pk,
            "status": self.status,
            "connection": self.connection.slug,
            "tool": self.tool,
            "arguments": self.arguments,
            "arguments_digest": self.arguments_digest,
            "requester": self.requester,
            "token": self.token_display,
            "run_label": self.run_label,
            "created_at": self.created_at.isoformat(),
            "hold_until": self.hold_until.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "decided_at": self.decided_at.isoformat() if self.decided_at else None,
            "decider": self.decider,
            "reason": self.reason,
        }


def get_approval_for_user(user: Any, pk: int) -> Approval:
    """The one way views reach a request: approvers and admins only, 404 if unknown."""
    if not has_role(user, ADMIN, APPROVER):
        raise PermissionDenied("Deciding held calls needs the approver or admin role.")
    return get_object_or_404(Approval.objects.select_related("connection"), pk=pk)


def approvals_for_user(user: Any) -> ApprovalQuerySet:
    if not has_role(user, ADMIN, APPROVER):
        raise PermissionDenied("Deciding held calls needs the approver or admin role.")
    return Approval.objects.select_related("connection")


def get_connection_for_policy(user: Any, slug: str) -> Connection:
    """The one way views reach a connection's policy: admins only, 404 if unknown."""
    if not has_role(user, ADMIN):
        raise PermissionDenied("Editing policies needs the admin role.")
    return get_object_or_404(Connection, slug=slug)
