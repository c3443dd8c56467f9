"""The audit browser: the filtered list, one record, one session's timeline."""

import json
from typing import Any
from urllib.parse import urlencode

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from console.roles import ADMIN, AUDITOR, role_required

from .chain import JSON_FIELDS
from .filters import (
    AuditFilterForm,
    InvalidFilters,
    get_record_for_user,
    page,
    parse_after,
    parse_filters,
    records_visible_to,
)

TIMELINE_PAGE = 500


def _error_lines(exc: InvalidFilters) -> list[str]:
    return [
        message if field == "__all__" else f"{field}: {message}"
        for field, messages in exc.errors.items()
        for message in messages
    ]


@require_GET
@role_required(ADMIN, AUDITOR)
def record_list(request: HttpRequest) -> HttpResponse:
    form = AuditFilterForm(request.GET)
    try:
        filters = parse_filters(request.GET)
    except InvalidFilters as exc:
        context = {"form": form, "errors": _error_lines(exc)}
        return render(request, "audit/list.html", context, status=400)
    found = page(records_visible_to(request.user).defer(*JSON_FIELDS), filters)
    older = None
    if found.next_before is not None:
        older = "?" + urlencode({**filters.as_params(), "before": found.next_before})
    context: dict[str, Any] = {
        "form": form,
        "records": found.records,
        "older_url": older,
        "newest_url": "?" + urlencode(filters.as_params(without=("before",))),
        "paged": filters.before is not None,
        "export_query": urlencode(filters.as_params(without=("before", "limit"))),
    }
    return render(request, "audit/list.html", context)


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


@require_GET
@role_required(ADMIN, AUDITOR)
def record_detail(request: HttpRequest, seq: int) -> HttpResponse:
    record = get_record_for_user(request.user, seq)
    same_call = []
    if record.call_id is not None:
        same_call = list(
            records_visible_to(request.user)
            .filter(call_id=record.call_id)
            .exclude(seq=record.seq)
            .defer(*JSON_FIELDS)
            .order_by("seq")
        )
    blocks = [
        (name, _pretty(getattr(record, name)))
        for name in JSON_FIELDS
        if getattr(record, name) not in (None, {}, [])
    ]
    context = {"record": record, "same_call": same_call, "blocks": blocks}
    return render(request, "audit/detail.html", context)


@require_GET
@role_required(ADMIN, AUDITOR)
def session_timeline(request: HttpRequest, session: str) -> HttpResponse:
    if len(session) > 64 or "\x00" in session:
        raise Http404("no such session")
    try:
        after = parse_after(request.GET)
    except InvalidFilters as exc:
        context = {"session": session, "errors": _error_lines(exc)}
        return render(request, "audit/session.html", context, status=400)
    in_session = records_visible_to(request.user).filter(session=session).defer(*JSON_FIELDS)
    first = in_session.order_by("seq").first()
    if first is None:
        raise Http404("no records for this session")
    records = list(in_session.filter(seq__gt=after).order_by("seq")[: TIMELINE_PAGE + 1])
    later = None
    if len(records) > TIMELINE_PAGE:
        records = records[:TIMELINE_PAGE]
        later = "?" + urlencode({"after": records[-1].seq})
    rows = [(r, (r.created_at - first.created_at).total_seconds()) for r in records]
    context = {
        "session": session,
        "first": first,
        "rows": rows,
        "later_url": later,
        "paged": after > 0,
    }
    return render(request, "audit/session.html", context)
