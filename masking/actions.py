"""Changes to masking rules: validated, audited, and effective at once in this process."""

from typing import Any

from django.db import transaction

from audit.events import record_event

from . import service
from .models import MaskingRule


def _state(rule: MaskingRule) -> dict[str, Any]:
    return {
        "name": rule.name,
        "entity": rule.entity,
        "kind": rule.kind,
        "detector": rule.detector,
        "pattern": rule.pattern,
        "words": rule.words,
        "style": rule.style,
        "scope": rule.scope,
        "connection": rule.connection.slug if rule.connection else None,
        "tool": rule.tool,
        "mask_for_agent": rule.mask_for_agent,
        "enabled": rule.enabled,
        "order": rule.order,
    }


@transaction.atomic
def save_rule(rule: MaskingRule, *, actor: Any) -> MaskingRule:
    """Validate and save a new or edited rule (ValidationError on bad input)."""
    before = None
    if rule.pk is not None:
        previous = MaskingRule.objects.select_for_update().filter(pk=rule.pk).first()
        before = _state(previous) if previous else None
    rule.full_clean()
    from django.utils.timezone import now

    rule.updated_at = now()
    rule.save()
    record_event(
        "masking_rule.created" if before is None else "masking_rule.updated",
        actor=actor,
        connection=rule.connection.slug if rule.connection else "",
        details={"rule_id": rule.pk, "before": before, "after": _state(rule)},
    )
    transaction.on_commit(service.invalidate)
    return rule


@transaction.atomic
def delete_rule(rule: MaskingRule, *, actor: Any) -> None:
    state = _state(rule)
    rule_id = rule.pk
    rule.delete()
    record_event("masking_rule.deleted", actor=actor, details={"rule_id": rule_id, "before": state})
    transaction.on_commit(service.invalidate)
