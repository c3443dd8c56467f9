"""Who may read the audit trail, and the one set of filters the browser, the API and the
exports share.

Every query string goes through `parse_filters`, which refuses anything it does not
understand with a message naming the parameter, so a typo never silently widens a search.
Listings page by keyset on `seq`, newest first: a page costs the same at the end of a
trail of millions of records as at its start.
"""

import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, QueryDict

from console.roles import ADMIN, AUDITOR, has_role

from .models import AuditRecord, Kind, Outcome

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_SEQ = 2**63 - 1
# Gateway tokens are recorded by their display form, "mgw_<public id>…".
TOKEN_ID = re.compile(r"^(?:mgw_)?(?P<public_id>[0-9a-f]{12})…?$")
DATETIME_HELP = "Enter an ISO 8601 date and time, e.g. 2025-01-31T14:00:00Z."


def can_read_audit(user: Any) -> bool:
    return has_role(user, ADMIN, AUDITOR)


def records_visible_to(user: Any) -> QuerySet[AuditRecord]:
    """The front door: every read of the audit trail starts here."""
    if not can_read_audit(user):
        raise PermissionDenied
    return AuditRecord.objects.all()


def get_record_for_user(user: Any, seq: int) -> AuditRecord:
    record = records_visible_to(user).filter(seq=seq).first()
    if record is None:
        raise Http404(f"no audit record {seq}")
    return record


class InvalidFilters(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _storable_moment(moment: datetime) -> bool:
    # 0001-01-01 with a positive offset is a valid datetime but has no UTC equivalent.
    try:
        moment.astimezone(UTC)
    except OverflowError:
        return False
    return True


class AuditFilterForm(forms.Form):
    since = forms.DateTimeField(
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "2025-01-31T14:00Z"}),
        error_messages={"invalid": DATETIME_HELP},
    )
    until = forms.DateTimeField(
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "UTC unless an offset is given"}),
        error_messages={"invalid": DATETIME_HELP},
    )
    connection = forms.CharField(required=False, max_length=64)
    user = forms.CharField(required=False, max_length=150)
    token = forms.CharField(required=False, max_length=40)
    run = forms.CharField(required=False, max_length=200)
    tool = forms.CharField(
        required=False,
        max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "part of the tool name"}),
    )
    outcome = forms.ChoiceField(required=False, choices=[("", "any"), *Outcome.choices])
    kind = forms.ChoiceField(required=False, choices=[("", "any"), *Kind.choices])
    method = forms.CharField(required=False, max_length=200)
    session = forms.CharField(required=False, max_length=64)
    before = forms.IntegerField(required=False, min_value=1, max_value=MAX_SEQ)
    limit = forms.IntegerField(required=False, min_value=1, max_value=MAX_LIMIT)

    def clean_token(self) -> str:
        token: str = self.cleaned_data["token"]
        match = TOKEN_ID.match(token)
        return f"mgw_{match['public_id']}…" if match else token

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        for name in ("since", "until"):
            moment = cleaned.get(name)
            if moment is not None and not _storable_moment(moment):
                self.add_error(name, "Out of range.")
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since >= until:
            self.add_error("until", "Must be later than since.")
        return cleaned


@dataclass(frozen=True)
class AuditFilter:
    since: datetime | None = None
    until: datetime | None = None
    connection: str = ""
    user: str = ""
    token: str = ""
    run: str = ""
    tool: str = ""
    outcome: str = ""
    kind: str = ""
    method: str = ""
    session: str = ""
    before: int | None = None
    limit: int | None = None

    @property
    def page_size(self) -> int:
        return self.limit or DEFAULT_LIMIT

    def apply(self, records: QuerySet[AuditRecord]) -> QuerySet[AuditRecord]:
        """The records these filters select (all of them, ignoring `limit`)."""
        # Each equality filter is served by an index on (field, seq), see AuditRecord.Meta.
        exact = {
            "connection": self.connection,
            "username": self.user,
            "token": self.token,
            "run_label": self.run,
            "outcome": self.outcome,
            "kind": self.kind,
            "method": self.method,
            "session": self.session,
        }
        records = records.filter(**{field: value for field, value in exact.items() if value})
        if self.since:
            records = records.filter(created_at__gte=self.since)
        if self.until:
            records = records.filter(created_at__lt=self.until)
        if self.tool:
            records = records.filter(target__icontains=self.tool)
        if self.before:
            records = records.filter(seq__lt=self.before)
        return records

    def as_params(self, *, without: tuple[str, ...] = ()) -> dict[str, str]:
        """The query parameters that reproduce these filters (for links and the audit log)."""
        params: dict[str, str] = {}
        for name, value in asdict(self).items():
            if value in (None, "") or name in without:
                continue
            params[name] = value.isoformat() if isinstance(value, datetime) else str(value)
        return params


def parse_filters(query: QueryDict, *, also_allowed: tuple[str, ...] = ()) -> AuditFilter:
    """Validated filters from a query string; raises InvalidFilters on any bad parameter."""
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(query) - set(AuditFilterForm.base_fields) - set(also_allowed))
    if unknown:
        known = ", ".join(AuditFilterForm.base_fields)
        errors["__all__"] = [f"Unknown parameter(s): {', '.join(unknown)}. Known: {known}."]
    for name in AuditFilterForm.base_fields:
        if len(query.getlist(name)) > 1:
            errors[name] = ["Given more than once."]
    form = AuditFilterForm(query)
    if not form.is_valid():
        for name, messages in form.errors.items():
            errors.setdefault(name, []).extend(messages)
    if errors:
        raise InvalidFilters(errors)
    return AuditFilter(**{k: v for k, v in form.cleaned_data.items() if v not in (None, "")})


class TimelineCursor(forms.Form):
    after = forms.IntegerField(required=False, min_value=0, max_value=MAX_SEQ)


def parse_after(query: QueryDict) -> int:
    """The `after` cursor of a session timeline (records in chain order)."""
    unknown = sorted(set(query) - {"after"})
    if unknown:
        raise InvalidFilters({"__all__": [f"Unknown parameter(s): {', '.join(unknown)}."]})
    form = TimelineCursor(query)
    if not form.is_valid():
        raise InvalidFilters({k: list(v) for k, v in form.errors.items()})
    return form.cleaned_data["after"] or 0


@dataclass
class Page:
    records: list[AuditRecord]
    # The `before` cursor of the next (older) page, or None on the last page.
    next_before: int | None


def page(records: QuerySet[AuditRecord], filters: AuditFilter) -> Page:
    size = filters.page_size
    found = list(filters.apply(records).order_by("-seq")[: size + 1])
    if len(found) > size:
        return Page(found[:size], found[size - 1].seq)
    return Page(found, None)
