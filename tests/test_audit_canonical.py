"""Canonical bytes: the fast encoder must give exactly RFC 8785's bytes, or defer to it.

Record hashes are computed over these bytes, and anyone verifying an exported trail with
another RFC 8785 implementation must get the same hashes.
"""

import math
import random

import pytest
import rfc8785

from audit.canonical import _canonical, _plain, canonical, storable

# Characters where encoders tend to differ: controls with and without short escapes,
# quotes, backslash, slash, DEL, line and paragraph separators, the BMP's private use and
# top, a lone surrogate, and characters beyond the BMP (which sort differently by code
# point and by UTF-16 code unit against U+E000..U+FFFF).
TRICKY = [
    *[chr(c) for c in range(0x20)],
    '"',
    "\\",
    "/",
    "\x7f",
    "\u2028",
    "\u2029",
    "\ue000",
    "\uffff",
    "\ufeff",
    "\ud800",
    "é",
    "€",
    "😀",
    "\U0010ffff",
    "a",
    "Z",
    " ",
]


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(rng.randint(0, 6)))


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return random_text(rng)
    if kind == 1:
        return rng.choice([0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**60), 42])
    if kind == 2:
        return rng.choice([0.5, -0.0, 1e21, 1e-7, 3.0, 123456.789, 1.0])
    if kind == 3:
        return rng.choice([True, False, None])
    if kind == 4:
        return rng.choice(["plain", "card 4242 4242 4242 4242", "[EMAIL]", ""])
    if kind == 5:
        return rng.randint(-1000, 1000)
    if kind in (6, 7):
        return {random_text(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))}
    return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]


def reference(value: object) -> bytes | type[BaseException]:
    try:
        return rfc8785.dumps(value)
    except Exception as exc:
        return type(exc)


def test_fast_encoding_matches_rfc8785_byte_for_byte() -> None:
    rng = random.Random(8785)
    fast = 0
    for _ in range(20_000):
        value = random_value(rng)
        expected = reference(value)
        if isinstance(expected, bytes):
            assert canonical(value) == expected, repr(value)
        else:
            with pytest.raises(expected):
                canonical(value)
        fast += _plain(value)
    # The comparison covers the fast path, not only the fallback.
    assert fast > 5_000


def test_keys_are_ordered_by_utf16_code_units() -> None:
    # By code point U+E000 < U+1F600; by UTF-16 code unit 0xD83D < 0xE000.
    value = {"\ue000": 1, "😀": 2, "a": 3}
    assert canonical(value) == rfc8785.dumps(value)
    assert canonical(value).index("😀".encode()) < canonical(value).index("\ue000".encode())


def test_a_typical_record_takes_the_fast_path() -> None:
    body = storable(
        {
            "kind": "call_request",
            "arguments": {"query": "select 1", "limit": 10, "tags": ["a", "b"], "x": None},
            "result": {"content": [{"type": "text", "text": 'line\nnext\t"quoted" é 😀'}]},
            "masking": {"rules": {"EMAIL": 2}, "masked": 2},
        }
    )
    assert _plain(body)
    assert canonical(body) == rfc8785.dumps(body)
    # An outcome record carries its latency, a float that Python writes as RFC 8785 does.
    outcome = {**body, "kind": "call_outcome", "latency_ms": 12.345}
    assert _plain(outcome)
    assert canonical(outcome) == rfc8785.dumps(outcome)
    # A float that RFC 8785 writes otherwise (1e+21, 3 for 3.0) is formatted by the
    # reference implementation, and the rest is joined around it.
    for other in (1e21, 3.0):
        outcome["ratio"] = other
        assert not _plain(outcome)
        assert _canonical(outcome) == rfc8785.dumps(outcome)


def test_floats_match_rfc8785_byte_for_byte() -> None:
    # Random floats of every magnitude where the fast path begins and ends, whole and not,
    # and floats one step away from the limits.
    rng = random.Random(754)
    values = [1e-4, 1e16, math.nextafter(1e-4, 0), math.nextafter(1e16, 0), 0.1 + 0.2, 5e-324]
    for _ in range(50_000):
        magnitude = 10.0 ** rng.uniform(-8, 22)
        value = rng.choice([magnitude, -magnitude, float(round(magnitude)), rng.random()])
        values.append(value)
    fast = 0
    for value in values:
        assert canonical([value]) == rfc8785.dumps([value]), repr(value)
        fast += _plain(value)
    assert fast > 10_000
