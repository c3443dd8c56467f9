"""The tool catalog: what each upstream offers, pinned against silent changes.

Every tools/list answer that passes the gateway is compared with the stored definitions
(digest over the tool's name, title, description, input and output schema and
annotations). Until an admin first approves a connection's tool list, tools pass as they
are. From then on a tool reaches agents only while its definition has the approved
digest: a new tool, or one whose description, schema or annotations changed, is hidden
from tools/list and its calls are refused until an admin accepts it.
"""

import difflib
import json
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils.timezone import now

from audit.canonical import canonical, sha256_hex, storable
from audit.events import record_event

from .models import Connection, ToolDefinition, ToolState

PINNED_FIELDS = ("name", "title", "description", "inputSchema", "outputSchema", "annotations")


def definition_of(tool: dict[str, Any]) -> dict[str, Any]:
    return {key: tool[key] for key in PINNED_FIELDS if key in tool}


def digest_of(tool: dict[str, Any]) -> str:
    return sha256_hex(canonical(storable(definition_of(tool))))


@dataclass(frozen=True)
class Entry:
    state: ToolState
    annotations: dict[str, Any]
    output_schema: Any = None


@dataclass(frozen=True)
class View:
    """One connection's catalog as the data path needs it."""

    pinned: bool
    tools: dict[str, Entry]

    def allows(self, tool: str) -> tuple[bool, str]:
        if not self.pinned:
            return True, ""
        entry = self.tools.get(tool)
        if entry is None or entry.state == ToolState.NEW:
            return False, f"Tool {tool!r} is not approved for this connection yet"
        if entry.state == ToolState.CHANGED:
            return False, (
                f"Tool {tool!r} changed upstream since it was approved; "
                "an admin must review the change"
            )
        return True, ""

    def annotations(self, tool: str) -> dict[str, Any] | None:
        entry = self.tools.get(tool)
        return entry.annotations if entry else None

    def output_schema(self, tool: str) -> Any:
        """The tool's output schema as last seen by any gateway process."""
        entry = self.tools.get(tool)
        return entry.output_schema if entry else None


# The digest each tool had when this process last stored what an upstream listed.
_seen_digests: dict[tuple[int, str], str] = {}


def view(connection_id: int) -> View:
    """The catalog of a connection as the database holds it (the data path keeps it
    between calls, see gateway/admission.py)."""
    pinned = Connection.objects.filter(pk=connection_id, tools_pinned_at__isnull=False).exists()
    tools = {
        row.name: Entry(
            row.state,
            row.annotations,
            row.observed.get("outputSchema") if isinstance(row.observed, dict) else None,
        )
        for row in ToolDefinition.objects.filter(connection_id=connection_id)
    }
    return View(pinned, tools)


def invalidate(connection_id: int) -> None:
    """A connection's catalog changed through this process: every kept catalog is
    dropped now and again when the change commits (other processes hear of it through
    the change notifications on Postgres)."""
    from . import admission

    admission.changed_here(ToolDefinition._meta.db_table)


def observe(connection_id: int, tools: list[dict[str, Any]]) -> View:
    """Store what the upstream just listed (only what changed) and return the catalog."""
    changed = False
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            continue
        digest = digest_of(tool)
        key = (connection_id, tool["name"])
        if _seen_digests.get(key) == digest:
            continue
        definition = storable(definition_of(tool))
        row, created = ToolDefinition.objects.get_or_create(
            connection_id=connection_id,
            name=tool["name"],
            defaults={"observed": definition, "observed_digest": digest},
        )
        if not created and row.observed_digest != digest:
            ToolDefinition.objects.filter(pk=row.pk).update(
                observed=definition, observed_digest=digest, observed_at=now()
            )
        changed = changed or created or row.observed_digest != digest
        _seen_digests[key] = digest
    if changed:
        invalidate(connection_id)
    return view(connection_id)


@transaction.atomic
def approve(connection: Connection, *, names: list[str] | None = None, actor: Any = None) -> int:
    """Accept the observed definitions (all, or the named tools); pins the connection."""
    rows = ToolDefinition.objects.select_for_update().filter(connection=connection)
    if names is not None:
        rows = rows.filter(name__in=names)
    accepted = []
    username = actor.get_username() if actor is not None and actor.is_authenticated else ""
    for row in rows:
        if row.approved_digest == row.observed_digest:
            continue
        accepted.append(
            {"tool": row.name, "from": row.approved_digest or None, "to": row.observed_digest}
        )
        row.approved = row.observed
        row.approved_digest = row.observed_digest
        row.approved_at = now()
        row.approved_by = username
        row.save(update_fields=["approved", "approved_digest", "approved_at", "approved_by"])
    if connection.tools_pinned_at is None:
        Connection.objects.filter(pk=connection.pk).update(tools_pinned_at=now())
    record_event(
        "tools.approved",
        actor=actor,
        connection=connection.slug,
        details={"accepted": accepted},
    )
    transaction.on_commit(lambda: invalidate(connection.pk))
    return len(accepted)


def diff(row: ToolDefinition) -> str:
    """A unified diff from the approved definition to the one the upstream now offers."""
    before = json.dumps(row.approved or {}, indent=2, sort_keys=True).splitlines()
    after = json.dumps(row.observed, indent=2, sort_keys=True).splitlines()
    return "\n".join(difflib.unified_diff(before, after, "approved", "offered now", lineterm=""))
