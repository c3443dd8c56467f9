"""Deciding held calls: who may, exactly once, before expiry; and the single-use approval
an identical retry may take."""

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection as db_connection
from django.utils.timezone import now

from approvals import actions
from approvals.models import Approval, Status, digest_arguments
from audit.models import AuditRecord
from tests.test_approvals_helpers import (
    fast_passwords,  # noqa: F401 (autouse)
    hold,
    make_bob,
    make_charlie,
    make_connection,
    make_token,
    make_user,
)

pytestmark = pytest.mark.django_db(transaction=True)

DECISION_EVENTS = ("approval.approved", "approval.denied")


@pytest.fixture
def crm() -> Any:
    return make_connection()


@pytest.fixture
def agent_token(alice: Any) -> Any:
    return make_token(make_user("dora"), run="nightly-cleanup")


def test_held_call_is_a_pending_request_with_its_requester_and_an_audit_event(crm, agent_token):
    approval = hold(crm, agent_token, arguments={"id": 7, "email": "[EMAIL]"})
    assert approval.status == Status.PENDING
    assert approval.requester == "dora" and approval.run_label == "nightly-cleanup"
    assert approval.token_display == agent_token.display
    assert approval.arguments == {"id": 7, "email": "[EMAIL]"}
    assert approval.arguments_digest == digest_arguments({"id": 7, "email": "[EMAIL]"})
    assert approval.expires_at - approval.created_at == timedelta(seconds=3600)
    assert approval.hold_until - approval.created_at == timedelta(seconds=50)
    event = AuditRecord.objects.get(event="approval.requested")
    assert event.details["approval_id"] == approval.pk and event.username == "dora"


def test_approver_approves_with_a_reason_and_it_is_audited(crm, agent_token):
    bob = make_bob()
    approval = hold(crm, agent_token)
    decided = actions.decide(approval, approve=True, actor=bob, reason="  ticket OPS-12 ")
    assert decided.status == Status.APPROVED and decided.decider == "bob"
    assert decided.reason == "ticket OPS-12" and decided.decided_at is not None
    event = AuditRecord.objects.get(event="approval.approved")
    assert event.username == "bob" and event.connection == "crm"
    assert event.details["approval_id"] == approval.pk
    assert event.details["reason"] == "ticket OPS-12"


def test_requester_can_never_decide_their_own_call(crm, alice):
    # alice is an admin, and her own agent's call is still not hers to approve.
    approval = hold(crm, make_token(alice))
    with pytest.raises(actions.SelfApprovalRefused):
        actions.decide(approval, approve=True, actor=alice)
    approval.refresh_from_db()
    assert approval.status == Status.PENDING
    assert not AuditRecord.objects.filter(event__in=DECISION_EVENTS).exists()


def test_users_without_the_approver_role_cannot_decide(crm, agent_token):
    approval = hold(crm, agent_token)
    with pytest.raises(actions.NotAnApprover):
        actions.decide(approval, approve=True, actor=make_charlie())
    assert Approval.objects.get(pk=approval.pk).status == Status.PENDING


def test_a_decided_request_cannot_be_decided_again(crm, agent_token, alice):
    approval = hold(crm, agent_token)
    actions.decide(approval, approve=False, actor=make_bob(), reason="not today")
    with pytest.raises(actions.AlreadyDecided, match="already denied by bob"):
        actions.decide(approval, approve=True, actor=alice)
    assert Approval.objects.get(pk=approval.pk).status == Status.DENIED


def test_fifty_concurrent_decisions_one_wins(crm, agent_token, alice, default_isolation):
    """Whatever isolation level the database gives new connections by default, the
    decisions that lose the race are refused as already decided, not failed."""
    approvers = [alice, make_bob(), make_user("erin", "approver")]
    approval = hold(crm, agent_token)
    start = threading.Barrier(50)
    won: list[bool] = []
    refused: list[Exception] = []
    lock = threading.Lock()

    def race(index: int) -> None:
        try:
            start.wait()
            actions.decide(
                approval, approve=index % 2 == 0, actor=approvers[index % 3], reason=f"#{index}"
            )
            with lock:
                won.append(index % 2 == 0)
        except actions.AlreadyDecided as exc:
            with lock:
                refused.append(exc)
        finally:
            db_connection.close()

    threads = [threading.Thread(target=race, args=(i,)) for i in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(won) == 1 and len(refused) == 49
    approval.refresh_from_db()
    assert approval.status == (Status.APPROVED if won[0] else Status.DENIED)
    assert AuditRecord.objects.filter(event__in=DECISION_EVENTS).count() == 1


def past_expiry(approval: Approval) -> None:
    Approval.objects.filter(pk=approval.pk).update(
        created_at=now() - timedelta(hours=2), expires_at=now() - timedelta(seconds=1)
    )


def test_an_expired_request_cannot_be_approved(crm, agent_token):
    approval = hold(crm, agent_token)
    past_expiry(approval)
    with pytest.raises(actions.ApprovalExpired):
        actions.decide(approval, approve=True, actor=make_bob())
    approval.refresh_from_db()
    assert approval.status == Status.EXPIRED and approval.decider == ""
    assert AuditRecord.objects.filter(event="approval.expired").count() == 1
    assert not AuditRecord.objects.filter(event__in=DECISION_EVENTS).exists()


def test_expire_due_expires_each_overdue_request_once(crm, agent_token):
    overdue = [hold(crm, agent_token, tool=f"drop_{n}") for n in range(3)]
    current = hold(crm, agent_token, tool="drop_current")
    for approval in overdue:
        past_expiry(approval)
    assert actions.expire_due() == 3
    assert actions.expire_due() == 0
    assert set(Approval.objects.filter(status=Status.EXPIRED).values_list("pk", flat=True)) == {
        a.pk for a in overdue
    }
    assert Approval.objects.get(pk=current.pk).status == Status.PENDING
    assert AuditRecord.objects.filter(event="approval.expired").count() == 3


def retry_of(approval: Approval, **changes: Any) -> Approval | None:
    call = {
        "connection_id": approval.connection_id,
        "token_id": approval.token_id,
        "tool": approval.tool,
        "arguments_digest": approval.arguments_digest,
        **changes,
    }
    return actions.reusable_approval(**call)


def test_identical_retry_may_use_an_approval_once(crm, agent_token):
    approval = hold(crm, agent_token, arguments={"id": 7})
    assert retry_of(approval) is None  # not before it is approved
    actions.decide(approval, approve=True, actor=make_bob())
    found = retry_of(approval)
    assert found is not None and found.pk == approval.pk
    assert actions.consume(found.pk) is True
    assert actions.consume(found.pk) is False
    assert retry_of(approval) is None
    assert AuditRecord.objects.filter(event="approval.used").count() == 1


def test_a_changed_retry_finds_no_approval(crm, agent_token):
    approval = hold(crm, agent_token, arguments={"id": 7})
    actions.decide(approval, approve=True, actor=make_bob())
    other_token = make_token(agent_token.user, run="another-run")
    assert retry_of(approval, arguments_digest=digest_arguments({"id": 8})) is None
    assert retry_of(approval, tool="delete_everything") is None
    assert retry_of(approval, token_id=other_token.pk) is None
    assert retry_of(approval, connection_id=make_connection("billing").pk) is None
    assert retry_of(approval) is not None


def test_denied_or_expired_approvals_are_never_used(crm, agent_token):
    bob = make_bob()
    denied = hold(crm, agent_token, tool="t1")
    actions.decide(denied, approve=False, actor=bob)
    assert retry_of(denied) is None and actions.consume(denied.pk) is False
    approved = hold(crm, agent_token, tool="t2")
    actions.decide(approved, approve=True, actor=bob)
    past_expiry(approved)
    assert retry_of(approved) is None and actions.consume(approved.pk) is False


def test_digest_is_of_the_exact_arguments():
    assert digest_arguments({"a": 1, "b": [1, 2]}) == digest_arguments({"b": [1, 2], "a": 1})
    assert digest_arguments({"a": 1}) != digest_arguments({"a": 1.5})
    assert digest_arguments({"a": "x"}) != digest_arguments({"a": "x "})
    assert len(digest_arguments(None)) == 64
