"""What the data path writes to the audit trail for each agent request."""

import asyncio
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings

from . import chain, writer
from .canonical import canonical, sha256_hex, storable
from .models import Kind

if TYPE_CHECKING:
    from gateway.pipeline import Call
    from masking.engine import Masker, Report

log = logging.getLogger(__name__)

OUTCOME_RETRIES = 5


def redact(value: Any, masker: "Masker | None", report: "Report | None" = None) -> Any:
    """What the audit trail stores of an argument or result value: always masked, with
    every rule in scope, including rules that let a value through to the agent."""
    if value is None or masker is None or masker.empty:
        return value
    from masking.engine import Report

    return masker.mask_json(value, report if report is not None else Report())


def _arguments(call: "Call") -> Any:
    params = call.message.params
    if call.message.method in ("tools/call", "prompts/get"):
        return params.get("arguments")
    return params or None


def _caller(call: "Call") -> dict[str, Any]:
    identity = call.identity
    request_id = call.message.id
    return {
        "call_id": call.call_id,
        "user_id": identity.user_id,
        "username": identity.username,
        "token": identity.token_display,
        "run_label": identity.run_label,
        "subject": identity.subject,
        "client_address": call.client_address,
        "connection": call.connection.slug,
        "session": call.session_digest or "",
        "era": call.era,
        "method": storable(call.message.method or "")[:200],
        "target": storable(call.message.target_name or "")[:1000],
        "request_id": "" if request_id is None else storable(json.dumps(request_id))[:200],
        "user_agent": storable(call.user_agent)[:500],
    }


def _stored_result(
    response: dict[str, Any] | None, masker: "Masker | None", report: "Report | None" = None
) -> tuple[Any, int | None, str]:
    """The result as stored: masked, and cut above AUDIT_MAX_RESULT_BYTES with its size
    and digest kept."""
    if response is None:
        return None, None, ""
    value = response.get("result") if "result" in response else {"error": response.get("error")}
    value = storable(redact(value, masker, report))
    data = canonical(value)
    limit = settings.AUDIT["MAX_RESULT_BYTES"]
    if len(data) <= limit:
        return value, len(data), sha256_hex(data)
    preview = data[:limit].decode("utf-8", errors="ignore")
    return {"truncated": True, "preview": preview}, len(data), sha256_hex(data)


def _masking_summary(call: "Call") -> dict[str, Any] | None:
    """Which rules fired and how many values were masked, for the agent and for the
    record (never the values)."""
    if not call.audit_report.total and not call.agent_report.total:
        return None
    return {**call.audit_report.as_dict(), "to_agent": call.agent_report.as_dict()}


_append = writer.append


async def record_request(call: "Call") -> None:
    call.call_id = uuid.uuid4()
    await _append(
        kind=Kind.CALL_REQUEST,
        arguments=redact(_arguments(call), call.audit_masker, call.audit_report),
        **_caller(call),
    )


async def record_outcome(call: "Call", outcome: str, response: dict[str, Any] | None) -> None:
    latency_ms = round(call.latency_ms, 3)
    if call.call_id is None:
        # Refused before its request was recorded (for example denied): one record.
        call.call_id = uuid.uuid4()
        with_arguments = True
    else:
        with_arguments = False
    masker: Masker | None = call.audit_masker
    if response is not None and call.audit_payload is not None:
        # The agent's copy, masked with the same rules (see pipeline.mask).
        response, masker = call.audit_payload, None
        if call.audit_payload_report is not None:
            call.audit_report.counts.update(call.audit_payload_report.counts)

    def compose() -> dict[str, Any]:
        arguments = (
            redact(_arguments(call), call.audit_masker, call.audit_report)
            if with_arguments
            else None
        )
        result, size, digest = _stored_result(response, masker, call.audit_report)
        return {
            "kind": Kind.CALL_OUTCOME,
            "arguments": arguments,
            "result": result,
            "result_size": size,
            "result_digest": digest,
            "outcome": outcome,
            "latency_ms": latency_ms,
            "masking": _masking_summary(call),
            "approval_id": call.approval_id,
            **_caller(call),
        }

    # The call already happened: keep trying for a while rather than lose its outcome.
    # If every attempt fails the reconciler closes the call as "unknown".
    for attempt in range(OUTCOME_RETRIES):
        try:
            # The agent has its answer: the record is composed and written when the
            # writer next has a moment (`writer.append_later`).
            await writer.append_later(compose)
            return
        except Exception:
            log.exception(
                "could not record the outcome of call %s (attempt %d)", call.call_id, attempt + 1
            )
            await asyncio.sleep(0.2 * 2**attempt)


async def record_message(call: "Call") -> None:
    """A notification or a response from the agent (e.g. an answer to an elicitation)."""
    call.call_id = None
    await _append(
        kind=Kind.MESSAGE,
        arguments=redact(call.message.params or None, call.audit_masker),
        **_caller(call),
    )


def _record_resumed_outcome(session: str, request_id: str, response: dict[str, Any]) -> None:
    from django.utils.timezone import now

    from .models import AuditRecord
    from .reconcile import COPIED_FIELDS

    request = (
        AuditRecord.objects.filter(kind=Kind.CALL_REQUEST, session=session, request_id=request_id)
        .order_by("-seq")
        .first()
    )
    if request is None:
        return
    if AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, call_id=request.call_id).exists():
        return
    from gateway.models import Connection
    from masking.engine import Report
    from masking.service import AUDIT, masker_for

    connection_id = (
        Connection.objects.filter(slug=request.connection).values_list("pk", flat=True).first()
    )
    report = Report()
    masker = masker_for(connection_id, request.target or None, AUDIT)
    result, size, digest = _stored_result(response, masker, report)
    chain.append(
        masking=report.as_dict() if report.total else None,
        kind=Kind.CALL_OUTCOME,
        outcome="error" if "error" in response or _is_error(response) else "ok",
        result=result,
        result_size=size,
        result_digest=digest,
        latency_ms=round((now() - request.created_at).total_seconds() * 1000, 3),
        details={"delivered_on": "resumed stream"},
        **{name: getattr(request, name) for name in COPIED_FIELDS},
    )


def _is_error(response: dict[str, Any]) -> bool:
    result = response.get("result")
    return isinstance(result, dict) and result.get("isError") is True


_resumed = sync_to_async(_record_resumed_outcome, thread_sensitive=False)


async def record_resumed_outcome(session: str, request_id: Any, response: dict[str, Any]) -> None:
    """The answer to a call whose stream the upstream closed, arriving on the resumed
    (GET) stream: it closes the call's record."""
    try:
        await _resumed(session, json.dumps(request_id)[:200], response)
    except Exception:
        log.exception("could not record a resumed call's outcome; the reconciler will close it")
