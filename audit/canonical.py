"""Canonical bytes and hashes of audit records (RFC 8785, JSON Canonicalization Scheme)."""

import hashlib
import json
import logging
from typing import Any

import rfc8785

try:  # the encoding of plain values in C (native/audit_native.c)
    import audit_native as _native
except ImportError:  # not built: the Python below encodes them, several times slower
    _native = None
    logging.getLogger(__name__).warning(
        "audit_native is not installed (it is built from native/ by `uv sync`, which needs a "
        "C compiler): audit records are encoded in Python, several times slower"
    )

GENESIS_HASH = "0" * 64
SAFE_INTEGER = 2**53 - 1


def storable(value: Any) -> Any:
    """A JSON value as it can be stored and canonicalized, losing nothing that matters.

    Postgres jsonb refuses NUL characters, and JCS refuses integers beyond 2^53 and
    non-finite floats; such values are kept as strings.
    """
    if _native is not None and _native.stored_as_is(value):
        # Nothing to change (the common case), found without copying.
        return value
    return storable_python(value)


def storable_python(value: Any) -> Any:
    """`storable`, which `audit_native.stored_as_is` tells when to skip."""
    if isinstance(value, dict):
        return {_text(str(k)): storable_python(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable_python(v) for v in value]
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


# Below this code point, sorting by code point (Python's order) and by UTF-16 code unit
# (RFC 8785's order) agree.
_SAME_ORDER_BELOW = "\ue000"
_encode_plain = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
).encode


def canonical(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value.

    Parts whose floats need no ECMAScript number formatting (see `_plain`) and whose keys
    sort alike by code point and by UTF-16 code unit go through the C JSON encoder, which
    gives the same bytes as RFC 8785 at a fraction of the cost: both escape only `"`, `\\`
    and control characters (`\\b \\t \\n \\f \\r` short, the rest as lowercase
    `\\u00xx`) and write everything else as UTF-8. Objects and arrays around other parts
    are joined here, other floats formatted by the reference implementation; anything
    RFC 8785 refuses (lone surrogates, integers beyond 2^53, non-finite floats) goes to
    the reference implementation whole, for its error. Where `audit_native` is built, it
    encodes the plain parts instead of `_plain` and the C JSON encoder, in one pass.
    """
    try:
        return _canonical(value)
    except (_Refused, UnicodeEncodeError):
        return rfc8785.dumps(value)


def plain_canonical(value: Any) -> bytes | None:
    """The canonical bytes of a plain value (see `_plain`), else None. They are also the
    bytes of `json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))`
    in UTF-8: the value as JSON, its keys sorted."""
    if _native is not None:
        return _native.canonical(value)
    if not _plain(value):
        return None
    try:
        return _encode_plain(value).encode("utf-8")
    except UnicodeEncodeError:
        return None


class _Refused(Exception):
    pass


def _canonical(value: Any) -> bytes:
    data = plain_canonical(value)
    if data is not None:
        return data
    if isinstance(value, dict):
        if any(type(key) is not str for key in value):
            raise _Refused
        members = [
            _encode_plain(key).encode("utf-8") + b":" + _canonical(value[key])
            for key in sorted(value, key=_utf16)
        ]
        return b"{" + b",".join(members) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_canonical(item) for item in value) + b"]"
    if type(value) is float:
        return rfc8785.dumps(value)
    raise _Refused


def _utf16(key: str) -> bytes:
    return key.encode("utf-16-be")


def _plain(value: Any) -> bool:
    if isinstance(value, str) or value is None or value is True or value is False:
        return True
    if isinstance(value, dict):
        # The keys at once (a key that is not a string fails the join), then the values,
        # strings and literals without a call.
        try:
            keys = "".join(value)
        except TypeError:
            return False
        if keys and max(keys) >= _SAME_ORDER_BELOW:
            return False
        for item in value.values():
            if item is None or item is True or item is False or isinstance(item, str):
                continue
            if not _plain(item):
                return False
        return True
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    if type(value) is int:
        return -SAFE_INTEGER <= value <= SAFE_INTEGER
    if type(value) is float:
        # Python's repr (which the C encoder writes) and ECMAScript's number formatting
        # both give the shortest digits that read back as the same float; between 1e-4
        # and 1e16 both write them without an exponent. Only whole numbers differ (12.0
        # against 12), so those, and the rest, go to the reference implementation.
        return _REPR_IS_ECMASCRIPT_LOW <= abs(value) < _REPR_IS_ECMASCRIPT_HIGH and (
            not value.is_integer()
        )
    return False


_REPR_IS_ECMASCRIPT_LOW = 1e-4
_REPR_IS_ECMASCRIPT_HIGH = 1e16


def chain_hash(prev_hash: str, body: dict[str, Any]) -> str:
    """The record's hash: over the previous record's hash and the record's canonical bytes."""
    return chain_hash_bytes(prev_hash, canonical(body))


def chain_hash_bytes(prev_hash: str, data: bytes) -> str:
    """`chain_hash` of a body whose canonical bytes are `data`."""
    digest = hashlib.sha256(prev_hash.encode("ascii"))
    digest.update(b"\n")
    digest.update(data)
    return digest.hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
