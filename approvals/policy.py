"""Policy: may this caller use the connection, and is a tool call allowed, denied or held.

Who may use a connection (`may_use`):
- A connection whose grants were never set (or were cleared by an admin) is usable by
  every active user, with any of their active tokens.
- Otherwise the caller needs a grant: to their user, to one of their groups, or to the
  very token they call with. Grants whose user, group or token was deleted are gone,
  and if none is left the connection is closed to everyone (never silently opened).

What happens to a tool call (`evaluate`), the first of these that applies:
1. Rules naming the tool exactly, in the connection's rule order.
2. Rules with a glob (`delete_*`, `get_?`, `[ab]*`), in the connection's rule order.
   A rule with groups applies only to members of at least one of them; a rule without
   groups applies to everyone. So "delete_* hold for agents" placed before
   "delete_* allow" holds agents and allows everyone else.
3. A tool whose upstream annotations say `destructiveHint: true` is held. Annotations
   are hints from the upstream, which is why any rule above wins over them.
4. The connection's default action (allow when none is set).
"""

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError

from gateway.models import Connection

from .models import Action, ConnectionPolicy, Grant, PolicyRule, tool_matches, validate_tool_pattern

MAX_RULES = 500
MAX_GRANTS = 1000


@dataclass(frozen=True)
class PolicyDecision:
    action: str  # "allow" | "deny" | "hold"
    reason: str
    rule_id: int | None = None


@dataclass(frozen=True)
class RuleSpec:
    tool: str
    action: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicySpec:
    """A connection's whole policy by names, as the API and the policy page edit it.

    Rules are in evaluation order within their tier (exact names, then globs).
    """

    default_action: str = Action.ALLOW.value
    rules: tuple[RuleSpec, ...] = ()
    grant_users: tuple[str, ...] = ()
    grant_groups: tuple[str, ...] = ()
    grant_tokens: tuple[str, ...] = ()

    @classmethod
    def of(cls, connection: Connection) -> "PolicySpec":
        policy = ConnectionPolicy.objects.filter(connection=connection).first()
        rules = (
            PolicyRule.objects.filter(connection=connection).in_order().prefetch_related("groups")
        )
        grants = Grant.objects.filter(connection=connection).select_related(
            "user", "group", "token"
        )
        return cls(
            default_action=policy.default_action if policy else Action.ALLOW.value,
            rules=tuple(
                RuleSpec(r.tool, r.action, tuple(sorted(g.name for g in r.groups.all())))
                for r in rules
            ),
            grant_users=tuple(sorted(g.user.get_username() for g in grants if g.user)),
            grant_groups=tuple(sorted(g.group.name for g in grants if g.group)),
            grant_tokens=tuple(sorted(g.token.public_id for g in grants if g.token)),
        )

    def validate(self) -> None:
        """Raise ValidationError (a dict of field -> messages) if the shape is wrong."""
        errors: dict[str, list[str]] = {}
        if self.default_action not in Action.values:
            errors["default_action"] = [_bad_action(self.default_action)]
        if len(self.rules) > MAX_RULES:
            errors["rules"] = [f"At most {MAX_RULES} rules per connection."]
        for index, rule in enumerate(self.rules):
            try:
                validate_tool_pattern(rule.tool)
            except ValidationError as exc:
                errors[f"rules[{index}].tool"] = list(exc.messages)
            if rule.action not in Action.values:
                errors[f"rules[{index}].action"] = [_bad_action(rule.action)]
        if len(self.grant_users) + len(self.grant_groups) + len(self.grant_tokens) > MAX_GRANTS:
            errors["grants"] = [f"At most {MAX_GRANTS} grants per connection."]
        if errors:
            raise ValidationError(errors)

    def as_dict(self) -> dict[str, Any]:
        return {
            "default_action": self.default_action,
            "rules": [
                {"tool": r.tool, "action": r.action, "groups": list(r.groups)} for r in self.rules
            ],
            "grants": {
                "users": list(self.grant_users),
                "groups": list(self.grant_groups),
                "tokens": list(self.grant_tokens),
            },
        }


def _bad_action(action: str) -> str:
    return f"{action!r} is not an action: use one of {', '.join(Action.values)}."


@dataclass(frozen=True)
class _Rule:
    id: int
    position: int
    tool: str
    exact: bool
    action: str
    group_ids: frozenset[int]

    def applies_to(self, tool: str, user_group_ids: frozenset[int]) -> bool:
        if self.group_ids and not (self.group_ids & user_group_ids):
            return False
        return self.tool == tool if self.exact else tool_matches(self.tool, tool)


@dataclass(frozen=True)
class CallerPolicy:
    """One connection's policy as it applies to one user, loaded once."""

    default_action: str
    rules: tuple[_Rule, ...]
    user_group_ids: frozenset[int]
    # Decisions already made, by tool and whether the upstream marks it destructive.
    _decided: dict[tuple[str, bool], PolicyDecision] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def load(cls, connection_id: int, user_id: int) -> "CallerPolicy":
        default = (
            ConnectionPolicy.objects.filter(connection_id=connection_id)
            .values_list("default_action", flat=True)
            .first()
        ) or Action.ALLOW.value
        group_ids: dict[int, set[int]] = {}
        for rule_id, group_id in PolicyRule.groups.through.objects.filter(
            policyrule__connection_id=connection_id
        ).values_list("policyrule_id", "group_id"):
            group_ids.setdefault(rule_id, set()).add(group_id)
        rules = [
            _Rule(
                id=rule.pk,
                position=rule.position,
                tool=rule.tool,
                exact=rule.is_exact,
                action=rule.action,
                group_ids=frozenset(group_ids.get(rule.pk, ())),
            )
            for rule in PolicyRule.objects.filter(connection_id=connection_id).in_order()
        ]
        # Exact names first, then globs; each in the connection's order (sorted is stable).
        rules.sort(key=lambda rule: not rule.exact)
        user_groups = get_user_model().groups.through.objects.filter(user_id=user_id)
        return cls(
            default_action=default,
            rules=tuple(rules),
            user_group_ids=frozenset(user_groups.values_list("group_id", flat=True)),
        )

    def visible(self, tools: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tools of a tools/list result this caller may see: all but the denied ones."""
        return [
            tool
            for tool in tools
            if self.decide(str(tool.get("name", "")), tool.get("annotations")).action != Action.DENY
        ]

    def decide(self, tool: str, annotations: dict[str, Any] | None) -> PolicyDecision:
        destructive = isinstance(annotations, dict) and annotations.get("destructiveHint") is True
        key = (tool, destructive)
        decision = self._decided.get(key)
        if decision is None:
            decision = self._decide(tool, destructive)
            if len(self._decided) < 10_000:
                self._decided[key] = decision
        return decision

    def _decide(self, tool: str, destructive: bool) -> PolicyDecision:
        for rule in self.rules:
            if rule.applies_to(tool, self.user_group_ids):
                kind = "exact" if rule.exact else "glob"
                return PolicyDecision(
                    rule.action, f"rule {rule.position} ({kind} {rule.tool!r})", rule.id
                )
        if destructive:
            return PolicyDecision(Action.HOLD.value, "the upstream marks this tool destructive")
        return PolicyDecision(self.default_action, "the connection's default action")


def may_use(connection_id: int, user_id: int, token_id: int) -> bool:
    """Whether the caller may use the connection at all (see the module docstring)."""
    if not get_user_model().objects.filter(pk=user_id, is_active=True).exists():
        return False
    restricted = (
        ConnectionPolicy.objects.filter(connection_id=connection_id)
        .values_list("restricted", flat=True)
        .first()
    )
    if not restricted:
        return True
    return (
        Grant.objects.filter(connection_id=connection_id)
        .for_caller(user_id=user_id, token_id=token_id)
        .exists()
    )


def evaluate(
    connection_id: int, user_id: int, tool: str, annotations: dict[str, Any] | None
) -> PolicyDecision:
    """allow, deny or hold for one call (see the module docstring for the order)."""
    return CallerPolicy.load(connection_id, user_id).decide(tool, annotations)


def visible_tools(
    connection_id: int, user_id: int, tools: Iterable[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The tools of a tools/list result this caller may see: all but the denied ones."""
    return CallerPolicy.load(connection_id, user_id).visible(tools)
