"""Console and system actions as audit events (never with a secret in them)."""

from typing import Any

from . import chain
from .models import AuditRecord, Kind


def record_event(
    event: str,
    *,
    actor: Any = None,
    client_address: str = "",
    user_agent: str = "",
    connection: str = "",
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one event, inside the caller's transaction when there is one."""
    is_user = actor is not None and getattr(actor, "is_authenticated", False)
    return chain.append(
        kind=Kind.EVENT,
        event=event,
        user_id=actor.pk if is_user else None,
        username=actor.get_username() if is_user else "",
        client_address=client_address[:64],
        user_agent=user_agent[:500],
        connection=connection,
        details=details or {},
    )
