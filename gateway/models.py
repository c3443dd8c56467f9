import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.utils.timezone import now

from .crypto import decrypt_json, encrypt_json

TOKEN_PREFIX = "mgw_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Transport(models.TextChoices):
    STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
    SSE = "sse", "HTTP+SSE (legacy)"
    STDIO = "stdio", "stdio command"


class Era(models.TextChoices):
    UNKNOWN = "", "not yet detected"
    LEGACY = "legacy", "legacy (initialize and sessions)"
    MODERN = "modern", "2026-07-28 (stateless)"


slug_validator = RegexValidator(
    r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$",
    "Use 1-64 lowercase letters, digits and hyphens, not starting or ending with a hyphen.",
)


class Connection(models.Model):
    """An upstream MCP server that agents reach at /mcp/<slug>."""

    slug = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    name = models.CharField(max_length=200)
    transport = models.CharField(
        max_length=20, choices=Transport.choices, default=Transport.STREAMABLE_HTTP
    )
    url = models.URLField(max_length=2000, blank=True)
    # transport=stdio: the registered command, its arguments and working directory, and
    # environment variables (names shown, values encrypted like credentials).
    command = models.CharField(max_length=1000, blank=True)
    args = models.JSONField(default=list, blank=True)
    cwd = models.CharField(max_length=1000, blank=True)
    env_names = models.JSONField(default=list, blank=True)
    env_ciphertext = models.TextField(blank=True)
    max_processes = models.PositiveIntegerField(default=8)
    # Header names are shown in the console; their values are credentials and only ever
    # stored encrypted, and never shown again after they are saved.
    header_names = models.JSONField(default=list, blank=True)
    headers_ciphertext = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    # The upstream's protocol era, detected on first use and re-detected after a failure.
    era = models.CharField(max_length=10, choices=Era.choices, default=Era.UNKNOWN, blank=True)
    era_detected_at = models.DateTimeField(null=True, blank=True)
    # Set when an admin first approves the tool list: from then on tools are pinned.
    tools_pinned_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["slug"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(transport="streamable_http") | ~models.Q(url=""),
                name="connection_http_needs_url",
            ),
            models.CheckConstraint(
                condition=~models.Q(transport="stdio") | ~models.Q(command=""),
                name="connection_stdio_needs_command",
            ),
            models.CheckConstraint(
                condition=~models.Q(transport="sse") | ~models.Q(url=""),
                name="connection_sse_needs_url",
            ),
        ]

    def __str__(self) -> str:
        return self.slug

    def set_headers(self, headers: dict[str, str]) -> None:
        self.header_names = sorted(headers)
        self.headers_ciphertext = encrypt_json(headers) if headers else ""

    def set_env(self, env: dict[str, str]) -> None:
        self.env_names = sorted(env)
        self.env_ciphertext = encrypt_json(env) if env else ""

    def get_env(self) -> dict[str, str]:
        if not self.env_ciphertext:
            return {}
        value = decrypt_json(self.env_ciphertext)
        assert isinstance(value, dict)
        return value

    def get_headers(self) -> dict[str, str]:
        if not self.headers_ciphertext:
            return {}
        value = decrypt_json(self.headers_ciphertext)
        assert isinstance(value, dict)
        return value


class AgentTokenQuerySet(models.QuerySet["AgentToken"]):
    def active(self) -> "AgentTokenQuerySet":
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now())
        )


class AgentToken(models.Model):
    """A gateway-issued bearer token for one agent run. Only its digest is stored."""

    public_id = models.CharField(max_length=16, unique=True)
    digest = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE)
    # None: the token may be used on every connection its owner may use.
    connection = models.ForeignKey(Connection, null=True, blank=True, on_delete=models.CASCADE)
    run_label = models.CharField(max_length=200, blank=True)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=now)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = AgentTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.display

    @property
    def display(self) -> str:
        return f"{TOKEN_PREFIX}{self.public_id}…"

    @staticmethod
    def digest_of(secret: str) -> str:
        return digest(secret)

    @staticmethod
    def new_secret() -> tuple[str, str]:
        public_id = secrets.token_hex(6)
        return public_id, f"{TOKEN_PREFIX}{public_id}_{secrets.token_urlsafe(32)}"

    def is_active(self) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > now()

    def allows(self, connection: Connection) -> bool:
        return self.connection_id is None or self.connection_id == connection.pk

    def touch_due(self) -> bool:
        """last_used_at is refreshed at most once a minute, to keep writes off the hot path."""
        return self.last_used_at is None or now() - self.last_used_at > timedelta(minutes=1)


class DownstreamSession(models.Model):
    """A legacy-era session between one agent and the gateway, mapped to an upstream session.

    The agent holds the session id; only its digest is stored, bound to the token that
    created it, so the id is useless with any other credential.
    """

    key_digest = models.CharField(max_length=64, primary_key=True)
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE)
    # The credential the session is bound to: a gateway token, or an IdP subject.
    token = models.ForeignKey(AgentToken, null=True, blank=True, on_delete=models.CASCADE)
    subject = models.CharField(max_length=255, blank=True)
    protocol_version = models.CharField(max_length=20)
    # The agent's initialize params, replayed when the upstream session must be re-created.
    initialize_params = models.JSONField(default=dict)
    upstream_session_id = models.CharField(max_length=500, blank=True)
    upstream_protocol_version = models.CharField(max_length=20, blank=True)
    created_at = models.DateTimeField(default=now)
    last_seen_at = models.DateTimeField(default=now)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # Serves the idle-session sweep: open sessions ordered by last activity.
            models.Index(
                fields=["last_seen_at"],
                condition=models.Q(ended_at__isnull=True),
                name="open_sessions_by_last_seen",
            )
        ]

    def __str__(self) -> str:
        return f"session {self.key_digest[:12]} on {self.connection_id}"


class ToolState(models.TextChoices):
    APPROVED = "approved", "approved"
    NEW = "new", "new, not yet approved"
    CHANGED = "changed", "changed since approved"


class ToolDefinition(models.Model):
    """A tool as the upstream describes it, pinned against silent changes ("rug pulls").

    Once an admin has approved a connection's tool list (`Connection.tools_pinned_at`),
    a tool is offered to agents only while the upstream's definition has the approved
    digest; a new or changed tool is hidden and refused until an admin accepts it.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="tools")
    name = models.CharField(max_length=200)
    # What the upstream said last time the gateway saw its tool list.
    observed = models.JSONField()
    observed_digest = models.CharField(max_length=64)
    observed_at = models.DateTimeField(default=now)
    # What an admin accepted (empty until then).
    approved = models.JSONField(null=True, blank=True)
    approved_digest = models.CharField(max_length=64, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    approved_by = models.CharField(max_length=150, blank=True)

    class Meta:
        ordering = ["connection", "name"]
        constraints = [
            models.UniqueConstraint(fields=["connection", "name"], name="one_definition_per_tool")
        ]

    def __str__(self) -> str:
        return f"{self.connection_id}:{self.name}"

    @property
    def state(self) -> ToolState:
        if not self.approved_digest:
            return ToolState.NEW
        if self.approved_digest != self.observed_digest:
            return ToolState.CHANGED
        return ToolState.APPROVED

    @property
    def annotations(self) -> dict[str, object]:
        value = self.observed.get("annotations") if isinstance(self.observed, dict) else None
        return value if isinstance(value, dict) else {}
