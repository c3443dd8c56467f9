"""The approval queue (live), its history, and each connection's policy page."""

from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from rest_framework import serializers

from console.roles import ADMIN, APPROVER, role_required
from gateway.models import AgentToken, Connection

from . import actions
from .api import save_policy
from .models import (
    MAX_REASON,
    Action,
    Status,
    approvals_for_user,
    get_approval_for_user,
    get_connection_for_policy,
)
from .policy import PolicySpec

HISTORY_PAGE = 50
# Blank rows offered under the rules for adding new ones.
NEW_RULE_ROWS = 3


@require_GET
@role_required(ADMIN, APPROVER)
def queue(request: HttpRequest) -> HttpResponse:
    pending = approvals_for_user(request.user).queue()
    if request.GET.get("partial") == "rows":
        # The live page refreshes its rows this way after its socket reconnects.
        return render(request, "approvals/queue.html#rows", {"pending": pending})
    return render(request, "approvals/queue.html", {"pending": pending})


@require_GET
@role_required(ADMIN, APPROVER)
def row(request: HttpRequest, pk: int) -> HttpResponse:
    """One pending request's row, fetched by the live page when it hears of it."""
    approval = get_approval_for_user(request.user, pk)
    if not approval.is_pending:
        return HttpResponse(status=204)
    return render(request, "approvals/queue.html#row", {"a": approval})


class DecisionForm(forms.Form):
    decision = forms.ChoiceField(choices=[("approve", "Approve"), ("deny", "Deny")])
    reason = forms.CharField(required=False, max_length=MAX_REASON)


@require_POST
@role_required(ADMIN, APPROVER)
def decide(request: HttpRequest, pk: int) -> HttpResponse:
    approval = get_approval_for_user(request.user, pk)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        messages.error(request, f"Request {pk}: choose Approve or Deny (reason up to 1000 chars).")
        return redirect("approvals:queue")
    approve = form.cleaned_data["decision"] == "approve"
    try:
        actions.decide(
            approval, approve=approve, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except actions.ApprovalError as exc:
        messages.error(request, str(exc))
    else:
        verb = "approved" if approve else "denied"
        messages.success(request, f"Request {pk} ({approval.tool}) {verb}.")
    return redirect("approvals:queue")


class HistoryFilterForm(forms.Form):
    status = forms.ChoiceField(
        required=False, choices=[("", "any"), *[(s, s) for s in Status.values]]
    )
    connection = forms.ModelChoiceField(
        required=False, queryset=Connection.objects.all(), to_field_name="slug", empty_label="any"
    )
    tool = forms.CharField(required=False, max_length=200)
    page = forms.IntegerField(required=False, min_value=1)


@require_GET
@role_required(ADMIN, APPROVER)
def history(request: HttpRequest) -> HttpResponse:
    form = HistoryFilterForm(request.GET)
    found = approvals_for_user(request.user).order_by("-created_at", "-pk")
    status = 200
    if form.is_valid():
        if form.cleaned_data["status"]:
            found = found.filter(status=form.cleaned_data["status"])
        if form.cleaned_data["connection"]:
            found = found.filter(connection=form.cleaned_data["connection"])
        if form.cleaned_data["tool"]:
            found = found.filter(tool=form.cleaned_data["tool"])
        page_number = form.cleaned_data["page"] or 1
    else:
        found, page_number, status = found.none(), 1, 400
    page = Paginator(found, HISTORY_PAGE).get_page(page_number)
    query = request.GET.copy()
    query.pop("page", None)
    context = {"form": form, "page": page, "query": query.urlencode()}
    return render(request, "approvals/history.html", context, status=status)


def _policy_document(post: Any) -> dict[str, Any]:
    """The policy form as the API's PUT document: rules sorted by their order field."""

    def names(field: str) -> list[str]:
        return [
            name.strip()
            for name in post.get(field, "").replace("\n", ",").split(",")
            if name.strip()
        ]

    rows = []
    for index in range(int(post.get("rule_rows", "0") or 0)):
        prefix = f"rule-{index}-"
        tool = post.get(prefix + "tool", "").strip()
        if not tool or post.get(prefix + "delete"):
            continue
        try:
            order = float(post.get(prefix + "order", "") or index + 1)
        except ValueError:
            order = float(index + 1)
        rows.append(
            (
                order,
                index,
                {
                    "tool": tool,
                    "action": post.get(prefix + "action", ""),
                    "groups": names(prefix + "groups"),
                },
            )
        )
    rows.sort(key=lambda item: (item[0], item[1]))
    return {
        "default_action": post.get("default_action", ""),
        "rules": [rule for _order, _index, rule in rows],
        "grants": {
            "users": names("grant_users"),
            "groups": names("grant_groups"),
            "tokens": names("grant_tokens"),
        },
    }


def _error_lines(detail: Any, prefix: str = "") -> list[str]:
    if isinstance(detail, dict):
        return [
            line
            for key, value in detail.items()
            for line in _error_lines(value, f"{prefix}{key}: ")
        ]
    if isinstance(detail, list):
        lines = []
        for index, item in enumerate(detail):
            if isinstance(item, dict):
                lines += _error_lines(item, f"{prefix.rstrip(': ')}[{index}] ")
            else:
                lines += _error_lines(item, prefix)
        return lines
    return [f"{prefix}{detail}"]


@require_http_methods(["GET", "POST"])
@role_required(ADMIN)
def policy(request: HttpRequest, slug: str) -> HttpResponse:
    connection = get_connection_for_policy(request.user, slug)
    errors: list[str] = []
    if request.method == "POST":
        document = _policy_document(request.POST)
        try:
            save_policy(connection, document, request.user)
        except serializers.ValidationError as exc:
            errors = _error_lines(exc.detail)
        else:
            messages.success(request, f"Policy of {connection.slug} saved.")
            return redirect(reverse("approvals:policy", args=[connection.slug]))
        spec = PolicySpec(
            default_action=document["default_action"],
            rules=(),
            grant_users=tuple(document["grants"]["users"]),
            grant_groups=tuple(document["grants"]["groups"]),
            grant_tokens=tuple(document["grants"]["tokens"]),
        )
        rules = document["rules"]
    else:
        spec = PolicySpec.of(connection)
        rules = [r for r in spec.as_dict()["rules"]]
    rows = [*rules, *[{"tool": "", "action": "", "groups": []}] * NEW_RULE_ROWS]
    context = {
        "connection": connection,
        "spec": spec,
        "rows": rows,
        "actions": Action.choices,
        "errors": errors,
        "tokens": AgentToken.objects.active()
        .select_related("user", "connection")
        .order_by("user", "pk")[:200],
    }
    return render(request, "approvals/policy.html", context, status=400 if errors else 200)
