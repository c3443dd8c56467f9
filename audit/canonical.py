"""Canonical bytes and hashes of audit records (RFC 8785, JSON Canonicalization Scheme)."""

import hashlib
from typing import Any

import rfc8785

GENESIS_HASH = "0" * 64
SAFE_INTEGER = 2**53 - 1


def storable(value: Any) -> Any:
    """A JSON value as it can be stored and canonicalized, losing nothing that matters.

    Postgres jsonb refuses NUL characters, and JCS refuses integers beyond 2^53 and
    non-finite floats; such values are kept as strings.
    """
    if isinstance(value, dict):
        return {_text(str(k)): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    if isinstance(value, str):
        return _text(value)
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if abs(value) <= SAFE_INTEGER else str(value)
    if isinstance(value, float):
        # jsonb prints huge floats without an exponent, which read back as integers.
        return value if value == value and abs(value) <= SAFE_INTEGER else str(value)
    return str(value)


def _text(value: str) -> str:
    """NUL and lone surrogates (valid in JSON, refused by Postgres and by RFC 8785) are
    kept as their escapes."""
    value = value.replace("\x00", "\\u0000")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def canonical(value: Any) -> bytes:
    return rfc8785.dumps(value)


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The record's hash: over the previous record's hash and the record's canonical bytes."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(canonical(body))
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
