"""The approval queue's REST API and pages: who may see and decide, and what they get."""

import json
import re
from typing import Any

import pytest
from django.test import Client

from approvals.models import Approval, Status
from audit.models import AuditRecord
from tests.test_approvals_helpers import (
    api_token,
    fast_passwords,  # noqa: F401 (autouse)
    hold,
    make_bob,
    make_charlie,
    make_connection,
    make_token,
    make_user,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def people(alice: Any) -> dict[str, Any]:
    return {"alice": alice, "bob": make_bob(), "charlie": make_charlie()}


@pytest.fixture
def pending(people: dict[str, Any]) -> Approval:
    token = make_token(make_user("dora"), run="nightly-cleanup")
    return hold(make_connection(), token, "delete_customer", {"id": 7, "email": "[EMAIL]"})


def as_user(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client: Client, url: str, body: Any = None, **headers: str) -> Any:
    return client.post(url, json.dumps(body or {}), content_type="application/json", **headers)


def test_approver_lists_pending_requests(people, pending):
    response = as_user(people["bob"]).get("/api/approvals/?status=pending")
    assert response.status_code == 200
    [item] = response.json()["results"]
    assert item["id"] == pending.pk and item["status"] == "pending"
    assert item["connection"] == "crm" and item["tool"] == "delete_customer"
    assert item["arguments"] == {"id": 7, "email": "[EMAIL]"}
    assert item["requester"] == "dora" and item["run_label"] == "nightly-cleanup"
    assert as_user(people["bob"]).get("/api/approvals/?status=approved").json()["results"] == []


def test_list_filters_are_validated(people, pending):
    response = as_user(people["bob"]).get("/api/approvals/?status=maybe")
    assert response.status_code == 400 and "status" in response.json()


def test_approve_through_the_api_with_an_api_token(people, pending):
    secret = api_token(people["bob"])
    response = post(
        Client(),
        f"/api/approvals/{pending.pk}/approve",
        {"reason": "ticket OPS-12"},
        HTTP_AUTHORIZATION=f"Bearer {secret}",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "approved"
    assert response.json()["decided_by"] == "bob" and response.json()["reason"] == "ticket OPS-12"
    assert AuditRecord.objects.get(event="approval.approved").username == "bob"


def test_deny_through_the_api_with_a_session(people, pending):
    response = post(as_user(people["alice"]), f"/api/approvals/{pending.pk}/deny", {"reason": "no"})
    assert response.status_code == 200
    assert Approval.objects.get(pk=pending.pk).status == Status.DENIED


def test_second_decision_gets_409_with_who_decided(people, pending):
    assert post(as_user(people["bob"]), f"/api/approvals/{pending.pk}/deny").status_code == 200
    response = post(as_user(people["alice"]), f"/api/approvals/{pending.pk}/approve")
    assert response.status_code == 409
    assert response.json() == {"detail": f"Request {pending.pk} was already denied by bob."}


def test_expired_request_gets_409(people, pending):
    from datetime import timedelta

    from django.utils.timezone import now

    Approval.objects.filter(pk=pending.pk).update(
        created_at=now() - timedelta(hours=2), expires_at=now() - timedelta(seconds=1)
    )
    response = post(as_user(people["bob"]), f"/api/approvals/{pending.pk}/approve")
    assert response.status_code == 409 and "expired" in response.json()["detail"]


def test_self_approval_is_refused_with_403(people):
    mine = hold(make_connection(), make_token(people["alice"]))
    response = post(as_user(people["alice"]), f"/api/approvals/{mine.pk}/approve")
    assert response.status_code == 403
    assert response.json() == {"detail": "You cannot decide a call you made yourself."}
    assert Approval.objects.get(pk=mine.pk).status == Status.PENDING


def test_outsiders_cannot_list_or_decide(people, pending):
    charlie = as_user(people["charlie"])
    response = charlie.get("/api/approvals/")
    assert response.status_code == 403
    assert "approver or admin role" in response.json()["detail"]
    assert post(charlie, f"/api/approvals/{pending.pk}/approve").status_code == 403
    anonymous = Client()
    assert anonymous.get("/api/approvals/").status_code == 401
    assert post(anonymous, f"/api/approvals/{pending.pk}/approve").status_code == 401
    assert Approval.objects.get(pk=pending.pk).status == Status.PENDING


def test_bad_input_and_unknown_requests(people, pending):
    bob = as_user(people["bob"])
    response = post(bob, f"/api/approvals/{pending.pk}/approve", {"reason": "x" * 1001})
    assert response.status_code == 400 and "reason" in response.json()
    response = post(bob, f"/api/approvals/{pending.pk}/approve", {"reason": {"nested": 1}})
    assert response.status_code == 400
    assert post(bob, "/api/approvals/999999/approve").status_code == 404
    assert bob.get(f"/api/approvals/{pending.pk}").json()["status"] == "pending"


def test_queue_page_shows_pending_requests_to_approvers(people, pending):
    page = as_user(people["bob"]).get("/approvals/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f'id="approval-{pending.pk}"' in html
    assert "delete_customer" in html and "dora" in html and "nightly-cleanup" in html
    assert "&quot;email&quot;: &quot;[EMAIL]&quot;" in html  # pretty-printed, escaped
    assert "approvals.js" in html and 'data-ws-path="/ws/approvals/"' in html


def test_queue_page_is_for_approvers_and_admins_only(people):
    assert as_user(people["alice"]).get("/approvals/").status_code == 200
    assert as_user(people["charlie"]).get("/approvals/").status_code == 403
    assert as_user(people["charlie"]).get("/approvals/history/").status_code == 403
    response = Client().get("/approvals/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")


def test_approve_button_works_without_javascript(people, pending):
    client = Client(enforce_csrf_checks=True)
    client.force_login(people["bob"])
    html = client.get("/approvals/").content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    assert csrf is not None
    url = f"/approvals/{pending.pk}/decide/"
    # Without the form's token the post is refused.
    assert client.post(url, {"decision": "approve"}).status_code == 403
    response = client.post(
        url, {"decision": "approve", "reason": "fine", "csrfmiddlewaretoken": csrf.group(1)}
    )
    assert response.status_code == 302 and response["Location"] == "/approvals/"
    approval = Approval.objects.get(pk=pending.pk)
    assert approval.status == Status.APPROVED and approval.reason == "fine"
    html = client.get("/approvals/").content.decode()
    assert f'id="approval-{pending.pk}"' not in html
    assert f"Request {pending.pk} (delete_customer) approved." in html


def test_deciding_twice_on_the_page_says_who_was_first(people, pending):
    as_user(people["bob"]).post(f"/approvals/{pending.pk}/decide/", {"decision": "deny"})
    alice = as_user(people["alice"])
    alice.post(f"/approvals/{pending.pk}/decide/", {"decision": "approve"})
    assert "already denied by bob" in alice.get("/approvals/").content.decode()
    assert Approval.objects.get(pk=pending.pk).status == Status.DENIED


def test_live_page_fetches_rows_of_pending_requests_only(people, pending):
    bob = as_user(people["bob"])
    row = bob.get(f"/approvals/{pending.pk}/row/")
    assert row.status_code == 200
    assert row.content.decode().strip().startswith(f'<tr id="approval-{pending.pk}"')
    assert "csrfmiddlewaretoken" in row.content.decode()
    rows = bob.get("/approvals/?partial=rows").content.decode()
    assert f'id="approval-{pending.pk}"' in rows and "<html" not in rows
    bob.post(f"/approvals/{pending.pk}/decide/", {"decision": "approve"})
    assert bob.get(f"/approvals/{pending.pk}/row/").status_code == 204
    assert as_user(people["charlie"]).get(f"/approvals/{pending.pk}/row/").status_code == 403


def test_history_filters_by_status_connection_and_tool(people):
    token = make_token(make_user("dora"))
    crm, billing = make_connection("crm"), make_connection("billing")
    approved = hold(crm, token, "delete_customer")
    denied = hold(billing, token, "refund")
    waiting = hold(crm, token, "drop_table")
    bob = people["bob"]
    from approvals import actions

    actions.decide(approved, approve=True, actor=bob)
    actions.decide(denied, approve=False, actor=bob)
    client = as_user(bob)

    def shown(query: str) -> set[int]:
        html = client.get(f"/approvals/history/?{query}").content.decode()
        return {int(pk) for pk in re.findall(r'<tr id="approval-(\d+)"', html)}

    assert shown("") == {approved.pk, denied.pk, waiting.pk}
    assert shown("status=approved") == {approved.pk}
    assert shown("connection=billing") == {denied.pk}
    assert shown("tool=drop_table") == {waiting.pk}
    assert shown("status=pending&connection=crm") == {waiting.pk}
    assert client.get("/approvals/history/?status=maybe").status_code == 400
