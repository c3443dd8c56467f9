"""Console pages: the dashboard, connections (with "Test connection"), tokens."""

import asyncio
import contextlib
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connection as db_connection
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import TruncMinute
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.timezone import now
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from approvals.models import Approval
from audit.filters import can_read_audit, records_visible_to
from audit.models import AuditRecord, Kind
from gateway import actions, catalog, protocol
from gateway.legacy_sse import LegacySseUpstream
from gateway.models import AgentToken, Connection, Era, ToolDefinition, Transport
from gateway.stdio import StdioUpstream
from gateway.upstream import InitializeRefused, SessionExpired, Upstream, UpstreamFailure

from .access import (
    connections_for_user,
    get_connection_for_user,
    get_token_for_user,
    may_issue_for_others,
    require_console_role,
    tokens_for_user,
)
from .forms import ConnectionForm, CredentialFormSet, EnvFormSet, TokenForm, attach_errors
from .roles import ADMIN, APPROVER, has_role
from .serializers import agent_url, public_base

log = logging.getLogger(__name__)

# -- health --------------------------------------------------------------------------

# Outcomes that say the upstream itself failed (as opposed to a tool that reported an
# error, or policy that refused a call).
UPSTREAM_FAILURES = ("upstream_error", "timeout")
ERROR_OUTCOMES = ("error", "upstream_error", "timeout", "unknown")


def with_health(connections: QuerySet[Connection]) -> QuerySet[Connection]:
    """Each connection with the outcome and time of the last call through it.

    Only these two facts leave the audit trail here, for everyone who may see the
    connection: they say whether the upstream works, not who called it or with what.
    Each subquery walks the (connection, seq) index backwards to the newest call outcome.
    """
    last_call = AuditRecord.objects.filter(
        connection=OuterRef("slug"), kind=Kind.CALL_OUTCOME
    ).order_by("-seq")
    return connections.annotate(
        last_outcome=Subquery(last_call.values("outcome")[:1]),
        last_call_at=Subquery(last_call.values("created_at")[:1]),
    )


def health_of(connection: Any) -> tuple[str, str]:
    """(css class, words) for a connection's health."""
    if not connection.enabled:
        return "off", "disabled"
    outcome = getattr(connection, "last_outcome", None)
    if outcome is None:
        return "muted", "no calls yet"
    if outcome in UPSTREAM_FAILURES:
        return "bad", f"failing ({outcome.replace('_', ' ')})"
    return "ok", "reachable"


# -- dashboard -------------------------------------------------------------------------

WINDOW = timedelta(hours=24)
BUCKET = timedelta(minutes=15)
TOP = 8
CHART_WIDTH = 960
CHART_HEIGHT = 120


@dataclass
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: float
    title: str
    href: str


@dataclass
class TimeChart:
    """A bar per time bucket, sized for an SVG of CHART_WIDTH x CHART_HEIGHT."""

    title: str
    unit: str
    bars: list[Bar]
    peak: float
    total: int
    href: str
    css: str = ""


@dataclass
class Ranked:
    label: str
    sublabel: str
    count: int
    percent: float
    detail: str
    href: str


@dataclass
class Traffic:
    since: datetime
    until: datetime
    calls: int = 0
    denied: int = 0
    errors: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    error_links: list[dict[str, Any]] = field(default_factory=list)
    rate_now: float = 0.0
    peak_per_minute: int = 0
    charts: list[TimeChart] = field(default_factory=list)
    top_tools: list[Ranked] = field(default_factory=list)
    top_callers: list[Ranked] = field(default_factory=list)


def audit_link(**params: Any) -> str:
    query = {
        k: v.isoformat() if isinstance(v, datetime) else str(v)
        for k, v in params.items()
        if v not in (None, "")
    }
    return f"{reverse('audit:list')}?{urlencode(query)}"


def _floor(moment: datetime, step: timedelta) -> datetime:
    seconds = int(step.total_seconds())
    epoch = int(moment.timestamp())
    return moment - timedelta(seconds=epoch % seconds, microseconds=moment.microsecond)


def _time_chart(
    title: str,
    unit: str,
    counts: list[int],
    starts: list[datetime],
    end: datetime,
    *,
    outcome: str = "",
    css: str = "",
    as_rate: bool = False,
) -> TimeChart:
    slot = CHART_WIDTH / len(counts)
    current = now()
    values = []
    for start, count in zip(starts, counts, strict=True):
        if as_rate:
            minutes = max(1.0, min(BUCKET, current - start).total_seconds() / 60)
            values.append(round(count / minutes, 2))
        else:
            values.append(float(count))
    peak = max(values, default=0.0)
    bars = []
    for index, (start, count, value) in enumerate(zip(starts, counts, values, strict=True)):
        height = max(1.5, value / peak * (CHART_HEIGHT - 4)) if value and peak else 0.0
        stop = min(start + BUCKET, end)
        label = f"{start:%H:%M} to {stop:%H:%M} UTC: {count} call{'s' if count != 1 else ''}"
        if as_rate:
            label += f" ({value:g}/min)"
        bars.append(
            Bar(
                x=round(index * slot + 0.5, 2),
                y=round(CHART_HEIGHT - height, 2),
                width=round(max(slot - 1, 0.5), 2),
                height=round(height, 2),
                value=value,
                title=label,
                href=audit_link(kind=Kind.CALL_OUTCOME, outcome=outcome, since=start, until=stop),
            )
        )
    return TimeChart(
        title=title,
        unit=unit,
        bars=bars,
        peak=peak,
        total=sum(counts),
        href=audit_link(kind=Kind.CALL_OUTCOME, outcome=outcome, since=starts[0]),
        css=css,
    )


def _ranked(rows: list[dict[str, Any]], label: Any, sublabel: Any, href: Any) -> list[Ranked]:
    top = max((row["n"] for row in rows), default=0)
    ranked = []
    for row in rows:
        notes = []
        if row["denied"]:
            notes.append(f"{row['denied']} denied")
        if row["failed"]:
            notes.append(f"{row['failed']} failed")
        ranked.append(
            Ranked(
                label=label(row),
                sublabel=sublabel(row),
                count=row["n"],
                percent=round(row["n"] / top * 100, 1) if top else 0,
                detail=", ".join(notes),
                href=href(row),
            )
        )
    return ranked


def traffic(records: QuerySet[AuditRecord]) -> Traffic:
    """The last 24 h of calls in 15-minute buckets, from three aggregate queries that are
    each bounded by time (the audit_by_time index)."""
    current = now()
    end = _floor(current, BUCKET) + BUCKET
    start = end - WINDOW
    outcomes = records.filter(created_at__gte=start, kind=Kind.CALL_OUTCOME)
    stats = Traffic(since=start, until=end)

    per_minute: dict[datetime, int] = defaultdict(int)
    buckets = int(WINDOW / BUCKET)
    starts = [start + BUCKET * i for i in range(buckets)]
    calls, denied, errors = [0] * buckets, [0] * buckets, [0] * buckets
    by_outcome: dict[str, int] = defaultdict(int)
    rows = (
        outcomes.annotate(minute=TruncMinute("created_at"))
        .values("minute", "outcome")
        .annotate(n=Count("seq"))
        .order_by()
    )
    recent = current - timedelta(minutes=5)
    recent_calls = 0
    for row in rows:
        minute, outcome, n = row["minute"], row["outcome"], row["n"]
        index = min(buckets - 1, max(0, int((minute - start) / BUCKET)))
        per_minute[minute] += n
        by_outcome[outcome] += n
        calls[index] += n
        if outcome == "denied":
            denied[index] += n
        elif outcome in ERROR_OUTCOMES:
            errors[index] += n
        if minute >= recent:
            recent_calls += n
    stats.calls = sum(calls)
    stats.denied = sum(denied)
    stats.errors = sum(errors)
    stats.by_outcome = dict(sorted(by_outcome.items(), key=lambda item: -item[1]))
    stats.error_links = [
        {"outcome": o, "count": n, "href": audit_link(outcome=o, since=start)}
        for o, n in stats.by_outcome.items()
        if o in ERROR_OUTCOMES
    ]
    stats.peak_per_minute = max(per_minute.values(), default=0)
    stats.rate_now = round(recent_calls / 5, 1)
    stats.charts = [
        _time_chart("Calls per minute", "/min", calls, starts, end, as_rate=True),
        _time_chart("Denials", "", denied, starts, end, outcome="denied", css="denied"),
        _time_chart("Errors", "", errors, starts, end, css="errors"),
    ]

    counted = {
        "n": Count("seq"),
        "denied": Count("seq", filter=Q(outcome="denied")),
        "failed": Count("seq", filter=Q(outcome__in=ERROR_OUTCOMES)),
    }
    tools = list(
        outcomes.filter(method="tools/call")
        .values("connection", "target")
        .annotate(**counted)
        .order_by("-n", "target")[:TOP]
    )
    stats.top_tools = _ranked(
        tools,
        label=lambda row: row["target"] or "(unnamed)",
        sublabel=lambda row: row["connection"],
        href=lambda row: audit_link(
            connection=row["connection"], tool=row["target"], method="tools/call", since=start
        ),
    )
    callers = list(outcomes.values("username").annotate(**counted).order_by("-n", "username")[:TOP])
    stats.top_callers = _ranked(
        callers,
        label=lambda row: row["username"] or "(unknown)",
        sublabel=lambda row: "",
        href=lambda row: audit_link(user=row["username"], kind=Kind.CALL_OUTCOME, since=start),
    )
    return stats


@require_GET
@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The dashboard: traffic of the last 24 h for those who may read the audit trail,
    the approval queue for approvers, and connections and tokens for everyone."""
    require_console_role(request.user)
    connections = list(with_health(connections_for_user(request.user)))
    health = [(c, *health_of(c)) for c in connections]
    context: dict[str, Any] = {
        "connections": connections,
        "health": health,
        "failing": [c for c, css, _ in health if css == "bad"],
        "enabled_count": sum(1 for c in connections if c.enabled),
        "my_tokens": AgentToken.objects.active().filter(user=request.user).count(),
        "can_read_audit": can_read_audit(request.user),
        "can_decide": has_role(request.user, ADMIN, APPROVER),
        "is_admin": has_role(request.user, ADMIN),
        "chart_width": CHART_WIDTH,
        "chart_height": CHART_HEIGHT,
    }
    if context["can_read_audit"]:
        context["traffic"] = traffic(records_visible_to(request.user))
    if context["can_decide"]:
        context["pending"] = Approval.objects.pending().count()
    return render(request, "console/dashboard.html", context)


def healthz(request: HttpRequest) -> JsonResponse:
    with db_connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return JsonResponse({"status": "ok"})


# -- connections -------------------------------------------------------------------


@require_GET
@login_required
def connection_list(request: HttpRequest) -> HttpResponse:
    rows = []
    for connection in with_health(connections_for_user(request.user)):
        css, words = health_of(connection)
        rows.append(
            {
                "c": connection,
                "health_css": css,
                "health": words,
                "agent_url": agent_url(request, connection.slug),
            }
        )
    return render(
        request,
        "console/connections.html",
        {"rows": rows, "is_admin": has_role(request.user, ADMIN)},
    )


@require_http_methods(["GET", "POST"])
@login_required
def connection_new(request: HttpRequest) -> HttpResponse:
    if not has_role(request.user, ADMIN):
        raise PermissionDenied
    return _connection_form(request, None)


@require_http_methods(["GET", "POST"])
@login_required
def connection_edit(request: HttpRequest, slug: str) -> HttpResponse:
    return _connection_form(request, get_connection_for_user(request.user, slug, write=True))


def _connection_form(request: HttpRequest, connection: Connection | None) -> HttpResponse:
    data = request.POST if request.method == "POST" else None
    form = ConnectionForm(data, connection=connection)
    credentials = CredentialFormSet(
        data,
        prefix="credentials",
        stored_names=list(connection.header_names) if connection else [],
    )
    environment = EnvFormSet(
        data, prefix="env", stored_names=list(connection.env_names) if connection else []
    )
    if data is not None:
        valid = [form.is_valid(), credentials.is_valid(), environment.is_valid()]
        if all(valid):
            headers = credentials.headers(connection.get_headers() if connection else {})
            env = environment.headers(connection.get_env() if connection else {})
            try:
                saved, created = actions.save_connection(
                    slug=connection.slug if connection else form.cleaned_data["slug"],
                    name=form.cleaned_data["name"],
                    transport=form.cleaned_data["transport"],
                    url=form.cleaned_data["url"],
                    enabled=form.cleaned_data["enabled"],
                    headers=headers,
                    stdio=form.stdio_spec(env),
                    create_only=connection is None,
                    actor=request.user,
                )
            except ValidationError as exc:
                attach_errors(form, exc)
            else:
                verb = "Created" if created else "Saved"
                messages.success(request, f"{verb} connection {saved.slug}.")
                return redirect("connection-edit", slug=saved.slug)
    status = 400 if data is not None else 200
    return render(
        request,
        "console/connection_form.html",
        {
            "form": form,
            "credentials": credentials,
            "environment": environment,
            "connection": connection,
            "data_lost": data is not None,
        },
        status=status,
    )


@require_POST
@login_required
def connection_toggle(request: HttpRequest, slug: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, slug, write=True)
    saved, _ = actions.save_connection(
        slug=connection.slug,
        name=connection.name,
        url=connection.url,
        enabled=not connection.enabled,
        actor=request.user,
    )
    state = "enabled" if saved.enabled else "disabled"
    messages.success(request, f"Connection {saved.slug} is {state}.")
    if request.POST.get("next") == "edit":
        return redirect("connection-edit", slug=saved.slug)
    return redirect("connections")


@require_GET
@login_required
def connection_tools(request: HttpRequest, slug: str) -> HttpResponse:
    """The tool catalog of a connection: pin state, and what changed since approval."""
    connection = get_connection_for_user(request.user, slug)
    tools = [
        {"row": row, "diff": catalog.diff(row) if row.state == "changed" else ""}
        for row in ToolDefinition.objects.filter(connection=connection)
    ]
    return render(
        request,
        "console/connection_tools.html",
        {"connection": connection, "tools": tools, "can_approve": has_role(request.user, ADMIN)},
    )


@require_POST
@login_required
def approve_tools(request: HttpRequest, slug: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, slug, write=True)
    names = request.POST.getlist("tool") or None
    count = catalog.approve(connection, names=names, actor=request.user)
    messages.success(request, f"Approved {count} tool definition(s) of {connection.slug}.")
    return redirect("connection-tools", slug=connection.slug)


# -- "Test connection" -----------------------------------------------------------------

# The whole test (discover or initialize, and every tools/list page) ends within this.
TEST_TIMEOUT_SECONDS = 15.0
MAX_TOOL_PAGES = 20


@dataclass
class TestResult:
    ok: bool = False
    error: str = ""
    era: str | None = None
    protocol_version: str = ""
    server_info: dict[str, Any] = field(default_factory=dict)
    instructions: str = ""
    capabilities: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    tools: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "error": self.error,
            "era": self.era,
            "protocol_version": self.protocol_version,
            "server_info": self.server_info,
            "instructions": self.instructions,
            "capabilities": self.capabilities,
            "latency_ms": self.latency_ms,
            "tools": self.tools,
        }


class _ListFailed(Exception):
    pass


async def _list_tools(upstream: Any, *, modern: bool, session: Any) -> list[dict[str, Any]]:
    tools: list[dict[str, Any]] = []
    cursor = None
    for page in range(MAX_TOOL_PAGES):
        params: dict[str, Any] = {"cursor": cursor} if cursor else {}
        if modern:
            params = protocol.modern_params(
                params, {"capabilities": {}, "clientInfo": protocol.GATEWAY_CLIENT_INFO}
            )
        request = {
            "jsonrpc": "2.0",
            "id": f"gateway-test-{page}",
            "method": "tools/list",
            "params": params,
        }
        if modern:
            reply = await upstream.post(
                request,
                protocol_version=protocol.MODERN_VERSION,
                extra=protocol.modern_headers("tools/list", params),
            )
        else:
            reply = await upstream.post(
                request, session_id=session.session_id, protocol_version=session.protocol_version
            )
        message = await reply.first_response()
        result = message.payload.get("result")
        if not isinstance(result, dict):
            error = message.payload.get("error")
            detail = error.get("message") if isinstance(error, dict) else None
            raise _ListFailed(f"tools/list failed: {detail or 'no result'}")
        tools.extend(tool for tool in result.get("tools") or [] if isinstance(tool, dict))
        cursor = result.get("nextCursor")
        if not isinstance(cursor, str) or not cursor:
            break
    return tools


def _fresh_upstream(connection: Connection) -> Any:
    """A client of its own for the test, closed afterwards (the data path's are shared)."""
    if connection.transport == Transport.STDIO:
        return StdioUpstream(
            slug=connection.slug,
            command=connection.command,
            args=[str(a) for a in connection.args or ()],
            cwd=connection.cwd,
            env=connection.get_env(),
            max_processes=1,
        )
    if connection.transport == Transport.SSE:
        return LegacySseUpstream(
            slug=connection.slug, url=connection.url, headers=connection.get_headers()
        )
    return Upstream(slug=connection.slug, url=connection.url, headers=connection.get_headers())


async def _probe(connection: Connection) -> TestResult:
    result = TestResult()
    started = time.monotonic()
    upstream = _fresh_upstream(connection)
    session = None
    try:
        async with asyncio.timeout(TEST_TIMEOUT_SECONDS):
            modern = await upstream.is_modern()
            if modern:
                discovered = await upstream.discover_result() or {}
                info = protocol.initialize_from_discover(discovered, protocol.MODERN_VERSION)
                result.era = Era.MODERN
                result.protocol_version = protocol.MODERN_VERSION
            else:
                session = await upstream.initialize(protocol.gateway_initialize_params())
                info = session.initialize_result
                result.era = Era.LEGACY
                result.protocol_version = session.protocol_version
            server_info = info.get("serverInfo")
            result.server_info = server_info if isinstance(server_info, dict) else {}
            instructions = info.get("instructions")
            result.instructions = instructions if isinstance(instructions, str) else ""
            capabilities = info.get("capabilities")
            result.capabilities = sorted(capabilities) if isinstance(capabilities, dict) else []
            result.tools = await _list_tools(upstream, modern=modern, session=session)
            result.ok = True
    except TimeoutError:
        result.error = f"The upstream did not finish answering within {TEST_TIMEOUT_SECONDS:g} s."
    except UpstreamFailure as failure:
        result.error = failure.message
    except InitializeRefused as refused:
        result.error = f"The upstream refused initialize: {refused}"
    except SessionExpired:
        result.error = "The upstream lost the session it had just opened."
    except _ListFailed as failed:
        result.error = str(failed)
    except Exception as exc:
        # Whatever an arbitrary upstream does, the admin gets an answer, not a 500.
        log.exception("testing connection %s failed", connection.slug)
        result.error = f"The upstream's answer could not be used ({type(exc).__name__})."
    finally:
        result.latency_ms = round((time.monotonic() - started) * 1000, 1)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                if session is not None:
                    await upstream.end_session(session)
        await upstream.aclose()
    return result


def _tool_row(tool: dict[str, Any], view: catalog.View) -> dict[str, Any]:
    annotations = tool.get("annotations") if isinstance(tool.get("annotations"), dict) else {}
    assert isinstance(annotations, dict)
    entry = view.tools.get(tool["name"])
    title = tool.get("title") or annotations.get("title") or ""
    description = tool.get("description")
    return {
        "name": tool["name"],
        "title": title if isinstance(title, str) else "",
        "description": description if isinstance(description, str) else "",
        "annotations": annotations,
        "state": str(entry.state) if entry else "new",
    }


def run_connection_test(connection: Connection, *, actor: Any) -> TestResult:
    """Contact the upstream as the gateway would (discover, else initialize), list its
    tools into the catalog, remember its era, and record the test in the audit trail."""
    result = async_to_sync(_probe)(connection)
    if result.ok:
        view = catalog.observe(connection.pk, result.tools)
        result.tools = [_tool_row(tool, view) for tool in result.tools if "name" in tool]
    actions.record_connection_test(
        connection,
        era=result.era if result.ok else None,
        summary={
            "ok": result.ok,
            "error": result.error,
            "tools": len(result.tools),
            "latency_ms": result.latency_ms,
        },
        actor=actor,
    )
    return result


@require_POST
@login_required
def connection_test(request: HttpRequest, slug: str) -> HttpResponse:
    connection = get_connection_for_user(request.user, slug, write=True)
    result = run_connection_test(connection, actor=request.user)
    context = {"connection": connection, "result": result}
    if request.headers.get("HX-Request"):
        return render(request, "console/_test_result.html", context)
    return render(request, "console/connection_test.html", context)


# -- tokens --------------------------------------------------------------------------


def _client_config(request: HttpRequest, token: AgentToken, secret: str) -> dict[str, Any]:
    """Ready-to-paste client configuration for a newly issued token."""
    if token.connection is not None:
        slugs = [token.connection.slug]
    else:
        slugs = list(
            connections_for_user(request.user)
            .filter(enabled=True)
            .values_list("slug", flat=True)[:10]
        ) or ["<connection>"]
    servers = {
        slug: {
            "type": "http",
            "url": agent_url(request, slug),
            "headers": {"Authorization": f"Bearer {secret}"},
        }
        for slug in slugs
    }
    python = PYTHON_SNIPPET.format(url=agent_url(request, slugs[0]), token=secret)
    curl = f'curl -H "Authorization: Bearer {secret}" {public_base(request)}/api/connections/'
    return {
        "mcp_json": json.dumps({"mcpServers": servers}, indent=2),
        "python": python,
        "curl": curl,
    }


PYTHON_SNIPPET = """import asyncio

import httpx2  # the HTTP client of the MCP Python SDK (pip install mcp)
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL = "{url}"
TOKEN = "{token}"


async def main() -> None:
    http = httpx2.AsyncClient(
        headers={{"Authorization": f"Bearer {{TOKEN}}"}},
        # Answers may stream for a while (held calls wait for a human).
        timeout=httpx2.Timeout(30, read=300),
    )
    async with http, Client(streamable_http_client(URL, http_client=http)) as client:
        tools = await client.list_tools()
        print([tool.name for tool in tools.tools])


asyncio.run(main())
"""


@never_cache
@require_http_methods(["GET", "POST"])
@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """Issue a token (shown once, on the response to the POST only) and list tokens."""
    tokens = tokens_for_user(request.user)
    for_others = may_issue_for_others(request.user)
    form = TokenForm(
        request.POST if request.method == "POST" else None,
        user=request.user,
        may_issue_for_others=for_others,
    )
    issued = None
    status = 200
    if request.method == "POST":
        if form.is_valid():
            token, secret = actions.issue_token(
                user=form.token_owner(),
                connection=form.cleaned_data["connection"],
                ttl=form.ttl_delta(),
                run_label=form.cleaned_data["run_label"],
                scopes=form.cleaned_data["scopes"],
                actor=request.user,
            )
            issued = {
                "token": token,
                "secret": secret,
                "config": _client_config(request, token, secret),
            }
            form = TokenForm(user=request.user, may_issue_for_others=for_others)
        else:
            status = 400
    return render(
        request,
        "console/tokens.html",
        {
            "form": form,
            "issued": issued,
            "tokens": tokens.order_by("-created_at")[:200],
            "show_owner": for_others,
            "current": now(),
        },
        status=status,
    )


@require_POST
@login_required
def token_revoke(request: HttpRequest, public_id: str) -> HttpResponse:
    token = get_token_for_user(request.user, public_id)
    if actions.revoke_token(token, actor=request.user):
        messages.success(request, f"Revoked {token.display}.")
    else:
        messages.info(request, f"{token.display} was already revoked.")
    return redirect("tokens")
