"""Approvers are told about a held call: a signed webhook, a Slack message, an email."""

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from approvals import actions, tasks
from approvals.models import Approval
from mcpgw.celery import app as celery_app
from tests.test_approvals_helpers import (
    eventually,
    fast_passwords,  # noqa: F401 (autouse)
    hold,
    make_bob,
    make_connection,
    make_token,
    make_user,
)

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "webhook-secret-for-tests"


@dataclass
class Receiver:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200

    def on(self, path: str) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A real HTTP server on a local port that keeps what it is sent."""
    box: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            box["r"].requests.append(
                {"path": self.path, "headers": dict(self.headers), "body": body}
            )
            self.send_response(box["r"].status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box["r"] = Receiver(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield box["r"]
    server.shutdown()
    server.server_close()


@pytest.fixture
def eager_celery() -> Iterator[None]:
    """Tasks run in this process, as in the embedded mode."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def channels(settings: Any, receiver: Receiver, eager_celery: None) -> Receiver:
    settings.PUBLIC_URL = "https://gateway.example"
    settings.APPROVALS = {
        **settings.APPROVALS,
        "WEBHOOK_URL": f"{receiver.url}/hook",
        "WEBHOOK_SECRET": SECRET,
        "SLACK_WEBHOOK_URL": f"{receiver.url}/slack",
        "EMAIL_TO": ["approvers@example.com", "oncall@example.com"],
    }
    return receiver


@pytest.fixture
def held_call(alice: Any) -> Any:
    return lambda **kw: hold(make_connection(), make_token(make_user("dora"), run="nightly"), **kw)


def test_a_held_call_notifies_every_channel(channels: Receiver, held_call: Any, mailoutbox):
    approval = held_call(tool="delete_customer", arguments={"id": 7, "email": "[EMAIL]"})

    [hook] = eventually(lambda: channels.on("/hook"))
    expected = "sha256=" + hmac.new(SECRET.encode(), hook["body"], hashlib.sha256).hexdigest()
    assert hmac.compare_digest(hook["headers"]["X-Approval-Signature"], expected)
    assert hook["headers"]["Content-Type"] == "application/json"
    payload = json.loads(hook["body"])
    assert payload["event"] == "approval.requested"
    assert payload["url"] == f"https://gateway.example/approvals/#approval-{approval.pk}"
    assert payload["approval"]["id"] == approval.pk
    assert payload["approval"]["tool"] == "delete_customer"
    assert payload["approval"]["connection"] == "crm"
    assert payload["approval"]["requester"] == "dora"
    assert payload["approval"]["arguments"] == {"id": 7, "email": "[EMAIL]"}

    [slack] = eventually(lambda: channels.on("/slack"))
    text = json.loads(slack["body"])["text"]
    assert "dora (run nightly) asks to call delete_customer on crm" in text
    assert f"https://gateway.example/approvals/#approval-{approval.pk}" in text
    assert "[EMAIL]" not in text  # arguments go only to the signed webhook

    [mail] = mailoutbox
    assert mail.to == ["approvers@example.com", "oncall@example.com"]
    assert mail.subject == f"Approval needed: delete_customer on crm (request {approval.pk})"
    assert f"https://gateway.example/approvals/#approval-{approval.pk}" in mail.body
    assert Approval.objects.get(pk=approval.pk).notified_at is not None


def test_notifying_twice_sends_once(channels: Receiver, held_call: Any, mailoutbox):
    approval = held_call()
    eventually(lambda: channels.on("/hook"))
    assert tasks.notify.delay(approval.pk).get() == 0
    assert len(channels.on("/hook")) == 1 and len(channels.on("/slack")) == 1
    assert len(mailoutbox) == 1


def test_a_request_decided_before_its_notification_is_not_sent(
    settings: Any, channels: Receiver, held_call: Any, mailoutbox
):
    # Notifications off while the call is held, on again for a late run of the task.
    enabled = settings.APPROVALS
    settings.APPROVALS = {**enabled, "WEBHOOK_URL": "", "SLACK_WEBHOOK_URL": "", "EMAIL_TO": []}
    approval = held_call()
    actions.decide(approval, approve=True, actor=make_bob())
    settings.APPROVALS = enabled
    assert tasks.send_notification.delay(approval.pk, "webhook").get() is False
    assert channels.requests == [] and mailoutbox == []


def test_a_failing_receiver_does_not_hold_up_the_call(
    channels: Receiver, held_call: Any, mailoutbox
):
    channels.status = 500
    approval = held_call()
    # The call was held all the same, and the other channels were told.
    assert Approval.objects.get(pk=approval.pk).status == "pending"
    assert len(mailoutbox) == 1
    assert channels.on("/hook") and channels.on("/slack")


def test_without_configured_channels_nothing_is_queued(
    settings: Any, eager_celery: None, held_call: Any, mailoutbox
):
    settings.APPROVALS = {
        **settings.APPROVALS,
        "WEBHOOK_URL": "",
        "SLACK_WEBHOOK_URL": "",
        "EMAIL_TO": [],
    }
    approval = held_call()
    assert mailoutbox == []
    assert Approval.objects.get(pk=approval.pk).notified_at is None
