"""The live queue's WebSocket: approvers hear new and decided requests; nobody else gets in."""

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.utils.timezone import now

from approvals import actions
from approvals.models import Approval
from mcpgw.asgi import application
from tests.test_approvals_helpers import (
    end_stray_connections,  # noqa: F401 (fixture)
    fast_passwords,  # noqa: F401 (autouse)
    hold,
    make_bob,
    make_charlie,
    make_connection,
    make_token,
    make_user,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]

ORIGIN = (b"origin", b"http://testserver")


def session_cookie(user: Any) -> tuple[bytes, bytes]:
    client = Client()
    client.force_login(user)
    return (b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode())


def socket(*headers: tuple[bytes, bytes]) -> WebsocketCommunicator:
    return WebsocketCommunicator(application, "/ws/approvals/", headers=[*headers])


async def next_message(communicator: WebsocketCommunicator) -> dict[str, Any]:
    return await communicator.receive_json_from(timeout=5)


async def test_approvers_hear_new_and_decided_requests(alice):
    bob = await sync_to_async(make_bob)()
    crm = await sync_to_async(make_connection)()
    token = await sync_to_async(make_token)(await sync_to_async(make_user)("dora"), "nightly")
    pages = [socket(ORIGIN, session_cookie(user)) for user in (alice, bob)]
    for page in pages:
        connected, _ = await page.connect(timeout=5)
        assert connected

    approval = await asyncio.to_thread(hold, crm, token, "delete_customer", {"id": 7})
    for page in pages:
        message = await next_message(page)
        assert message["type"] == "approval.created"
        assert message["approval"]["id"] == approval.pk
        assert message["approval"]["tool"] == "delete_customer"
        assert message["approval"]["requester"] == "dora"
        assert message["approval"]["run_label"] == "nightly"
        assert message["approval"]["arguments"] == {"id": 7}

    await asyncio.to_thread(actions.decide, approval, approve=False, actor=bob, reason="no")
    for page in pages:
        message = await next_message(page)
        assert message["type"] == "approval.decided"
        assert message["approval"]["id"] == approval.pk
        assert message["approval"]["status"] == "denied"
        assert message["approval"]["decider"] == "bob"
        assert message["approval"]["reason"] == "no"
        await page.disconnect()


async def test_expired_requests_leave_the_queue(alice):
    crm = await sync_to_async(make_connection)()
    token = await sync_to_async(make_token)(await sync_to_async(make_user)("dora"))
    page = socket(ORIGIN, session_cookie(alice))
    assert (await page.connect(timeout=5))[0]
    approval = await asyncio.to_thread(hold, crm, token)
    assert (await next_message(page))["type"] == "approval.created"
    await Approval.objects.filter(pk=approval.pk).aupdate(
        created_at=now() - timedelta(hours=1), expires_at=now() - timedelta(seconds=1)
    )
    assert await asyncio.to_thread(actions.expire_due) == 1
    message = await next_message(page)
    assert message["type"] == "approval.expired" and message["approval"]["status"] == "expired"
    await page.disconnect()


async def test_users_without_the_approver_role_are_turned_away(alice):
    charlie = await sync_to_async(make_charlie)()
    page = socket(ORIGIN, session_cookie(charlie))
    connected, code = await page.connect(timeout=5)
    assert not connected and code == 4403


async def test_anonymous_visitors_are_turned_away():
    page = socket(ORIGIN)
    connected, code = await page.connect(timeout=5)
    assert not connected and code == 4403


async def test_sockets_from_other_origins_are_refused(alice):
    page = socket((b"origin", b"http://evil.example"), session_cookie(alice))
    connected, _ = await page.connect(timeout=5)
    assert not connected
