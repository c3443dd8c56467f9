"""Telling approvers that a call is waiting: a signed webhook, Slack, email.

The generic webhook gets the request as JSON, masked arguments included, signed with
HMAC-SHA256 over the exact body bytes: `X-Approval-Signature: sha256=<hex>`. Slack and
email carry no arguments, only who asked for which tool and a link to the queue.
"""

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.utils.timezone import now

from .models import Approval

HTTP_TIMEOUT = 5.0
SIGNATURE_HEADER = "X-Approval-Signature"
USER_AGENT = "mcpgw-approvals"
WEBHOOK, SLACK, EMAIL = "webhook", "slack", "email"


class DeliveryError(Exception):
    """The receiver could not be reached or refused: worth retrying later."""


def configured_channels() -> list[str]:
    config = settings.APPROVALS
    channels = []
    if config["WEBHOOK_URL"]:
        channels.append(WEBHOOK)
    if config["SLACK_WEBHOOK_URL"]:
        channels.append(SLACK)
    if config["EMAIL_TO"]:
        channels.append(EMAIL)
    return channels


def console_url(approval: Approval) -> str:
    return f"{settings.PUBLIC_URL}{approval.console_path()}"


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_payload(approval: Approval) -> dict[str, Any]:
    return {
        "event": "approval.requested",
        "sent_at": now().isoformat(),
        "url": console_url(approval),
        "approval": approval.summary(),
    }


def headline(approval: Approval) -> str:
    run = f" (run {approval.run_label})" if approval.run_label else ""
    return (
        f"{approval.requester}{run} asks to call {approval.tool} on "
        f"{approval.connection.slug}: request {approval.pk} needs approval"
    )


def slack_payload(approval: Approval) -> dict[str, Any]:
    url = console_url(approval)
    text = f"{headline(approval)}. Decide by {approval.expires_at:%Y-%m-%d %H:%M} UTC: {url}"
    return {"text": text}


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    try:
        response = httpx.post(
            url,
            content=body,
            headers={"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers},
            timeout=HTTP_TIMEOUT,
        )
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None
    if not response.is_success:
        raise DeliveryError(f"HTTP {response.status_code} {response.reason_phrase}".strip())


def send_webhook(approval: Approval) -> None:
    body = json.dumps(webhook_payload(approval), separators=(",", ":")).encode()
    secret = settings.APPROVALS["WEBHOOK_SECRET"]
    headers = {SIGNATURE_HEADER: signature(secret, body)} if secret else {}
    _post(settings.APPROVALS["WEBHOOK_URL"], body, headers)


def send_slack(approval: Approval) -> None:
    body = json.dumps(slack_payload(approval)).encode()
    _post(settings.APPROVALS["SLACK_WEBHOOK_URL"], body, {})


def send_email(approval: Approval) -> None:
    lines = [
        headline(approval) + ".",
        "",
        f"Requester: {approval.requester}",
        f"Run: {approval.run_label or '-'}",
        f"Token: {approval.token_display or '-'}",
        f"Connection: {approval.connection.slug}",
        f"Tool: {approval.tool}",
        f"Expires: {approval.expires_at:%Y-%m-%d %H:%M:%S} UTC",
        "",
        f"Approve or deny it in the queue: {console_url(approval)}",
    ]
    try:
        send_mail(
            f"Approval needed: {approval.tool} on {approval.connection.slug} "
            f"(request {approval.pk})",
            "\n".join(lines),
            None,
            settings.APPROVALS["EMAIL_TO"],
        )
    except OSError as exc:  # smtplib's errors are OSErrors too
        raise DeliveryError(f"{type(exc).__name__}: {exc}") from None


SENDERS: dict[str, Callable[[Approval], None]] = {
    WEBHOOK: send_webhook,
    SLACK: send_slack,
    EMAIL: send_email,
}
