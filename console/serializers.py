"""Input and output shapes of the console API (/api/connections/, /api/tokens/).

Credentials are write-only: `headers` is accepted on input and never part of any
output, which names the stored headers only (`header_names`).
"""

from typing import Any

from django.conf import settings
from rest_framework import serializers

from gateway.actions import SUPPORTED_TRANSPORTS, StdioSpec
from gateway.models import AgentToken, Connection, Era, Transport, slug_validator

from .forms import (
    MAX_ARGS,
    MAX_HEADERS,
    MAX_PROCESSES,
    RESERVED_SLUGS,
    SCOPE_CHOICES,
    env_name_problem,
    header_name_problem,
    header_value_problem,
)

MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 366 * 24 * 3600
DEFAULT_TTL_SECONDS = 24 * 3600
MAX_TOKEN_LIST = 1000


def public_base(request: Any) -> str:
    """This gateway's base URL as clients should use it (PUBLIC_URL when set)."""
    return str(settings.PUBLIC_URL or request.build_absolute_uri("/").rstrip("/"))


def agent_url(request: Any, slug: str) -> str:
    """Where agents reach a connection through this gateway."""
    return f"{public_base(request)}/mcp/{slug}"


def _headers(value: dict[str, str]) -> dict[str, str]:
    errors = {}
    for name, header_value in value.items():
        problem = header_name_problem(name) or header_value_problem(header_value)
        if problem:
            errors[name] = [problem]
    if len({name.lower() for name in value}) != len(value):
        errors["__all__"] = ["A header is listed twice (names are case-insensitive)."]
    if len(value) > MAX_HEADERS:
        errors["__all__"] = [f"Use at most {MAX_HEADERS} credential headers."]
    if errors:
        raise serializers.ValidationError(errors)
    return value


def _env(value: dict[str, str]) -> dict[str, str]:
    errors = {}
    for name, env_value in value.items():
        problem = env_name_problem(name) or header_value_problem(env_value)
        if problem:
            errors[name] = [problem]
    if len(value) > MAX_HEADERS:
        errors["__all__"] = [f"Use at most {MAX_HEADERS} variables."]
    if errors:
        raise serializers.ValidationError(errors)
    return value


def _transport(value: str) -> str:
    if value not in SUPPORTED_TRANSPORTS:
        raise serializers.ValidationError(f"{Transport(value).label} is not supported yet.")
    return value


def _slug(value: str) -> str:
    if value in RESERVED_SLUGS:
        raise serializers.ValidationError(f"“{value}” is reserved; choose another slug.")
    return value


HEADERS_HELP = (
    'Credential headers sent upstream, e.g. {"Authorization": "Bearer …"}. Write-only: '
    "never returned. On update the given set replaces the stored one; leave it out to keep."
)


ENV_HELP = (
    "stdio: environment variables of the command. Write-only like headers: the given set "
    "replaces the stored one; leave it out to keep."
)


class ConnectionOutput(serializers.Serializer[Connection]):
    slug = serializers.CharField()
    name = serializers.CharField()
    transport = serializers.ChoiceField(choices=Transport.choices)
    url = serializers.CharField()
    enabled = serializers.BooleanField()
    header_names = serializers.ListField(
        child=serializers.CharField(), help_text="Names of the stored credential headers."
    )
    command = serializers.CharField(help_text="stdio: the command the gateway runs.")
    args = serializers.ListField(child=serializers.CharField())
    cwd = serializers.CharField()
    max_processes = serializers.IntegerField()
    env_names = serializers.ListField(
        child=serializers.CharField(), help_text="stdio: names of the stored variables."
    )
    era = serializers.ChoiceField(choices=Era.choices, help_text="Empty until detected.")
    era_detected_at = serializers.DateTimeField(allow_null=True)
    tools_pinned_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    agent_url = serializers.SerializerMethodField(help_text="Where agents reach it.")
    last_outcome = serializers.CharField(
        allow_null=True, default=None, help_text="Outcome of the last call through it."
    )
    last_call_at = serializers.DateTimeField(allow_null=True, default=None)

    def get_agent_url(self, connection: Connection) -> str:
        return agent_url(self.context["request"], connection.slug)


class ConnectionUpdateInput(serializers.Serializer[Any]):
    """PATCH: every field optional; what is left out stays as it is."""

    name = serializers.CharField(max_length=200, required=False, allow_blank=True)
    transport = serializers.ChoiceField(
        choices=Transport.choices, required=False, validators=[_transport]
    )
    url = serializers.URLField(max_length=2000, required=False, allow_blank=True)
    enabled = serializers.BooleanField(required=False)
    headers = serializers.DictField(
        child=serializers.CharField(allow_blank=False, trim_whitespace=True),
        required=False,
        write_only=True,
        validators=[_headers],
        help_text=HEADERS_HELP,
    )
    command = serializers.CharField(max_length=1000, required=False, allow_blank=True)
    args = serializers.ListField(
        child=serializers.CharField(max_length=4000, trim_whitespace=False),
        required=False,
        max_length=MAX_ARGS,
    )
    cwd = serializers.CharField(max_length=1000, required=False, allow_blank=True)
    max_processes = serializers.IntegerField(min_value=1, max_value=MAX_PROCESSES, required=False)
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        write_only=True,
        validators=[_env],
        help_text=ENV_HELP,
    )

    def check_complete(self, transport: str, url: str, command: str) -> None:
        """The transport's own setting must be there once the change is applied."""
        if transport == Transport.STREAMABLE_HTTP and not url:
            raise serializers.ValidationError({"url": ["A Streamable HTTP connection needs it."]})
        if transport == Transport.SSE and not url:
            raise serializers.ValidationError({"url": ["An HTTP+SSE connection needs it."]})
        if transport == Transport.STDIO and not command:
            raise serializers.ValidationError({"command": ["A stdio connection needs it."]})

    def stdio_spec(self, connection: Connection | None, transport: str) -> StdioSpec | None:
        if transport != Transport.STDIO:
            return None
        data = self.validated_data
        return StdioSpec(
            command=data.get("command", connection.command if connection else ""),
            args=tuple(data.get("args", connection.args if connection else ())),
            cwd=data.get("cwd", connection.cwd if connection else ""),
            env=data.get("env"),
            max_processes=data.get("max_processes", connection.max_processes if connection else 8),
        )


class ConnectionCreateInput(ConnectionUpdateInput):
    slug = serializers.CharField(max_length=64, validators=[slug_validator, _slug])
    transport = serializers.ChoiceField(
        choices=Transport.choices, default=Transport.STREAMABLE_HTTP, validators=[_transport]
    )
    enabled = serializers.BooleanField(default=True)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        self.check_complete(attrs["transport"], attrs.get("url", ""), attrs.get("command", ""))
        return attrs


class ToolOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    title = serializers.CharField(allow_blank=True)
    description = serializers.CharField(allow_blank=True)
    annotations = serializers.DictField()
    state = serializers.CharField(help_text="Pin state in the catalog: approved, new, changed.")


class ConnectionTestOutput(serializers.Serializer[Any]):
    ok = serializers.BooleanField()
    error = serializers.CharField(allow_blank=True)
    era = serializers.CharField(allow_null=True)
    protocol_version = serializers.CharField(allow_blank=True)
    server_info = serializers.DictField()
    instructions = serializers.CharField(allow_blank=True)
    capabilities = serializers.ListField(child=serializers.CharField())
    latency_ms = serializers.FloatField()
    tools = ToolOutput(many=True)


class TokenOutput(serializers.Serializer[AgentToken]):
    public_id = serializers.CharField()
    display = serializers.CharField()
    owner = serializers.CharField(source="user.get_username")
    connection = serializers.CharField(
        source="connection.slug", allow_null=True, help_text="null: any connection."
    )
    run_label = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    active = serializers.BooleanField(source="is_active")


class TokenCreatedOutput(TokenOutput):
    token = serializers.CharField(help_text="The bearer token. Shown this once, never again.")


class TokenListInput(serializers.Serializer[Any]):
    active = serializers.BooleanField(required=False, allow_null=True, default=None)
    limit = serializers.IntegerField(min_value=1, max_value=MAX_TOKEN_LIST, default=100)


class TokenCreateInput(serializers.Serializer[Any]):
    owner = serializers.CharField(
        max_length=150, required=False, help_text="Username; admins only. Default: you."
    )
    connection = serializers.SlugField(
        max_length=64,
        required=False,
        allow_null=True,
        default=None,
        help_text="Limit the token to one connection; null for any.",
    )
    ttl_seconds = serializers.IntegerField(
        min_value=MIN_TTL_SECONDS,
        max_value=MAX_TTL_SECONDS,
        required=False,
        allow_null=True,
        default=DEFAULT_TTL_SECONDS,
        help_text="Lifetime in seconds (default one day); null for a token that never expires.",
    )
    run_label = serializers.CharField(max_length=200, required=False, allow_blank=True, default="")
    scopes = serializers.ListField(
        child=serializers.ChoiceField(choices=[value for value, _ in SCOPE_CHOICES]),
        min_length=1,
        default=["mcp"],
    )

    def validate_scopes(self, value: list[str]) -> list[str]:
        return list(dict.fromkeys(value))

    def validate_run_label(self, value: str) -> str:
        if any(not c.isprintable() for c in value):
            raise serializers.ValidationError("Use printable characters only.")
        return value
