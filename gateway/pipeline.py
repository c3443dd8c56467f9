"""The steps every agent request passes through, in DESIGN.md's order.

authenticate -> parse -> policy -> audit (write-ahead) -> forward -> mask -> audit

Authentication and parsing happen in `endpoint`; forwarding in `upstream`. The hooks
here are the places where policy, approvals, audit and masking plug in: each transport
calls them in the same order, so every transport gets the same behaviour.
"""

import asyncio
import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import sync_to_async

from approvals import actions as approval_actions
from approvals import policy
from approvals.models import digest_arguments
from approvals.waiting import wait_for_decision
from audit import recorder
from audit.models import Outcome
from masking import service as masking
from masking.engine import Masker, Report

from . import admission, catalog
from .auth import Identity
from .jsonrpc import Message


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the data path needs of a connection, read once per request."""

    id: int
    slug: str
    url: str
    enabled: bool
    headers: dict[str, str]
    stamp: str
    transport: str = "streamable_http"
    command: str = ""
    args: tuple[str, ...] = ()
    cwd: str = ""
    env: dict[str, str] = field(default_factory=dict)
    max_processes: int = 8


@dataclass(slots=True)
class Call:
    """One agent request on its way through the gateway."""

    identity: Identity
    connection: ConnectionInfo
    message: Message
    era: str
    client_address: str
    user_agent: str
    session_digest: str | None = None
    started: float = field(default_factory=time.monotonic)
    outcome: Outcome | None = None
    call_id: uuid.UUID | None = None
    agent_masker: Masker | None = None
    audit_masker: Masker | None = None
    # What masking did, for the audit record (rule names and counts, never values).
    agent_report: Report = field(default_factory=Report)
    audit_report: Report = field(default_factory=Report)
    # The approval that let a held call through.
    approval_id: int | None = None
    # Whether the agent and the audit trail mask with the same rules (no rule in scope lets
    # a value through to the agent); then the result the agent got, masked, is also what
    # the audit trail stores, and it is masked once.
    same_masking: bool = False
    audit_payload: dict[str, Any] | None = None
    audit_payload_report: Report | None = None

    @property
    def latency_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


_may_use = sync_to_async(policy.may_use, thread_sensitive=False)
_load_policy = sync_to_async(policy.CallerPolicy.load, thread_sensitive=False)
_catalog = sync_to_async(catalog.view, thread_sensitive=False)
_observe = sync_to_async(catalog.observe, thread_sensitive=False)
_reusable = sync_to_async(approval_actions.reusable_approval, thread_sensitive=False)
_consume = sync_to_async(approval_actions.consume, thread_sensitive=False)
_request_approval = sync_to_async(approval_actions.request_approval, thread_sensitive=False)


async def may_use(identity: Identity, connection: ConnectionInfo) -> bool:
    """Grants: whether the caller may use the connection at all."""
    key = (connection.id, identity.user_id, identity.token_id)
    return await admission.kept(admission.GRANTS, key, lambda: _may_use(*key))


async def caller_policy(call: Call) -> policy.CallerPolicy:
    """The connection's policy as it applies to the caller."""
    key = (call.connection.id, call.identity.user_id)
    return await admission.kept(admission.POLICIES, key, lambda: _load_policy(*key))


async def decide(call: Call) -> tuple[Decision, str]:
    """Policy: whether the call may go upstream, and why not if it may not.

    Only tools/call is subject to policy; tools/list is filtered to match (see
    filter_tool_list). A pinned connection refuses tools that are new or changed since
    an admin approved them, whatever the rules say.
    """
    tool = call.message.target_name
    if call.message.method != "tools/call" or tool is None:
        return Decision.ALLOW, ""
    key = call.connection.id
    view = await admission.kept(admission.CATALOGS, key, lambda: _catalog(key))
    allowed, reason = view.allows(tool)
    if not allowed:
        return Decision.DENY, reason
    decision = (await caller_policy(call)).decide(tool, view.annotations(tool))
    return Decision(decision.action), decision.reason


def arguments_digest(call: Call) -> str:
    return digest_arguments(call.message.params.get("arguments"))


async def reuse_approval(call: Call) -> bool:
    """The identical retry of a call whose approval came after it timed out uses it once."""
    approval = await _reusable(
        connection_id=call.connection.id,
        token_id=call.identity.token_id,
        tool=call.message.target_name or "",
        arguments_digest=arguments_digest(call),
    )
    if approval is not None and await _consume(approval.pk):
        call.approval_id = approval.pk
        return True
    return False


async def hold(call: Call) -> int:
    """Create the approval request for a held call; returns its id."""
    arguments = call.message.params.get("arguments")
    masked = recorder.redact(arguments, call.audit_masker)
    approval = await _request_approval(
        connection_id=call.connection.id,
        tool=call.message.target_name or "",
        arguments=masked,
        arguments_digest=arguments_digest(call),
        user_id=call.identity.user_id,
        token_id=call.identity.token_id,
        run_label=call.identity.run_label,
        call_id=str(call.call_id),
    )
    return approval.pk


async def await_decision(call: Call, approval_id: int, hold_seconds: float) -> str:
    status = await wait_for_decision(approval_id, hold_seconds)
    if status == "approved" and await _consume(approval_id):
        call.approval_id = approval_id
    elif status == "approved":
        # Another call (an identical retry) used the approval first.
        status = "used"
    return status


async def filter_tool_list(call: Call, payload: dict[str, Any]) -> dict[str, Any]:
    """tools/list as this caller may see it: pinned tools only, denied tools left out.

    The stored catalog learns every definition the upstream offers, new or changed."""
    result = payload.get("result")
    tools = result.get("tools") if isinstance(result, dict) else None
    if not isinstance(tools, list):
        return payload
    view = await _observe(call.connection.id, tools)
    offered = [t for t in tools if isinstance(t, dict) and view.allows(str(t.get("name")))[0]]
    visible = (await caller_policy(call)).visible(offered)
    filtered = {**result, "tools": visible}
    if call.era == "modern":
        # What one caller sees depends on policy: never cache it for another.
        filtered["cacheScope"] = "private"
    return {**payload, "result": filtered}


async def record_request(call: Call) -> None:
    """Write-ahead audit record, committed before anything is forwarded upstream.

    Raising here fails the call closed: the agent gets an error and nothing is sent.
    """
    await recorder.record_request(call)


async def record_message(call: Call) -> None:
    """A notification or response from the agent, recorded before it is forwarded."""
    await recorder.record_message(call)


_maskers = sync_to_async(
    lambda connection_id, tool: (
        masking.masker_for(connection_id, tool, masking.AGENT),
        masking.masker_for(connection_id, tool, masking.AUDIT),
    ),
    thread_sensitive=False,
)

# Masking a result this large runs in a worker thread so it cannot stall the event loop.
OFFLOAD_BYTES = 128 * 1024


async def prepare(call: Call) -> None:
    """Load the masking rules in scope for the call (cached; a query every few seconds)."""
    connection_id, tool = call.connection.id, call.message.target_name
    agent = masking.cached_masker(connection_id, tool, masking.AGENT)
    audit = masking.cached_masker(connection_id, tool, masking.AUDIT)
    if agent is None or audit is None:
        agent, audit = await _maskers(connection_id, tool)
    call.agent_masker, call.audit_masker = agent, audit
    call.same_masking = (
        agent.pattern_rules == audit.pattern_rules and agent.key_rules == audit.key_rules
    )


def _output_schema(call: Call) -> Any:
    """The called tool's output schema: as this process last saw it in a tools/list answer,
    else as the catalog holds it (another process may have seen the list)."""
    tool = call.message.target_name
    schema = masking.output_schema(call.connection.id, tool)
    if schema is None and tool:
        view: catalog.View | None = admission.peek(admission.CATALOGS, call.connection.id)
        schema = view.output_schema(tool) if view is not None else None
    return schema


async def mask(
    call: Call, payload: dict[str, Any], size_hint: int = 0, *, final: bool = False
) -> dict[str, Any]:
    """Masking of what flows back to the agent (results, notifications, requests).

    final: payload is the upstream's answer to a tools/call as it is (only its id
    changed), which the audit trail may then store as the agent got it."""
    masker = call.agent_masker
    if call.message.method == "tools/list" and isinstance(payload.get("result"), dict):
        masking.remember_output_schemas(call.connection.id, payload["result"])
    if masker is None or masker.empty:
        return payload
    schema = _output_schema(call) if call.message.method == "tools/call" else None
    # With an output schema the agent's copy may hold typed placeholders (a masked number
    # becomes 0); the audit trail then masks the original itself.
    reuse = final and call.same_masking and schema is None
    report = Report() if reuse else call.agent_report
    if size_hint > OFFLOAD_BYTES:
        masked = await asyncio.to_thread(masking.mask_payload, masker, payload, report, schema)
    else:
        masked = masking.mask_payload(masker, payload, report, schema)
    if reuse:
        call.agent_report.counts.update(report.counts)
        call.audit_payload, call.audit_payload_report = masked, report
    return masked


async def record_outcome(call: Call, outcome: Outcome, response: dict[str, Any] | None) -> None:
    """The call's one recorded outcome, written after it ended."""
    call.outcome = outcome
    await recorder.record_outcome(call, outcome.value, response)


def outcome_of(response: dict[str, Any]) -> Outcome:
    if "error" in response:
        return Outcome.ERROR
    result = response.get("result")
    if isinstance(result, dict) and result.get("isError") is True:
        return Outcome.ERROR
    return Outcome.OK
