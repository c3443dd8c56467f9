"""State changes of held calls and policies. Each is one explicit function that locks,
changes, writes its audit event and signals after commit.
"""

import asyncio
import logging
from datetime import timedelta
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils.timezone import now

from audit.events import record_event
from console.roles import ADMIN, APPROVER, has_role
from gateway.models import AgentToken, Connection

from . import notifications
from .consumers import QUEUE_GROUP, approval_group
from .models import MAX_REASON, Approval, ConnectionPolicy, Grant, PolicyRule, Status
from .policy import PolicySpec

log = logging.getLogger(__name__)

# A signal that cannot be sent within this time is dropped: waiting calls still see the
# decision through their database check, and the queue page on its next load.
SIGNAL_TIMEOUT = 2.0
EXPIRE_BATCH = 500


class ApprovalError(Exception):
    """A decision that cannot be made; the message says why, for people."""


class NotAnApprover(ApprovalError):
    pass


class SelfApprovalRefused(ApprovalError):
    pass


class AlreadyDecided(ApprovalError):
    pass


class ApprovalExpired(ApprovalError):
    pass


class InvalidPolicy(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


def _signal(messages: list[tuple[str, dict[str, Any]]]) -> None:
    """Send channel-layer messages, best effort: Postgres is the truth, this only wakes."""
    layer = get_channel_layer()
    if layer is None:
        return

    async def send_all() -> None:
        for group, message in messages:
            await layer.group_send(group, message)

    async def bounded() -> None:
        await asyncio.wait_for(send_all(), SIGNAL_TIMEOUT)

    try:
        async_to_sync(bounded)()
    except Exception as exc:
        log.warning("approvals: channel layer signal not sent (%s: %s)", type(exc).__name__, exc)


def _signal_on_commit(approval: Approval, event_type: str) -> None:
    summary = approval.summary()
    messages = [(QUEUE_GROUP, {"type": event_type, "approval": summary})]
    if event_type != "approval.created":
        waiting = {"type": event_type, "id": approval.pk, "status": approval.status}
        messages.insert(0, (approval_group(approval.pk), waiting))
    transaction.on_commit(lambda: _signal(messages), robust=True)


def _queue_notification(approval_id: int) -> None:
    from .tasks import notify

    try:
        # No publish retries: with the broker down the held call must not stall here. The
        # expiry sweep queues notifications that could not be sent.
        notify.apply_async(args=[approval_id], retry=False)
    except Exception as exc:
        log.warning(
            "approvals: notification for request %s not queued (%s: %s)",
            approval_id,
            type(exc).__name__,
            exc,
        )


def _event_details(approval: Approval, **extra: Any) -> dict[str, Any]:
    return {
        "approval_id": approval.pk,
        "tool": approval.tool,
        "arguments_digest": approval.arguments_digest,
        "requester": approval.requester,
        "token": approval.token_display,
        "run_label": approval.run_label,
        "call_id": approval.call_id,
        **extra,
    }


def request_approval(
    *,
    connection_id: int,
    tool: str,
    arguments: object,
    arguments_digest: str,
    user_id: int,
    token_id: int,
    run_label: str,
    call_id: str,
    hold_seconds: float | None = None,
) -> Approval:
    """Hold a call: a pending request, shown at once on every open queue page and sent to
    the notification channels after commit. `arguments` must already be masked."""
    if len(arguments_digest) != 64:
        raise ValueError("arguments_digest must be a SHA-256 hex digest (digest_arguments())")
    config = settings.APPROVALS
    hold = config["HOLD_SECONDS"] if hold_seconds is None else hold_seconds
    user = get_user_model().objects.get(pk=user_id)
    token = AgentToken.objects.filter(pk=token_id).first()
    created = now()
    with transaction.atomic():
        approval = Approval.objects.create(
            connection=Connection.objects.get(pk=connection_id),
            tool=tool[:200],
            arguments=arguments,
            arguments_digest=arguments_digest,
            requested_by=user,
            requester=user.get_username(),
            token=token,
            token_display=token.display if token else "",
            run_label=run_label[:200],
            call_id=str(call_id)[:64],
            created_at=created,
            hold_until=created + timedelta(seconds=max(hold, 0.0)),
            expires_at=created + timedelta(seconds=config["EXPIRE_SECONDS"]),
        )
        record_event(
            "approval.requested",
            actor=user,
            connection=approval.connection.slug,
            details=_event_details(approval, expires_at=approval.expires_at.isoformat()),
        )
        _signal_on_commit(approval, "approval.created")
        if notifications.configured_channels():
            transaction.on_commit(lambda: _queue_notification(approval.pk), robust=True)
    return approval


def reusable_approval(
    *, connection_id: int, token_id: int, tool: str, arguments_digest: str
) -> Approval | None:
    """An approval the identical retry of a timed-out call may use (once: see consume())."""
    return (
        Approval.objects.reusable(
            connection_id=connection_id,
            token_id=token_id,
            tool=tool,
            arguments_digest=arguments_digest,
        )
        .order_by("decided_at", "pk")
        .first()
    )


def consume(approval_id: int) -> bool:
    """Use an approval for the one call it allows. True once; False ever after, and for
    approvals that are not approved or expired."""
    with transaction.atomic():
        used = Approval.objects.filter(
            pk=approval_id, status=Status.APPROVED, used_at__isnull=True, expires_at__gt=now()
        ).update(used_at=now())
        if used:
            approval = Approval.objects.select_related("connection").get(pk=approval_id)
            record_event(
                "approval.used",
                connection=approval.connection.slug,
                details=_event_details(approval),
            )
    return bool(used)


def _expire(approval: Approval) -> None:
    """Expire a pending request the caller holds locked."""
    approval.status = Status.EXPIRED
    approval.decided_at = now()
    approval.save(update_fields=["status", "decided_at"])
    record_event(
        "approval.expired",
        connection=approval.connection.slug,
        details=_event_details(approval, expires_at=approval.expires_at.isoformat()),
    )
    _signal_on_commit(approval, "approval.expired")


def decide(approval: Approval, *, approve: bool, actor: Any, reason: str = "") -> Approval:
    """Approve or deny a pending request. Exactly one decision wins: the row is locked,
    and every later attempt gets AlreadyDecided.

    Raises NotAnApprover, SelfApprovalRefused, AlreadyDecided or ApprovalExpired.
    """
    if not has_role(actor, ADMIN, APPROVER):
        raise NotAnApprover("Only approvers and admins decide held calls.")
    reason = reason.strip()
    if len(reason) > MAX_REASON:
        raise ValueError(f"Keep the reason to {MAX_REASON} characters.")
    with transaction.atomic():
        locked = (
            Approval.objects.select_for_update(of=("self",))
            .select_related("connection")
            .get(pk=approval.pk)
        )
        if locked.requested_by_id is not None and locked.requested_by_id == actor.pk:
            raise SelfApprovalRefused("You cannot decide a call you made yourself.")
        if locked.status != Status.PENDING:
            raise AlreadyDecided(_already_decided_message(locked))
        if locked.is_expired():
            _expire(locked)
            expired = True
        else:
            expired = False
            locked.status = Status.APPROVED if approve else Status.DENIED
            locked.decided_at = now()
            locked.decided_by = actor
            locked.decider = actor.get_username()
            locked.reason = reason
            locked.save(update_fields=["status", "decided_at", "decided_by", "decider", "reason"])
            record_event(
                f"approval.{locked.status}",
                actor=actor,
                connection=locked.connection.slug,
                details=_event_details(locked, reason=reason),
            )
            _signal_on_commit(locked, "approval.decided")
    if expired:
        raise ApprovalExpired(
            f"Request {locked.pk} expired at {locked.expires_at:%Y-%m-%d %H:%M:%S} UTC."
        )
    return locked


def _already_decided_message(approval: Approval) -> str:
    if approval.status == Status.EXPIRED:
        return f"Request {approval.pk} has expired."
    return (
        f"Request {approval.pk} was already {approval.status} by {approval.decider or 'someone'}."
    )


def expire(approval_id: int) -> bool:
    """Expire one request if it is pending and past its expiry; True if this call did."""
    with transaction.atomic():
        approval = (
            Approval.objects.select_for_update(of=("self",), skip_locked=True)
            .select_related("connection")
            .pending()
            .past_expiry()
            .filter(pk=approval_id)
            .first()
        )
        if approval is None:
            return False
        _expire(approval)
    return True


def expire_due() -> int:
    """Expire every pending request past its expiry. Safe to run on several workers at once:
    each request is taken by one of them (skip_locked) and expired once."""
    expired = 0
    while True:
        with transaction.atomic():
            batch = list(
                Approval.objects.select_for_update(of=("self",), skip_locked=True)
                .select_related("connection")
                .pending()
                .past_expiry()
                .order_by("expires_at", "pk")[:EXPIRE_BATCH]
            )
            for approval in batch:
                _expire(approval)
        expired += len(batch)
        if len(batch) < EXPIRE_BATCH:
            return expired


def _resolve(spec: PolicySpec) -> tuple[dict[str, Group], list[Any], list[Group], list[AgentToken]]:
    errors: dict[str, list[str]] = {}
    wanted_groups = {name for rule in spec.rules for name in rule.groups} | set(spec.grant_groups)
    groups = {g.name: g for g in Group.objects.filter(name__in=wanted_groups)}
    for index, rule in enumerate(spec.rules):
        missing = [name for name in rule.groups if name not in groups]
        if missing:
            errors.setdefault(f"rules[{index}].groups", []).append(
                f"No group named {', '.join(sorted(missing))}."
            )
    missing = sorted(set(spec.grant_groups) - set(groups))
    if missing:
        errors.setdefault("grants.groups", []).append(f"No group named {', '.join(missing)}.")
    user_model = get_user_model()
    users = list(
        user_model.objects.filter(**{f"{user_model.USERNAME_FIELD}__in": spec.grant_users})
    )
    missing = sorted(set(spec.grant_users) - {u.get_username() for u in users})
    if missing:
        errors.setdefault("grants.users", []).append(f"No user named {', '.join(missing)}.")
    tokens = list(AgentToken.objects.filter(public_id__in=spec.grant_tokens))
    missing = sorted(set(spec.grant_tokens) - {t.public_id for t in tokens})
    if missing:
        errors.setdefault("grants.tokens", []).append(f"No token with id {', '.join(missing)}.")
    if errors:
        raise InvalidPolicy(errors)
    return groups, users, [groups[name] for name in sorted(set(spec.grant_groups))], tokens


@transaction.atomic
def set_policy(connection: Connection, spec: PolicySpec, *, actor: Any) -> PolicySpec:
    """Replace a connection's rules, default action and grants as a whole.

    The spec's shape is validated by its caller (serializer or form); names of groups,
    users and tokens are resolved here, and InvalidPolicy says which are unknown.
    """
    spec.validate()
    policy, _ = ConnectionPolicy.objects.select_for_update().get_or_create(connection=connection)
    before = PolicySpec.of(connection)
    groups, users, grant_groups, tokens = _resolve(spec)
    PolicyRule.objects.filter(connection=connection).delete()
    Grant.objects.filter(connection=connection).delete()
    for position, rule_spec in enumerate(spec.rules, start=1):
        rule = PolicyRule.objects.create(
            connection=connection, position=position, tool=rule_spec.tool, action=rule_spec.action
        )
        rule.groups.set([groups[name] for name in rule_spec.groups])
    Grant.objects.bulk_create(
        [Grant(connection=connection, user=user) for user in users]
        + [Grant(connection=connection, group=group) for group in grant_groups]
        + [Grant(connection=connection, token=token) for token in tokens]
    )
    policy.default_action = spec.default_action
    policy.restricted = bool(users or grant_groups or tokens)
    policy.updated_at = now()
    policy.save()
    after = PolicySpec.of(connection)
    record_event(
        "policy.updated",
        actor=actor,
        connection=connection.slug,
        details={"before": before.as_dict(), "after": after.as_dict()},
    )
    return after
