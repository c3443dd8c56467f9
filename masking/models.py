"""Masking rules: what counts as sensitive, how it is replaced, and where."""

import fnmatch

from django.core.exceptions import ValidationError
from django.db import models
from django.utils.timezone import now

from gateway.models import Connection

MAX_PATTERN_LENGTH = 2000
MAX_WORDS = 5000


class Kind(models.TextChoices):
    BUILTIN = "builtin", "built-in detector"
    KEY_NAME = "key_name", "values under key names"
    REGEX = "regex", "regular expression"
    DENYLIST = "denylist", "deny-list of words"


class Style(models.TextChoices):
    LABEL = "label", "label, e.g. [EMAIL]"
    PARTIAL = "partial", "partial, e.g. ****4242"
    HASH = "hash", "keyed hash token, e.g. [EMAIL:3f2a9c1d0b7e]"


class Scope(models.TextChoices):
    GLOBAL = "global", "every connection"
    CONNECTION = "connection", "one connection"
    TOOL = "tool", "tools of one connection"


class MaskingRuleQuerySet(models.QuerySet["MaskingRule"]):
    def enabled(self) -> "MaskingRuleQuerySet":
        return self.filter(enabled=True)

    def in_evaluation_order(self) -> "MaskingRuleQuerySet":
        return self.order_by("order", "id")


class MaskingRule(models.Model):
    name = models.CharField(max_length=100, unique=True)
    entity = models.CharField(
        max_length=40, help_text="The label in replacements, e.g. EMAIL gives [EMAIL]."
    )
    kind = models.CharField(max_length=10, choices=Kind.choices)
    # kind=builtin: the detector's name (masking.detectors.BUILTIN_DETECTORS).
    detector = models.CharField(max_length=40, blank=True)
    # kind=regex: the expression (RE2 syntax: no backreferences, no catastrophic backtracking).
    pattern = models.TextField(blank=True)
    # kind=denylist: words or phrases, matched whole-word, in any letter case.
    # kind=key_name: key names, matched in any letter case at any depth.
    words = models.JSONField(default=list, blank=True)
    style = models.CharField(max_length=10, choices=Style.choices, default=Style.LABEL)
    scope = models.CharField(max_length=10, choices=Scope.choices, default=Scope.GLOBAL)
    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.CASCADE)
    # scope=tool: a tool name or glob, e.g. "get_customer*".
    tool = models.CharField(max_length=200, blank=True)
    # When false the value reaches the agent unmasked; the audit trail masks it anyway.
    mask_for_agent = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    order = models.IntegerField(default=100, help_text="Lower runs first.")
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    objects = MaskingRuleQuerySet.as_manager()

    class Meta:
        ordering = ["order", "id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(scope="global", connection__isnull=True)
                | (~models.Q(scope="global") & models.Q(connection__isnull=False)),
                name="masking_scope_matches_connection",
            ),
            models.CheckConstraint(
                condition=~models.Q(scope="tool") | ~models.Q(tool=""),
                name="masking_tool_scope_names_tool",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from .detectors import BUILTIN_DETECTORS
        from .engine import compile_pattern

        errors: dict[str, str] = {}
        if self.kind == Kind.BUILTIN and self.detector not in BUILTIN_DETECTORS:
            errors["detector"] = (
                f"Unknown detector. Choose one of: {', '.join(sorted(BUILTIN_DETECTORS))}."
            )
        if self.kind == Kind.REGEX:
            if not self.pattern:
                errors["pattern"] = "Enter a regular expression."
            elif len(self.pattern) > MAX_PATTERN_LENGTH:
                errors["pattern"] = f"At most {MAX_PATTERN_LENGTH} characters."
            else:
                problem = compile_pattern(self.pattern)[1]
                if problem:
                    errors["pattern"] = problem
        if self.kind in (Kind.DENYLIST, Kind.KEY_NAME):
            words = self.words if isinstance(self.words, list) else []
            if not words or not all(isinstance(w, str) and w.strip() for w in words):
                errors["words"] = "Enter at least one word; every entry must be non-empty text."
            elif len(words) > MAX_WORDS:
                errors["words"] = f"At most {MAX_WORDS} entries."
        if self.scope == Scope.GLOBAL and self.connection_id is not None:
            errors["connection"] = "A global rule has no connection."
        if self.scope != Scope.GLOBAL and self.connection_id is None:
            errors["connection"] = "Choose the connection this rule applies to."
        if self.scope == Scope.TOOL and not self.tool.strip():
            errors["tool"] = "Name the tool (a glob such as get_* is allowed)."
        if errors:
            raise ValidationError(errors)

    def applies_to(self, connection_id: int | None, tool: str | None) -> bool:
        if self.scope == Scope.GLOBAL:
            return True
        if self.connection_id != connection_id:
            return False
        if self.scope == Scope.TOOL:
            return tool is not None and fnmatch.fnmatchcase(tool, self.tool)
        return True
