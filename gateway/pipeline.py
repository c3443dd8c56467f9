"""The steps every agent request passes through, in DESIGN.md's order.

authenticate -> parse -> policy -> audit (write-ahead) -> forward -> mask -> audit

Authentication and parsing happen in `endpoint`; forwarding in `upstream`. The hooks
here are the places where policy, approvals, audit and masking plug in: each transport
calls them in the same order, so every transport gets the same behaviour.
"""

import enum
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from audit import recorder

from .auth import Identity
from .jsonrpc import Message


class Decision(enum.Enum):
    ALLOW = "allow"
    DENY = "deny"
    HOLD = "hold"


class Outcome(enum.StrEnum):
    OK = "ok"
    ERROR = "error"
    DENIED = "denied"
    EXPIRED = "expired"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What the data path needs of a connection, read once per request."""

    id: int
    slug: str
    url: str
    enabled: bool
    headers: dict[str, str]
    stamp: str


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

    @property
    def latency_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000


async def decide(call: Call) -> tuple[Decision, str]:
    """Policy: whether the call may go upstream, and why not if it may not."""
    return Decision.ALLOW, ""


async def record_request(call: Call) -> None:
    """Write-ahead audit record, committed before anything is forwarded upstream.

    Raising here fails the call closed: the agent gets an error and nothing is sent.
    """
    await recorder.record_request(call)


async def record_message(call: Call) -> None:
    """A notification or response from the agent, recorded before it is forwarded."""
    await recorder.record_message(call)


def mask(call: Call, payload: dict[str, Any]) -> dict[str, Any]:
    """Masking of what flows back to the agent (results, notifications, requests)."""
    return payload


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
