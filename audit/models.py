"""The audit trail: one append-only, hash-chained table.

Rows are never updated or deleted by the application; database triggers refuse UPDATE,
DELETE and TRUNCATE (see the migrations). Every row carries a gap-free sequence number
and a hash over its canonical bytes and the previous row's hash.
"""

import uuid
from datetime import UTC, timedelta
from typing import Any

from django.core.validators import URLValidator
from django.db import models
from django.utils.timezone import now

from gateway.crypto import decrypt_json, encrypt_json

from .canonical import chain_hash


class Kind(models.TextChoices):
    CALL_REQUEST = "call.request", "call request (written before forwarding)"
    CALL_OUTCOME = "call.outcome", "call outcome"
    MESSAGE = "message", "notification or response from the agent"
    EVENT = "event", "console or system event"


class Outcome(models.TextChoices):
    OK = "ok"
    ERROR = "error"
    DENIED = "denied"
    EXPIRED = "expired"
    TIMEOUT = "timeout"
    UPSTREAM_ERROR = "upstream_error"
    CLIENT_DISCONNECTED = "client_disconnected"
    UNKNOWN = "unknown"


# The fields covered by a record's hash, in the order they are written. Adding a field
# here changes every hash: do it only together with a chain version bump.
HASHED_FIELDS = (
    "seq",
    "created_at",
    "kind",
    "event",
    "call_id",
    "user_id",
    "username",
    "token",
    "run_label",
    "subject",
    "client_address",
    "user_agent",
    "connection",
    "session",
    "era",
    "method",
    "target",
    "request_id",
    "arguments",
    "result",
    "result_size",
    "result_digest",
    "outcome",
    "latency_ms",
    "approval_id",
    "masking",
    "details",
    "prev_hash",
)


_BODY_FIELDS = tuple(name for name in HASHED_FIELDS if name != "prev_hash")


def hash_body(values: dict[str, Any]) -> dict[str, Any]:
    body = {name: values.get(name) for name in _BODY_FIELDS}
    created = body["created_at"]
    if not isinstance(created, str):
        body["created_at"] = created.astimezone(UTC).isoformat(timespec="microseconds")
    if body["call_id"] is not None:
        body["call_id"] = str(body["call_id"])
    return body


def record_hash(values: dict[str, Any]) -> str:
    return chain_hash(values["prev_hash"], hash_body(values))


class AuditRecordQuerySet(models.QuerySet["AuditRecord"]):
    def calls(self) -> "AuditRecordQuerySet":
        return self.filter(kind__in=[Kind.CALL_REQUEST, Kind.CALL_OUTCOME])


class AuditRecord(models.Model):
    seq = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField()
    kind = models.CharField(max_length=16, choices=Kind.choices)
    # For kind=event: what happened, e.g. "auth.login", "connection.saved".
    event = models.CharField(max_length=64, blank=True)
    # Links a call's request record to its outcome record.
    call_id = models.UUIDField(null=True, blank=True)
    # Who: kept as values, not foreign keys, so records outlive users and tokens.
    user_id = models.BigIntegerField(null=True, blank=True)
    username = models.CharField(max_length=150, blank=True)
    token = models.CharField(max_length=40, blank=True)
    run_label = models.CharField(max_length=200, blank=True)
    subject = models.CharField(max_length=255, blank=True)
    client_address = models.CharField(max_length=64, blank=True)
    user_agent = models.CharField(max_length=500, blank=True)
    # Where.
    connection = models.CharField(max_length=64, blank=True)
    session = models.CharField(max_length=64, blank=True)
    era = models.CharField(max_length=10, blank=True)
    # What.
    method = models.CharField(max_length=200, blank=True)
    target = models.CharField(max_length=1000, blank=True)
    request_id = models.CharField(max_length=200, blank=True)
    arguments = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    result_size = models.BigIntegerField(null=True, blank=True)
    result_digest = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=24, choices=Outcome.choices, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    approval_id = models.BigIntegerField(null=True, blank=True)
    masking = models.JSONField(null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    objects = AuditRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [
            # The audit browser's default listing and its time filter, newest first.
            models.Index(fields=["created_at", "seq"], name="audit_by_time"),
            # Filter by connection (and tool), newest first.
            models.Index(fields=["connection", "seq"], name="audit_by_connection"),
            models.Index(fields=["target", "seq"], name="audit_by_target"),
            # Filter by caller: the user, or one agent run's token.
            models.Index(fields=["username", "seq"], name="audit_by_user"),
            models.Index(fields=["token", "seq"], name="audit_by_token"),
            models.Index(fields=["run_label", "seq"], name="audit_by_run"),
            models.Index(fields=["outcome", "seq"], name="audit_by_outcome"),
            # A call's request and outcome records; the reconciler's open-call query.
            models.Index(fields=["call_id"], name="audit_by_call"),
            # The session timeline page.
            models.Index(fields=["session", "seq"], name="audit_by_session"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.kind} {self.method or self.event}"

    def field_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HASHED_FIELDS}

    def compute_hash(self) -> str:
        return record_hash(self.field_values())


class AuditHead(models.Model):
    """The end of the chain: locked by every append so that sequence numbers have no gaps."""

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0)
    hash = models.CharField(max_length=64)

    class Meta:
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="one_audit_head")]

    def __str__(self) -> str:
        return f"audit head #{self.seq}"


class SinkKind(models.TextChoices):
    HTTP = "http", "HTTP (JSON Lines)"
    SYSLOG_UDP = "syslog_udp", "syslog over UDP"
    SYSLOG_TCP = "syslog_tcp", "syslog over TCP"


# A worker's claim on a sink lapses after this long, so a worker that died mid-batch
# holds it up no longer. Every delivered batch renews it.
SINK_LEASE = timedelta(minutes=2)
# Consecutive failures push the next attempt out: 5 s, 10 s, 20 s, ... up to 5 minutes.
SINK_BACKOFF_BASE = timedelta(seconds=5)
SINK_BACKOFF_CAP = timedelta(minutes=5)
SINK_MAX_BATCH = 5000


class SiemSinkQuerySet(models.QuerySet["SiemSink"]):
    def unclaimed(self) -> "SiemSinkQuerySet":
        return self.filter(
            models.Q(claimed_until__isnull=True) | models.Q(claimed_until__lte=now())
        )

    def backoff_passed(self) -> "SiemSinkQuerySet":
        return self.filter(
            models.Q(next_attempt_at__isnull=True) | models.Q(next_attempt_at__lte=now())
        )

    def due(self) -> "SiemSinkQuerySet":
        """Enabled sinks that no worker is shipping and whose backoff has passed."""
        return self.filter(enabled=True).unclaimed().backoff_passed()


class SiemSink(models.Model):
    """A SIEM that receives every audit record at least once, in sequence order."""

    name = models.CharField(max_length=64, unique=True)
    kind = models.CharField(max_length=16, choices=SinkKind.choices)
    url = models.URLField(
        max_length=2000, blank=True, validators=[URLValidator(schemes=["http", "https"])]
    )
    host = models.CharField(max_length=255, blank=True)
    port = models.PositiveIntegerField(null=True, blank=True)
    # The key of the HTTP signature header: stored encrypted, never shown again.
    hmac_secret_ciphertext = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    batch_size = models.PositiveIntegerField(default=500)
    # The last sequence number the receiver accepted; everything after it is (re)sent.
    cursor = models.BigIntegerField(default=0)
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    # Consecutive failed attempts; zero again after a delivery.
    failures = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    # Held by the one worker shipping this sink (see claim()).
    claim_token = models.UUIDField(null=True, blank=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    objects = SiemSinkQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=~models.Q(kind=SinkKind.HTTP) | ~models.Q(url=""),
                name="siem_sink_http_needs_url",
                violation_error_message="An HTTP sink needs a URL.",
            ),
            models.CheckConstraint(
                condition=models.Q(kind=SinkKind.HTTP)
                | (~models.Q(host="") & models.Q(port__isnull=False, port__gte=1, port__lte=65535)),
                name="siem_sink_syslog_needs_host_and_port",
                violation_error_message="A syslog sink needs a host and a port (1-65535).",
            ),
            models.CheckConstraint(
                condition=models.Q(kind=SinkKind.HTTP) | models.Q(hmac_secret_ciphertext=""),
                name="siem_sink_hmac_only_for_http",
                violation_error_message="Only HTTP sinks sign their batches.",
            ),
            models.CheckConstraint(
                condition=models.Q(batch_size__gte=1, batch_size__lte=SINK_MAX_BATCH),
                name="siem_sink_batch_size_range",
                violation_error_message=f"The batch size must be 1-{SINK_MAX_BATCH}.",
            ),
            models.CheckConstraint(
                condition=models.Q(cursor__gte=0), name="siem_sink_cursor_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def target(self) -> str:
        if self.kind == SinkKind.HTTP:
            return self.url
        protocol = "udp" if self.kind == SinkKind.SYSLOG_UDP else "tcp"
        return f"{protocol}://{self.host}:{self.port}"

    @property
    def lag(self) -> int:
        """Records appended to the trail that the receiver has not accepted yet."""
        head = AuditHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0
        return max(0, head - self.cursor)

    @property
    def signed(self) -> bool:
        return bool(self.hmac_secret_ciphertext)

    def set_hmac_secret(self, secret: str) -> None:
        self.hmac_secret_ciphertext = encrypt_json(secret) if secret else ""

    def hmac_secret(self) -> str:
        if not self.hmac_secret_ciphertext:
            return ""
        value = decrypt_json(self.hmac_secret_ciphertext)
        assert isinstance(value, str)
        return value

    def claim(self, *, ignore_backoff: bool = False) -> bool:
        """Take the sink for one forwarding run; False if another worker has it, it is
        disabled, or (unless ignore_backoff) its backoff has not passed.

        On success the instance is reloaded, so its cursor is the one to send after.
        """
        candidates = SiemSink.objects.filter(pk=self.pk, enabled=True).unclaimed()
        if not ignore_backoff:
            candidates = candidates.backoff_passed()
        token = uuid.uuid4()
        if not candidates.update(claim_token=token, claimed_until=now() + SINK_LEASE):
            return False
        self.refresh_from_db()
        return True

    def _mine(self) -> "SiemSinkQuerySet":
        return SiemSink.objects.filter(pk=self.pk, claim_token=self.claim_token)

    def record_delivery(self, through_seq: int) -> bool:
        """The receiver accepted every record up to through_seq: move the cursor and renew
        the claim. False if the claim lapsed (another worker then resends from the cursor)."""
        moment = now()
        fields = {
            "cursor": through_seq,
            "last_success_at": moment,
            "failures": 0,
            "next_attempt_at": None,
            "claimed_until": moment + SINK_LEASE,
        }
        if not self._mine().update(**fields):
            return False
        for name, value in fields.items():
            setattr(self, name, value)
        return True

    def record_failure(self, error: str) -> None:
        """Keep the error, push the next attempt out, and let go of the claim."""
        moment = now()
        failures = self.failures + 1
        delay = min(SINK_BACKOFF_CAP, SINK_BACKOFF_BASE * 2 ** min(failures - 1, 16))
        fields = {
            "last_error": error[:2000],
            "last_error_at": moment,
            "failures": failures,
            "next_attempt_at": moment + delay,
            "claim_token": None,
            "claimed_until": None,
        }
        if self._mine().update(**fields):
            for name, value in fields.items():
                setattr(self, name, value)

    def release(self) -> None:
        if self.claim_token is None:
            return
        self._mine().update(claim_token=None, claimed_until=None)
        self.claim_token = None
        self.claimed_until = None
