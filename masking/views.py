import json

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from console.roles import ADMIN, role_required
from gateway.models import Connection

from . import actions, service
from .engine import Report
from .forms import MaskingRuleForm, PreviewForm
from .models import MaskingRule


@role_required(ADMIN)
def rule_list(request: HttpRequest) -> HttpResponse:
    rules = MaskingRule.objects.select_related("connection").in_evaluation_order()
    return render(
        request,
        "masking/rules.html",
        {"rules": rules, "connections": Connection.objects.all(), "preview": PreviewForm()},
    )


@role_required(ADMIN)
def rule_edit(request: HttpRequest, pk: int | None = None) -> HttpResponse:
    rule = get_object_or_404(MaskingRule, pk=pk) if pk is not None else MaskingRule()
    form = MaskingRuleForm(request.POST or None, instance=rule)
    if request.method == "POST" and form.is_valid():
        try:
            actions.save_rule(form.instance, actor=request.user)
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            messages.success(request, f"Saved rule “{form.instance.name}”.")
            return redirect("masking:list")
    return render(request, "masking/rule_form.html", {"form": form, "rule": rule})


@require_POST
@role_required(ADMIN)
def rule_toggle(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(MaskingRule, pk=pk)
    rule.enabled = not rule.enabled
    actions.save_rule(rule, actor=request.user)
    return redirect("masking:list")


@require_POST
@role_required(ADMIN)
def rule_delete(request: HttpRequest, pk: int) -> HttpResponse:
    rule = get_object_or_404(MaskingRule, pk=pk)
    actions.delete_rule(rule, actor=request.user)
    messages.success(request, f"Deleted rule “{rule.name}”.")
    return redirect("masking:list")


@require_POST
@role_required(ADMIN)
def preview(request: HttpRequest) -> HttpResponse:
    """What the agent would see and what the audit trail would store for a sample."""
    form = PreviewForm(request.POST)
    if not form.is_valid():
        return render(request, "masking/_preview.html", {"form": form}, status=400)
    service.invalidate()
    value = form.sample_value()
    connection_id = form.cleaned_data.get("connection")
    tool = form.cleaned_data.get("tool") or None
    results = {}
    for audience in (service.AGENT, service.AUDIT):
        report = Report()
        masker = service.masker_for(connection_id, tool, audience)
        masked = masker.mask_json(value, report)
        results[audience] = {
            "output": masked if isinstance(masked, str) else json.dumps(masked, indent=2),
            "report": report.as_dict(),
        }
    return render(request, "masking/_preview.html", {"form": form, "results": results})
