"""Console forms: connections with write-only credentials, and run tokens.

Credential values travel one way only: into the encrypted store. The inputs that take
them never render a value (not even the one just typed, when the form comes back with an
error), and a stored header appears by its name alone, with an empty value meaning
"keep what is stored".
"""

import re
from datetime import timedelta
from typing import Any

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator

from gateway.actions import SUPPORTED_TRANSPORTS, StdioSpec
from gateway.models import Connection, Transport, slug_validator

# RFC 9110 field names ("token" characters).
HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
MAX_HEADER_NAME = 100
MAX_HEADER_VALUE = 8000
MAX_HEADERS = 20
# Headers the gateway itself sets or that frame the HTTP exchange: a connection may not
# override them, or it would break the protocol rather than authenticate.
RESERVED_HEADERS = frozenset(
    {
        "accept",
        "connection",
        "content-length",
        "content-type",
        "host",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
    }
)
RESERVED_PREFIXES = ("mcp-",)
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ARGS = 100
MAX_PROCESSES = 100
# Connection slugs that would shadow console pages under /connections/.
RESERVED_SLUGS = frozenset({"new"})

TTL_CHOICES = [
    ("3600", "1 hour"),
    ("28800", "8 hours"),
    ("86400", "1 day"),
    ("604800", "7 days"),
    ("2592000", "30 days"),
    ("7776000", "90 days"),
    ("never", "Never expires"),
]
SCOPE_CHOICES = [
    ("mcp", "mcp: call tools through the gateway"),
    ("api", "api: use the REST API with your permissions"),
]


def header_name_problem(name: str) -> str | None:
    """Why `name` cannot be a credential header, or None if it can."""
    if len(name) > MAX_HEADER_NAME:
        return f"Use at most {MAX_HEADER_NAME} characters."
    if not HEADER_NAME.match(name):
        return "Use letters, digits and - _ . ! # $ % & ' * + ^ ` | ~ only (no spaces or colons)."
    lowered = name.lower()
    if lowered in RESERVED_HEADERS or lowered.startswith(RESERVED_PREFIXES):
        return f"{name} is set by the gateway itself and cannot be overridden."
    return None


def env_name_problem(name: str) -> str | None:
    """Why `name` cannot be an environment variable of a stdio command, or None."""
    if len(name) > MAX_HEADER_NAME:
        return f"Use at most {MAX_HEADER_NAME} characters."
    if not ENV_NAME.match(name):
        return "Use letters, digits and underscores, not starting with a digit."
    return None


def header_value_problem(value: str) -> str | None:
    if len(value) > MAX_HEADER_VALUE:
        return f"Use at most {MAX_HEADER_VALUE} characters."
    if any(c in value for c in "\r\n\0"):
        return "A header value cannot contain line breaks."
    return None


def validate_slug(slug: str) -> None:
    if slug in RESERVED_SLUGS:
        raise ValidationError(f"“{slug}” is reserved; choose another slug.")


def attach_errors(form: forms.BaseForm, exc: ValidationError) -> None:
    """Errors raised by an action, shown next to the field they name (or on top)."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, errors in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, errors)


def _transport_help() -> str:
    now = ", ".join(str(Transport(t).label) for t in SUPPORTED_TRANSPORTS)
    later = [str(t.label) for t in Transport if t not in SUPPORTED_TRANSPORTS]
    return f"Supported: {now}." + (f" Coming: {', '.join(later)}." if later else "")


class ConnectionForm(forms.Form):
    slug = forms.CharField(
        max_length=64,
        validators=[slug_validator, validate_slug],
        help_text="Agents reach the connection at /mcp/<slug>. It cannot be changed later.",
    )
    name = forms.CharField(
        max_length=200, required=False, help_text="For people; the slug when left empty."
    )
    transport = forms.ChoiceField(
        choices=Transport.choices,
        initial=Transport.STREAMABLE_HTTP,
        help_text=_transport_help(),
    )
    url = forms.CharField(
        label="URL",
        max_length=2000,
        required=False,
        validators=[URLValidator(schemes=["http", "https"])],
        widget=forms.URLInput(attrs={"placeholder": "https://mcp.example.com/mcp"}),
        help_text="The upstream MCP server's endpoint.",
    )
    command = forms.CharField(
        max_length=1000,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "uvx", "autocomplete": "off"}),
        help_text="stdio: the program the gateway starts (on its own host).",
    )
    args = forms.CharField(
        label="Arguments",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "mcp-server-time"}),
        help_text="stdio: one argument per line, passed as they are (no shell).",
    )
    cwd = forms.CharField(
        label="Working directory",
        max_length=1000,
        required=False,
        help_text="stdio: where the command runs; the gateway's own when empty.",
    )
    max_processes = forms.IntegerField(
        label="Processes at most",
        min_value=1,
        max_value=MAX_PROCESSES,
        initial=8,
        required=False,
        help_text="stdio: one runs per agent session; calls beyond this limit are refused.",
    )
    enabled = forms.BooleanField(
        required=False, initial=True, help_text="Disabled connections refuse every agent call."
    )

    def __init__(self, *args: Any, connection: Connection | None = None, **kwargs: Any) -> None:
        if connection is not None:
            kwargs.setdefault(
                "initial",
                {
                    "slug": connection.slug,
                    "name": connection.name,
                    "transport": connection.transport,
                    "url": connection.url,
                    "command": connection.command,
                    "args": "\n".join(str(a) for a in connection.args or ()),
                    "cwd": connection.cwd,
                    "max_processes": connection.max_processes,
                    "enabled": connection.enabled,
                },
            )
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.connection = connection
        if connection is not None:
            self.fields["slug"].disabled = True
            self.fields["slug"].help_text = "Agents reach the connection at /mcp/<slug>."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        transport = cleaned.get("transport")
        if transport and transport not in SUPPORTED_TRANSPORTS:
            self.add_error("transport", f"{Transport(transport).label} is not supported yet.")
        elif transport == Transport.STREAMABLE_HTTP and not cleaned.get("url"):
            if "url" not in self.errors:
                self.add_error("url", "A Streamable HTTP connection needs the upstream's URL.")
        elif transport == Transport.SSE and not cleaned.get("url"):
            if "url" not in self.errors:
                self.add_error("url", "An HTTP+SSE connection needs the URL of its event stream.")
        elif transport == Transport.STDIO and not cleaned.get("command"):
            if "command" not in self.errors:
                self.add_error("command", "A stdio connection needs the command to run.")
        return cleaned

    def clean_args(self) -> list[str]:
        lines = [line.strip() for line in self.cleaned_data["args"].splitlines()]
        args = [line for line in lines if line]
        if len(args) > MAX_ARGS:
            raise ValidationError(f"Use at most {MAX_ARGS} arguments.")
        if any("\0" in arg or len(arg) > 4000 for arg in args):
            raise ValidationError("An argument is too long or holds a NUL character.")
        return args

    def stdio_spec(self, env: dict[str, str] | None) -> StdioSpec | None:
        """The stdio settings to save (None for other transports)."""
        data = self.cleaned_data
        if data["transport"] != Transport.STDIO:
            return None
        return StdioSpec(
            command=data["command"],
            args=tuple(data["args"]),
            cwd=data["cwd"],
            env=env,
            max_processes=data["max_processes"] or 8,
        )


class CredentialForm(forms.Form):
    """One credential header. An empty value keeps the stored value of that name."""

    name = forms.CharField(
        required=False,
        max_length=MAX_HEADER_NAME,
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    value = forms.CharField(
        required=False,
        strip=True,
        max_length=MAX_HEADER_VALUE,
        # Never rendered back, not even after a validation error.
        widget=forms.PasswordInput(
            render_value=False, attrs={"autocomplete": "new-password", "spellcheck": "false"}
        ),
    )


class BaseCredentialFormSet(forms.BaseFormSet):
    """Write-only name/value pairs (credential headers, or a command's environment)."""

    what = "header"
    name_placeholder = "Authorization"

    def name_problem(self, name: str) -> str | None:
        return header_name_problem(name)

    def __init__(self, *args: Any, stored_names: list[str] | None = None, **kwargs: Any) -> None:
        self.stored_names = list(stored_names or [])
        kwargs.setdefault("initial", [{"name": name} for name in self.stored_names])
        super().__init__(*args, **kwargs)

    def add_fields(self, form: forms.Form, index: int | None) -> None:
        super().add_fields(form, index)
        name, value = form.fields["name"].widget, form.fields["value"].widget
        name.attrs["placeholder"] = self.name_placeholder
        if index is not None and self.is_stored_row(form):
            name.attrs["readonly"] = True
            value.attrs["placeholder"] = "stored · leave empty to keep"

    def _stored(self, name: str) -> str | None:
        lowered = name.lower()
        return next((n for n in self.stored_names if n.lower() == lowered), None)

    def is_stored_row(self, form: forms.Form) -> bool:
        return form.initial.get("name") in self.stored_names

    def clean(self) -> None:
        if any(self.errors):
            return
        seen: set[str] = set()
        for form in self.forms:
            if self.can_delete and self._should_delete_form(form):
                continue
            name = (form.cleaned_data.get("name") or "").strip()
            value = form.cleaned_data.get("value") or ""
            if not name and not value:
                continue
            if not name:
                form.add_error("name", f"Name the {self.what} this value is for.")
                continue
            problem = self.name_problem(name)
            if problem:
                form.add_error("name", problem)
                continue
            if name.lower() in seen:
                form.add_error("name", f"This {self.what} is listed twice.")
                continue
            seen.add(name.lower())
            if not value and self._stored(name) is None:
                form.add_error("value", f"Enter the value (a new {self.what} needs one).")
                continue
            problem = header_value_problem(value)
            if problem:
                form.add_error("value", problem)
        if len(seen) > MAX_HEADERS:
            raise ValidationError(f"Use at most {MAX_HEADERS} of them.")

    def headers(self, stored: dict[str, str]) -> dict[str, str] | None:
        """The headers to store, or None when they stay as they are."""
        result: dict[str, str] = {}
        for form in self.forms:
            if self.can_delete and self._should_delete_form(form):
                continue
            name = (form.cleaned_data.get("name") or "").strip()
            if not name:
                continue
            value = form.cleaned_data.get("value") or ""
            if value:
                result[name] = value
            else:
                kept = self._stored(name)
                assert kept is not None  # clean() refused anything else
                result[kept] = stored[kept]
        return None if result == stored else result


CredentialFormSet = forms.formset_factory(
    CredentialForm,
    formset=BaseCredentialFormSet,
    extra=1,
    can_delete=True,
    max_num=MAX_HEADERS,
    absolute_max=MAX_HEADERS + 5,
)


class BaseEnvFormSet(BaseCredentialFormSet):
    what = "variable"
    name_placeholder = "API_KEY"

    def name_problem(self, name: str) -> str | None:
        return env_name_problem(name)


EnvFormSet = forms.formset_factory(
    CredentialForm,
    formset=BaseEnvFormSet,
    extra=1,
    can_delete=True,
    max_num=MAX_HEADERS,
    absolute_max=MAX_HEADERS + 5,
)


class TokenForm(forms.Form):
    owner = forms.ModelChoiceField(
        queryset=get_user_model().objects.none(),
        to_field_name="username",
        required=False,
        empty_label=None,
        help_text="Admins may issue tokens for other people.",
    )
    connection = forms.ModelChoiceField(
        queryset=Connection.objects.all(),
        to_field_name="slug",
        required=False,
        empty_label="Any connection the owner may use",
        help_text="Limit the token to one connection.",
    )
    ttl = forms.ChoiceField(
        label="Expires after",
        choices=TTL_CHOICES,
        initial="28800",
        help_text="A run token should not outlive the run.",
    )
    run_label = forms.CharField(
        label="Run label",
        max_length=200,
        required=False,
        widget=forms.TextInput(attrs={"placeholder": "nightly-report"}),
        help_text="Shown in the audit trail for every call made with the token.",
    )
    scopes = forms.MultipleChoiceField(
        choices=SCOPE_CHOICES,
        initial=["mcp"],
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": "Choose at least one scope."},
    )

    def __init__(self, *args: Any, user: Any, may_issue_for_others: bool, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        if may_issue_for_others:
            owner = self.fields["owner"]
            assert isinstance(owner, forms.ModelChoiceField)
            owner.queryset = get_user_model().objects.filter(is_active=True).order_by("username")
            owner.initial = user.get_username()
        else:
            del self.fields["owner"]
        self.user = user

    def clean_run_label(self) -> str:
        label: str = self.cleaned_data["run_label"].strip()
        if any(not c.isprintable() for c in label):
            raise ValidationError("Use printable characters only.")
        return label

    def token_owner(self) -> Any:
        return self.cleaned_data.get("owner") or self.user

    def ttl_delta(self) -> timedelta | None:
        ttl = self.cleaned_data["ttl"]
        return None if ttl == "never" else timedelta(seconds=int(ttl))
