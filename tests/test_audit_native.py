"""The JSON encoders in C (native/audit_native.c) give exactly what their Python
specifications give: for the audit trail (audit/canonical.py), the same canonical bytes
(RFC 8785's) for plain values and None for the rest, and `storable` unchanged where it
says so, records built with it carrying the same hashes and rows as without it; for the
messages the gateway sends (gateway/jsonrpc.py), json.dumps's compact bytes."""

import enum
import json
import math
import random
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import pytest
import rfc8785

from audit import canonical as canonical_module
from audit import chain
from audit.canonical import canonical, storable, storable_python
from audit.models import Kind
from gateway import jsonrpc

native = canonical_module._native


class Label(str):
    pass


class Level(enum.IntEnum):
    HIGH = 3


STRINGS = [
    "",
    "plain",
    'quotes " and \\ backslash',
    "".join(chr(c) for c in range(0x20)),
    "\x7f del",
    "nul \x00 inside",
    "naïve café",  # Latin-1, not ASCII: a one-byte string that is not ASCII
    "東京 \u2028 \ue000 \uffff",
    "emoji 😀 \U0010ffff",
    "lone \ud800 surrogate",
    "pair \ud83d\ude00 as two code points",
    "[EMAIL] ****1111",
    "x" * 5000 + "\n" + "y" * 5000,
]
KEYS = ["a", "B", "é", "\ue000", "😀", "\udfff", "k\x00", "", "result", "z" * 40]
NUMBERS: list[Any] = [
    0,
    1,
    -1,
    2**53 - 1,
    -(2**53 - 1),
    2**53,
    -(2**53),
    2**64,
    -(2**70),
    0.5,
    -0.0,
    0.0,
    3.0,
    1e-4,
    math.nextafter(1e-4, 0),
    1e16,
    math.nextafter(1e16, 0),
    2.0**53,
    2.0**53 + 2,
    123456.789,
    0.1 + 0.2,
    1e21,
    1e-7,
    5e-324,
    1e300,
    math.inf,
    -math.inf,
    math.nan,
]
ODD: list[Any] = [Label("a str subclass"), Level.HIGH, True, False, None, (1, "t"), b"bytes"]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 5 else 5)
    if kind in (0, 1):
        return rng.choice(STRINGS)
    if kind == 2:
        return rng.choice(NUMBERS)
    if kind == 3:
        return rng.choice(ODD) if rng.random() < 0.3 else rng.randint(-(10**6), 10**6)
    if kind == 4:
        return rng.uniform(-1e6, 1e6)
    if kind in (5, 6, 7):
        items = {}
        for _ in range(rng.randint(0, 5)):
            key: Any = rng.choice(KEYS) if rng.random() < 0.97 else rng.choice([1, ("t",)])
            items[key] = random_value(rng, depth + 1)
        return OrderedDict(items) if rng.random() < 0.05 else items
    items_list = [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return tuple(items_list) if rng.random() < 0.05 else items_list


def python_plain(value: Any) -> bytes | None:
    """The specification: audit/canonical.py's plain path without the C."""
    if not canonical_module._plain(value):
        return None
    try:
        return canonical_module._encode_plain(value).encode("utf-8")
    except UnicodeEncodeError:
        return None


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, a tuple not a list)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(
            type(k) is type(j) and same(a[k], b[j]) for k, j in zip(a, b, strict=True)
        )
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_the_extension_is_built() -> None:
    """Records encoded in Python would cost every call several times as much; the install
    builds the extension (it needs a C compiler)."""
    assert native is not None


def test_canonical_gives_the_plain_bytes_or_none_as_python_does() -> None:
    rng = random.Random(8785)
    plain = 0
    for _ in range(30_000):
        value = random_value(rng)
        expected = python_plain(value)
        assert native.canonical(value) == expected, repr(value)[:300]
        if expected is not None:
            plain += 1
            assert expected == rfc8785.dumps(value)
    # Both sides of the comparison are covered.
    assert 5_000 < plain < 25_000, plain


def test_canonical_of_every_number_and_string() -> None:
    for value in [*NUMBERS, *STRINGS, *ODD]:
        for wrapped in (value, [value], {"k": value}):
            assert native.canonical(wrapped) == python_plain(wrapped), repr(wrapped)[:200]
    floats = [10.0 ** random.Random(754).uniform(-8, 22) for _ in range(20_000)]
    for value in floats + [-f for f in floats] + [float(round(f)) for f in floats]:
        assert native.canonical(value) == python_plain(value), repr(value)


def test_keys_in_the_order_rfc8785_gives() -> None:
    value = {"b": 1, "a": 2, "é": 3, "B": 4, "": 5, "aa": 6}
    assert native.canonical(value) == rfc8785.dumps(value)
    # Keys where code point order and UTF-16 order part are left to Python.
    assert native.canonical({"\ue000": 1, "😀": 2}) is None
    assert canonical({"\ue000": 1, "😀": 2}) == rfc8785.dumps({"\ue000": 1, "😀": 2})


def test_stored_as_is_exactly_where_storable_changes_nothing() -> None:
    rng = random.Random(2053)
    unchanged = 0
    for _ in range(30_000):
        value = random_value(rng)
        expected = same(storable_python(value), value)
        assert native.stored_as_is(value) is expected, repr(value)[:300]
        unchanged += expected
    assert 5_000 < unchanged < 25_000, unchanged


def test_deep_values_are_left_to_python() -> None:
    deep: Any = "bottom"
    for _ in range(500):
        deep = [deep]
    assert native.canonical(deep) is None
    assert native.stored_as_is(deep) is False
    assert canonical(deep) == rfc8785.dumps(deep)
    assert storable(deep) == deep


def test_large_strings() -> None:
    for text in ("a" * 1_000_000, 'q"\n' * 100_000, "é" * 300_000, "😀\t" * 100_000):
        assert native.canonical({"t": text}) == rfc8785.dumps({"t": text})


def records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(n)
    rows = []
    for k in range(n):
        rows.append(
            {
                "kind": Kind.CALL_OUTCOME if k % 2 else Kind.CALL_REQUEST,
                "connection": "demo",
                "method": "tools/call",
                "target": f"tool-{k}",
                "call_id": None if k % 3 == 0 else f"00000000-0000-4000-8000-{k:012d}",
                "arguments": random_value(rng),
                "result": random_value(rng) if k % 2 else None,
                "latency_ms": rng.choice([3.217, 4.0, None]),
                "details": {"n": k},
            }
        )
    return rows


def test_records_built_with_and_without_the_c_are_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stamp = datetime(2026, 12, 6, 14, 0, 0, 123456, tzinfo=UTC)
    monkeypatch.setattr(chain, "now", lambda: stamp)
    with_c = chain.build(records(300), 41, "f" * 64)
    monkeypatch.setattr(canonical_module, "_native", None)
    without = chain.build(records(300), 41, "f" * 64)
    assert [r.hash for r in with_c] == [r.hash for r in without]
    for a, b in zip(with_c, without, strict=True):
        assert a.field_values().keys() == b.field_values().keys()
        assert a.compute_hash() == a.hash
    assert json.loads(chain.rows_json(with_c)) == json.loads(chain.rows_json(without))
    # Most rows are the canonical bytes, written once; rows that are not plain are encoded.
    carried = sum(hasattr(r, "_row_json") for r in with_c)
    assert 0 < carried < len(with_c)


def compact_covers(value: Any, depth: int = 0) -> bool:
    """The values `compact` encodes itself (native/audit_native.c says why these)."""
    if depth > 200:
        return False
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if value is None or value is True or value is False:
        return True
    if type(value) is int:
        return -(2**63) <= value < 2**63
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is list:
        return all(compact_covers(v, depth + 1) for v in value)
    if type(value) is dict:
        return all(
            isinstance(k, str) and compact_covers(k) and compact_covers(v, depth + 1)
            for k, v in value.items()
        )
    return False


def python_dumps(value: Any) -> bytes | str:
    try:
        return jsonrpc.dumps_python(value)
    except (TypeError, ValueError) as error:
        return type(error).__name__


def test_compact_gives_json_dumps_bytes_or_none() -> None:
    """Messages to agents: the C writes what json.dumps writes, keys in their order."""
    rng = random.Random(7159)
    covered = 0
    for _ in range(30_000):
        value = random_value(rng)
        if compact_covers(value):
            covered += 1
            assert native.compact(value) == python_dumps(value), repr(value)[:300]
        else:
            assert native.compact(value) is None, repr(value)[:300]
        # What the gateway sends is the same with the C and without it.
        try:
            sent: bytes | str = jsonrpc.dumps(value)
        except (TypeError, ValueError) as error:
            sent = type(error).__name__
        assert sent == python_dumps(value), repr(value)[:300]
    assert 5_000 < covered < 25_000, covered


def test_compact_of_every_number_and_string() -> None:
    for value in [*NUMBERS, *STRINGS, *ODD, 2**63 - 1, -(2**63), 2**63]:
        for wrapped in (value, [value], {"k": value, "é": [value, None]}):
            expected = python_dumps(wrapped) if compact_covers(wrapped) else None
            assert native.compact(wrapped) == expected, repr(wrapped)[:200]
    floats = [10.0 ** random.Random(754).uniform(-330, 308) for _ in range(20_000)]
    for value in floats + [-f for f in floats] + [float(round(f)) for f in floats[:2000]]:
        assert native.compact(value) == python_dumps(value), repr(value)
    deep: Any = "bottom"
    for _ in range(500):
        deep = {"d": deep}
    assert native.compact(deep) is None
    assert jsonrpc.dumps(deep) == python_dumps(deep)
    for text in ("a" * 1_000_000, 'q"\n' * 100_000, "é" * 300_000, "😀\t" * 100_000):
        assert native.compact({"t": text}) == python_dumps({"t": text})
