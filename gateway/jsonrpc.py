"""JSON-RPC 2.0 messages as the gateway sees them, and the errors it answers with."""

import json
from dataclasses import dataclass
from typing import Any

try:  # the compact encoding in C (native/audit_native.c); audit/canonical.py warns if absent
    from audit_native import compact as _compact
except ImportError:
    _compact = None

# JSON-RPC's own codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# The gateway's codes, in the implementation-defined server error range.
UPSTREAM_UNAVAILABLE = -32010
UPSTREAM_TIMEOUT = -32011
UPSTREAM_PROTOCOL_ERROR = -32012
CONNECTION_DISABLED = -32030
UNSUPPORTED_BY_GATEWAY = -32031
DENIED_BY_POLICY = -32032
APPROVAL_UNAVAILABLE = -32033

JsonId = str | int | None


class InvalidMessage(Exception):
    def __init__(self, code: int, message: str, id: JsonId = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(slots=True)
class Message:
    """One JSON-RPC message: a request, a notification or a response."""

    payload: dict[str, Any]

    @property
    def id(self) -> JsonId:
        return self.payload.get("id")

    @property
    def method(self) -> str | None:
        return self.payload.get("method")

    @property
    def params(self) -> dict[str, Any]:
        params = self.payload.get("params")
        return params if isinstance(params, dict) else {}

    @property
    def is_request(self) -> bool:
        return "method" in self.payload and "id" in self.payload

    @property
    def is_notification(self) -> bool:
        return "method" in self.payload and "id" not in self.payload

    @property
    def is_response(self) -> bool:
        return "method" not in self.payload

    @property
    def target_name(self) -> str | None:
        """The tool, prompt or resource a request names, if any."""
        params = self.params
        value = params.get("name") if self.method != "resources/read" else params.get("uri")
        return value if isinstance(value, str) else None


def parse(body: bytes) -> Message:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidMessage(PARSE_ERROR, "Parse error: the body is not valid JSON") from None
    if isinstance(payload, list):
        raise InvalidMessage(INVALID_REQUEST, "Batch requests are not supported")
    return validate(payload)


def validate(payload: object) -> Message:
    if not isinstance(payload, dict):
        raise InvalidMessage(INVALID_REQUEST, "Invalid Request: expected a JSON object")
    raw_id = payload.get("id")
    id = raw_id if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
    if payload.get("jsonrpc") != "2.0":
        raise InvalidMessage(INVALID_REQUEST, 'Invalid Request: "jsonrpc" must be "2.0"', id)
    if "id" in payload and (not isinstance(raw_id, str | int) or isinstance(raw_id, bool)):
        raise InvalidMessage(INVALID_REQUEST, 'Invalid Request: "id" must be a string or number')
    if "method" in payload:
        if not isinstance(payload["method"], str) or not payload["method"]:
            raise InvalidMessage(INVALID_REQUEST, 'Invalid Request: "method" must be a string', id)
        if "params" in payload and not isinstance(payload["params"], dict):
            raise InvalidMessage(INVALID_REQUEST, 'Invalid Request: "params" must be an object', id)
    else:
        if "id" not in payload or (("result" in payload) == ("error" in payload)):
            raise InvalidMessage(
                INVALID_REQUEST, "Invalid Request: neither a request nor a response", id
            )
    return Message(payload)


def error(id: JsonId, code: int, message: str, data: object = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": id, "error": err}


def dumps(payload: object) -> bytes:
    """A message as compact JSON in UTF-8, as `dumps_python` writes it."""
    if _compact is not None:
        encoded = _compact(payload)
        if encoded is not None:
            return encoded
    return dumps_python(payload)


def dumps_python(payload: object) -> bytes:
    """`dumps`, whose bytes `audit_native.compact` gives for the values it covers."""
    try:
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        # A lone surrogate (valid in JSON text) has no UTF-8 form: send it escaped.
        return json.dumps(payload, separators=(",", ":")).encode()
