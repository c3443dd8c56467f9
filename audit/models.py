"""The audit trail: one append-only, hash-chained table.

Rows are never updated or deleted by the application; database triggers refuse UPDATE,
DELETE and TRUNCATE (see the migrations). Every row carries a gap-free sequence number
and a hash over its canonical bytes and the previous row's hash.
"""

from datetime import UTC
from typing import Any

from django.db import models

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


def hash_body(values: dict[str, Any]) -> dict[str, Any]:
    body = {name: values.get(name) for name in HASHED_FIELDS if name != "prev_hash"}
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
