"""The C detectors (native/masking_native.c) find exactly what their Python specifications
find: the same spans in the same order, on the labelled evaluation set, on realistic tool
results and on random text built to sit on the edges of the patterns (separators, lengths,
lookbehinds, URL userinfo, non-ASCII characters of every string kind)."""

import itertools
import random
from collections import Counter

import pytest

from bench.upstream_fast import report_text
from masking import detectors
from masking.detectors import BUILTIN_DETECTORS, Finding, Scanner
from masking.evaluation import _luhn_complete, generate, realistic_text

EMAIL = BUILTIN_DETECTORS["email"]
CARD = BUILTIN_DETECTORS["payment_card"]
NATIVE = (EMAIL, CARD)

# Pieces that random texts are made of: characters and fragments that the two detectors
# look at, so that a random text often holds a near-miss.
PIECES = (
    *"0123456789",
    *"0123456789",
    *" -.@_%+/:$,;()[]'\"\n\t",
    *"aAbZxyemcpnrstv",
    "\u00e9",  # Latin-1: a one-byte string kind that is not ASCII
    "\u0663",  # ARABIC-INDIC DIGIT THREE: a digit, but not an ASCII one
    "\u2003",  # EM SPACE: whitespace for `\s`, two-byte kind
    "\x1c",  # a separator that `\s` matches
    "\U0001f600",  # four-byte kind
    "://",
    "ssh://git@",
    "https://user:pw@",
    "card ",
    "PAN: ",
    "visa no. ",
    "IE29 AIBK 9311 5212 ",
    "NL91 ABNA ",
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4111111111111111",
    "5555555555554444",
    "3782 822463 10005",
    "3056 930902 5904",
    "6011000990139424",
    "501800000009",  # a compact 12-digit Maestro number (Luhn-valid)
    "6759 6498 2643 8453 12",
    "0000",
    "1111",
    "123",
    "user",
    "first.last",
    "a..b",
    "@example.com",
    "@mail.example.co.uk",
    "@icon.png",
    "@x-y.org",
    "example",
    ".com",
    ".png",
    ".JSON",
    "@",
    "..",
    "-",
)


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 40)))


def _edge_texts() -> list[str]:
    """Lengths at the bounds of the patterns."""
    texts = []
    for n in range(60, 70):  # the local part is at most 64 characters
        texts += ["a" * n + "@example.com", "x " + "b" * n + "@example.com"]
    for n in range(250, 262):  # URL userinfo is at most 256 characters after ://
        texts += ["ftp://" + "u" * n + "@example.com", "s://" + "v" * n + "@host.org"]
    for n in range(60, 66):  # a domain label is at most 63 characters
        texts.append("me@" + "d" * n + ".com")
    for n in range(20, 27):  # a TLD is at most 24 letters
        texts.append("me@example." + "t" * n)
    labels = ".".join(["ab"] * 10)  # at most eight labels before the TLD
    texts += [f"me@{labels}.com", f"me@{labels}.c0m", "me@a.b.c.d.e.f.g.h.i.com."]
    for n in range(8, 22):  # compact card runs around the issued lengths
        texts += ["4" + "1" * n, "card " + "5" + "0" * n, "x 6" + "0" * n + " y"]
    for n in range(250, 262):  # the same, with a local part that ends at a colon
        texts.append("s://" + "x" * n + ":pw@host.org")
    texts += ["", "@", "a@", "@a.co", ".@x.com", "a.@x.com", ".a@x.com", "a@x.co-"]
    # Luhn-valid numbers of every length a scheme table could name, for prefixes on both
    # sides of each scheme's bounds, compact and in groups of four.
    rng = random.Random(7)
    for first in range(10, 100):
        for prefix in (str(first), *(f"{first}{d}" for d in "0123456789")):
            for length in range(12, 20):
                digits = _luhn_complete(prefix, length, rng)
                grouped = " ".join(digits[i : i + 4] for i in range(0, length, 4))
                texts.append(f"{digits} {grouped}")
                # Numbers beside cards: after one, a card word, four digits or a card.
                texts.append(f"{grouped} {digits[-3:]} card {grouped} 1{digits[:3]} 12 {grouped}")
    return texts


def _corpus() -> list[str]:
    rng = random.Random(20261206)
    texts = [sample.text for sample in generate(seed=1234, size="full")]
    texts += [
        realistic_text(size, seed=seed, pii_share=0.3)
        for size in (512, 2048, 10240)
        for seed in range(20)
    ]
    texts.append(report_text(10240))
    texts += [_random_text(rng) for _ in range(20000)]
    texts += _edge_texts()
    return texts


def test_the_extension_is_built() -> None:
    """A gateway that silently fell back to the Python detectors would be several times
    slower on every result; the install builds the extension (it needs a C compiler)."""
    assert detectors._native is not None


@pytest.mark.parametrize("detector", NATIVE, ids=lambda d: d.name)
def test_native_finds_what_the_python_specification_finds(detector) -> None:
    differences = []
    found = 0
    for text in _corpus():
        native = list(detector.find(text))
        specified = list(detector.find_python(text))
        found += len(native)
        if native != specified:
            differences.append((text, native, specified))
    assert differences == [], differences[:5]
    assert found > 1000  # the corpus holds many values, not only near-misses


def test_native_findings_are_findings() -> None:
    text = "mail ann@example.com, card 4111 1111 1111 1111 \u00e9\U0001f600"
    for detector in NATIVE:
        (finding,) = detector.find(text)
        assert type(finding) is Finding
        assert text[finding.start : finding.end] in ("ann@example.com", "4111 1111 1111 1111")
        assert (finding.entity, finding.detector) == (detector.entity, detector.name)


def test_native_positions_are_character_positions() -> None:
    # Characters of every width before the value: positions count characters, not bytes.
    for prefix in ("", "\u00e9 ", "\u0663\u2003", "\U0001f600 "):
        for value in ("ann@example.com", "4111-1111-1111-1111", "5555555555554444"):
            text = f"{prefix}{value} ok"
            findings = [f for d in NATIVE for f in d.find(text)]
            assert [text[f.start : f.end] for f in findings] == [value]


def test_context_and_account_checks_reach_python() -> None:
    # A compact 12-digit number counts after a card word only; digits that end a grouped
    # account number do not count. Both checks are Python callbacks of the C loop.
    assert [f.start for f in CARD.find("card 501800000009")] == [5]
    assert list(CARD.find("order 501800000009")) == []
    assert list(CARD.find("IBAN IE29 AIBK 9311 5212 3456 78 and 4111111111111111")) != []
    assert list(CARD.find("NL91 ABNA 4111 1111 1111 1111")) == list(
        CARD.find_python("NL91 ABNA 4111 1111 1111 1111")
    )


def test_a_failing_callback_raises() -> None:
    def broken(text: str, start: int) -> bool:
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError):
        detectors._native.card_findings("card 501800000009", Finding, "CARD", "c", broken, broken)
    with pytest.raises(TypeError):
        detectors._native.email_findings(b"a@b.co", Finding, "EMAIL", "email")
    with pytest.raises(TypeError):  # findings are tuples: another type is refused
        detectors._native.email_findings("a@b.co", int, "EMAIL", "email")


def test_without_the_extension_the_python_detectors_run(monkeypatch) -> None:
    text = "ann@example.com paid with 4111 1111 1111 1111; bob@example.org 5555555555554444"
    scanner = Scanner(BUILTIN_DETECTORS.values())
    with_native = scanner.scan(text)
    monkeypatch.setattr(detectors, "_native", None)
    assert scanner.scan(text) == with_native
    assert len(with_native) == 4


def test_shared_searches_find_what_their_specification_finds() -> None:
    native = detectors._native
    spec = detectors._Searches
    rng = random.Random(5)
    cases = []
    for text in _corpus()[::7]:
        views = detectors._Views(text)
        cases.append((views.shape, views.joined))
    cases += [
        (bytes(rng.choice(b"00-0 a") for _ in range(rng.randrange(0, 60))),) * 2
        for _ in range(5000)
    ]
    # Digit groups joined by dashes, up to 13 and more digits in a run, for the run test.
    cases += [
        (joined, joined)
        for joined in (
            b"-".join(b"0" * rng.randrange(1, 6) for _ in range(rng.randrange(1, 7)))
            + rng.choice((b"", b"-", b"--", b" a"))
            for _ in range(5000)
        )
    ]
    # Runs of single digits that reach further back than the 24 characters looked at.
    cases += [
        (b"0-" * k + b"0" * m + tail,) * 2
        for k in range(18)
        for m in range(1, 7)
        for tail in (b"", b"-", b" 0")
    ]
    runs_seen = positions_seen = 0
    for shape, joined in cases:
        for minimum in (1, 3, 9):
            assert native.runs(shape, 48, minimum) == spec.runs(shape, 48, minimum), shape
        assert native.runs(joined, 45, 2) == spec.runs(joined, 45, 2), joined  # b"-"
        assert native.positions(joined, b"000-000") == spec.positions(joined, b"000-000")
        assert native.positions(joined, b"00") == spec.positions(joined, b"00"), joined
        pairs = native.positions(joined, b"000-000")
        assert native.outside_long_runs(joined, pairs) == detectors._outside_long_runs_python(
            joined, pairs
        ), joined
        zeros = native.positions(joined, b"0")
        assert native.outside_long_runs(joined, zeros) == detectors._outside_long_runs_python(
            joined, zeros
        ), joined
        if len(joined) <= 40:  # each position alone: its run measured from there
            for zero in zeros:
                assert native.outside_long_runs(
                    joined, [zero]
                ) == detectors._outside_long_runs_python(joined, [zero]), (joined, zero)
        runs_seen += len(native.runs(shape, 48, 9))
        positions_seen += len(native.positions(joined, b"000-000"))
    assert runs_seen > 100 and positions_seen > 100
    with pytest.raises(TypeError):
        native.positions(b"abc", b"")
    with pytest.raises(ValueError):
        native.runs(b"abc", 300, 1)
    with pytest.raises(ValueError):
        native.outside_long_runs(b"000", [7])


def test_views_give_what_their_tables_give() -> None:
    """The derived forms of a text made in one pass (vector instructions, with a scalar
    tail) are the translations `_Views` makes without the extension, for every byte value
    at every position and length."""
    native = detectors._native
    rng = random.Random(11)

    def specified(data: bytes) -> tuple[bytes, bytes, bytes, bytes]:
        shape = data.translate(detectors._SHAPE_TABLE)
        joined = shape.translate(detectors._JOINED_TABLE)
        return shape, joined, data.lower(), data.translate(detectors._LOCAL_TABLE)

    cases = [bytes([value]) * length for value in range(256) for length in (1, 17, 40)]
    cases += [bytes(range(256)), bytes(range(255, -1, -1)), b""]
    cases += [rng.randbytes(rng.randrange(0, 200)) for _ in range(3000)]
    cases += [
        bytes(rng.choice(b"09AZaz .-_%+@?:/") for _ in range(rng.randrange(0, 100)))
        for _ in range(3000)
    ]
    cases += [detectors._Views(text).ascii for text in _corpus()[::5]]
    for data in cases:
        assert native.views(data) == specified(data), data
    with pytest.raises(TypeError):
        native.views("text")


def test_cards_found_on_a_given_shape_are_those_found_without_it() -> None:
    native = detectors._native
    checks = (detectors._card_context, detectors._after_grouped_account)
    for text in _corpus()[::3]:
        shape = detectors._Views(text).shape
        assert native.card_findings(text, Finding, "CARD", "c", *checks, shape) == (
            native.card_findings(text, Finding, "CARD", "c", *checks)
        ), text
    with pytest.raises(TypeError):  # the shape of another text
        native.card_findings("4111 1111 1111 1111", Finding, "CARD", "c", *checks, b"0000")


def _random_findings(rng: random.Random, length: int) -> list[list[Finding]]:
    """Each detector's findings: overlapping, nested, empty, tied and repeated spans."""
    lists = []
    for index in range(rng.randrange(0, 6)):
        findings = []
        for _ in range(rng.randrange(0, 8)):
            start = rng.randrange(0, length + 1)
            end = min(length, start + rng.choice((0, 1, 2, 4, 4, 8, 16)))
            findings.append(Finding(start, end, f"E{index}", f"d{index}"))
        if findings and rng.random() < 0.2:
            findings.append(findings[0])
        lists.append(findings)
    return lists


def test_merging_gives_what_the_python_specification_gives() -> None:
    rng = random.Random(1615)
    native = detectors._native
    overlapping = 0
    for _ in range(30_000):
        lists = _random_findings(rng, rng.randrange(1, 60))
        merged = native.resolve([list(found) for found in lists])
        assert merged == Scanner.merge_python(lists), lists
        overlapping += len(merged) < sum(1 for found in lists for f in found if f.end > f.start)
    assert overlapping > 5_000
    # On the corpus, through the scanner: the detectors' own overlaps (cards inside IBANs,
    # phone numbers inside cards) are resolved as in Python.
    scanner = Scanner(BUILTIN_DETECTORS.values())
    for text in _corpus()[::5]:
        lists = [list(d.find(text)) for d in scanner.detectors]
        assert native.resolve(lists) == Scanner.merge_python(lists), text
    with pytest.raises(TypeError):
        native.resolve([[(1, 2)]])
    with pytest.raises(TypeError):
        native.resolve([iter([])])


SPLICE_TEXT = (
    "card 4111 1111 1111 1111, mail ann@example.com, id AB-12-\u00e9\u0663\u2003-x\U0001f600z!"
)


@pytest.mark.parametrize("style", ["partial", "label", "hash"])
def test_splicing_gives_what_the_python_specification_gives(style: str) -> None:
    from masking.engine import Masker, Rule

    rules = [
        Rule(k, f"r{k}", f"E{k}", style, True, BUILTIN_DETECTORS[name])
        for k, name in enumerate(("payment_card", "email"))
    ]
    masker = Masker(rules, b"k" * 32)
    rng = random.Random(162)
    texts = [SPLICE_TEXT, report_text(2048), "\U0001f600" * 30, "short", "x" * 40]
    for text in texts * 400:
        starts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randrange(8))))
        findings = []
        for a, b in itertools.pairwise(starts):
            end = rng.randrange(a, b + 1)
            name = rng.choice(("payment_card", "email"))
            findings.append(Finding(a, end, "E", name))
        expected = masker.splice_python(text, findings)
        assert (
            detectors._native.splice(
                text, findings, masker._labels, masker._partials, masker._replace
            )
            == expected
        ), (text, findings)
    with pytest.raises(ValueError):  # not in order
        detectors._native.splice(
            "abcdef",
            [Finding(3, 4, "E", "email"), Finding(0, 1, "E", "email")],
            {},
            set(),
            masker._replace,
        )
    with pytest.raises(TypeError):
        detectors._native.splice("abc", [Finding(0, 1, "E", "x")], {}, set(), lambda d, v: 7)


def test_masking_without_the_extension_gives_the_same(monkeypatch) -> None:
    from masking import engine
    from masking.engine import Masker, Report, Rule

    rules = [
        Rule(1, "cards", "CARD", "partial", True, BUILTIN_DETECTORS["payment_card"]),
        Rule(2, "mail", "EMAIL", "hash", True, BUILTIN_DETECTORS["email"]),
        Rule(3, "phones", "PHONE", "label", True, BUILTIN_DETECTORS["phone"]),
    ]
    masker = Masker(rules, b"k" * 32)
    texts = [*_corpus()[::40], report_text(10240)]

    def masked() -> list[tuple[str, Counter]]:
        reports = [Report() for _ in texts]
        return [(masker.mask_text(t, r), r.counts) for t, r in zip(texts, reports, strict=True)]

    with_native = masked()
    monkeypatch.setattr(engine, "_native", None)
    monkeypatch.setattr(detectors, "_native", None)
    assert masked() == with_native
    assert sum(masked != text for (masked, _), text in zip(with_native, texts, strict=True)) > 200
