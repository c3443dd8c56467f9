"""A labelled evaluation set for the built-in detectors, and exact-span scoring.

`generate(seed)` builds sentences, log excerpts, JSON documents (as text) and query results
(CSV, TSV, markdown tables) from its own seeded generator, so the set is identical for a
seed on every machine and with every version of every library (Faker's output changes
between releases; ours changes only with this file). Every sensitive value is labelled
with its exact span and entity (the labels of `detectors.ENTITIES`). The texts also carry
hard negatives that resemble the entities but must not be flagged: order numbers,
timestamps, epoch times, version strings, UUIDs, git SHAs and hex ids, dates, prices, ZIP
codes, Luhn-failing card-shaped numbers, IMEIs, ISBNs, IBANs with a bad checksum, invalid
SSNs, loopback addresses and netmasks, MAC addresses, OIDs, code paths, AWS ARNs,
publishable Stripe keys, public keys and certificates, placeholders (`********`,
`<YOUR_API_KEY>`, `ghp_xxxx...`), token counts and pagination tokens.

Where two detectors could claim one value, the label is the one `scan` reports with the
built-in order: a JWT or GitHub token after "Bearer " or "token=" is a JWT or GitHub token,
not a bearer token or a secret assignment.

`evaluate` matches exactly: a finding is a true positive only if its start, end and entity
equal a label's. A finding that overlaps a label without matching it counts twice, a false
positive for what was found and a false negative for what was missed, because a masker that
leaves half a card number visible has not done its job.

The set is written for the behaviour the detectors document, formats and lookalikes alike,
so its figures guard against regressions; they are not an estimate of accuracy on real
traffic, which holds formats no generator thought of.
"""

import base64
import ipaddress
import json
import random
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .detectors import ENTITIES, Detector, iban_checksum_valid, luhn_valid, scan


@dataclass(frozen=True, slots=True)
class Sample:
    text: str
    spans: list[tuple[int, int, str]]


@dataclass(frozen=True, slots=True)
class Scores:
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f2: float

    @classmethod
    def of(cls, tp: int, fp: int, fn: int) -> "Scores":
        # No findings means no false ones; nothing to find means nothing missed.
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 1.0
        f2 = 5 * precision * recall / (4 * precision + recall) if precision + recall else 0.0
        return cls(tp, fp, fn, precision, recall, f2)

    @property
    def support(self) -> int:
        return self.tp + self.fn


SIZES = {"full": 8000, "small": 2000, "tiny": 300}


def evaluate(samples: Iterable[Sample], detectors: Iterable[Detector]) -> dict[str, Scores]:
    """Per-entity scores of `scan(sample.text, detectors)` against the labels."""
    detectors = list(detectors)
    counts: dict[str, list[int]] = {entity: [0, 0, 0] for entity in ENTITIES.values()}
    for sample in samples:
        gold = set(sample.spans)
        found = {(f.start, f.end, f.entity) for f in scan(sample.text, detectors)}
        for span, slot in ((found & gold, 0), (found - gold, 1), (gold - found, 2)):
            for _, _, entity in span:
                counts.setdefault(entity, [0, 0, 0])[slot] += 1
    return {entity: Scores.of(*c) for entity, c in counts.items()}


def micro_average(scores: dict[str, Scores]) -> Scores:
    return Scores.of(
        sum(s.tp for s in scores.values()),
        sum(s.fp for s in scores.values()),
        sum(s.fn for s in scores.values()),
    )


def generate(seed: int = 1234, size: str = "full") -> list[Sample]:
    """The evaluation set: `size` is "full" (8000 documents, 1000 to 2700 values per entity),
    "small" or "tiny" (the first documents of the same stream)."""
    rng = random.Random(seed)
    builders = (_sentence_sample, _log_sample, _json_sample, _table_sample)
    return [builders[i % 4](rng) for i in range(SIZES[size])]


# ---------------------------------------------------------------------------------------
# building a text with labelled spans

Part = str | tuple[str, str]  # plain text, or (entity, value)


class _Text:
    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.spans: list[tuple[int, int, str]] = []
        self.length = 0

    def add(self, *parts: Part) -> None:
        for part in parts:
            if isinstance(part, tuple):
                entity, value = part
                self.spans.append((self.length, self.length + len(value), entity))
                value_text = value
            else:
                value_text = part
            self.chunks.append(value_text)
            self.length += len(value_text)

    def sample(self) -> Sample:
        return Sample("".join(self.chunks), self.spans)


def _fill(template: str, entity: str, value: str) -> list[Part]:
    before, after = template.split("{}", 1)
    return [before, (entity, value), after]


# ---------------------------------------------------------------------------------------
# vocabulary

FIRST = (
    "james mary robert patricia john jennifer michael linda david elizabeth william barbara "
    "richard susan joseph jessica thomas sarah charles karen chris nancy daniel lisa matthew "
    "betty anthony sandra mark ashley paul emily steven kimberly andrew donna joshua michelle "
    "kenneth carol kevin amanda brian melissa george deborah timothy stephanie ronald rebecca "
    "jason laura edward sharon jeffrey cynthia ryan kathleen jacob amy gary angela nicholas "
    "anna eric shirley jonathan brenda stephen pamela larry emma justin nicole scott helen "
    "sofia lukas mia leon hannah noah lena elias marie felix amelie yuki hiroshi priya arjun "
    "wei fatima omar ines mateo lucia sven ingrid"
).split()
LAST = (
    "smith johnson williams brown jones garcia miller davis rodriguez martinez hernandez "
    "lopez gonzalez wilson anderson thomas taylor moore jackson martin lee perez thompson "
    "white harris sanchez clark ramirez lewis robinson walker young allen king wright scott "
    "torres nguyen hill flores green adams nelson baker hall rivera campbell mitchell carter "
    "roberts mueller schmidt schneider fischer weber meyer wagner becker schulz hoffmann "
    "dubois moreau laurent rossi russo ferrari tanaka suzuki sato kumar sharma patel singh "
    "chen wang li zhang okafor mensah silva santos oliveira kowalski novak jensen hansen"
).split()
DOMAINS = (
    "example.com example.org acme.io acme-corp.com globex.net initech.com umbrella.co.uk "
    "contoso.com fabrikam.de northwind.fr wayne-enterprises.com stark.industries mail.example.com "
    "gmail.com outlook.com yahoo.co.jp proton.me fastmail.fm hey.com icloud.com web.de gmx.at "
    "uni-heidelberg.de cs.stanford.edu nhs.net gov.uk company.com.au startup.ai shop.app "
    "corp.example.net eu.mail.example.org a.co"
).split()
COMPANIES = "Acme Globex Initech Umbrella Contoso Fabrikam Northwind Hooli Vandelay Stark".split()
CITIES = "Berlin Paris London Austin Denver Tokyo Madrid Lisbon Oslo Toronto Sydney Zurich".split()
PRODUCTS = "widget gadget sprocket license subscription seat plan bundle adapter cable".split()
WORDS = (
    "the report shows that our team reviewed last quarter and found several issues with the "
    "deployment pipeline while customers asked about billing migration onboarding latency "
    "and support tickets were closed after the incident review meeting"
).split()

US_AREA_CODES = (
    "201 202 203 205 206 207 208 212 213 214 215 216 217 218 219 224 225 228 229 231 234 239 "
    "240 248 251 252 253 254 256 260 262 267 269 270 281 301 302 303 304 305 307 308 309 310 "
    "312 313 314 315 316 317 318 319 320 321 323 325 330 334 336 337 339 347 351 352 360 361 "
    "386 401 402 404 405 406 407 408 409 410 412 413 414 415 417 419 423 424 425 432 434 435 "
    "440 443 469 470 478 479 480 484 501 502 503 504 505 507 508 509 510 512 513 515 516 517 "
    "518 520 530 540 541 551 559 561 562 563 567 570 571 573 574 580 585 586 601 602 603 605 "
    "606 607 608 609 610 612 614 615 616 617 618 619 620 623 626 630 631 636 641 646 650 651 "
    "660 661 662 678 701 702 703 704 706 707 708 712 713 714 715 716 717 718 719 720 724 727 "
    "731 732 734 740 754 757 760 763 765 770 772 773 774 775 781 785 786 801 802 803 804 805 "
    "806 808 810 812 813 814 815 816 817 818 828 830 831 832 843 845 847 848 850 856 857 858 "
    "859 860 862 863 864 865 870 901 903 904 906 907 908 909 910 912 913 914 915 916 917 918 "
    "919 920 925 928 931 936 937 940 941 949 951 952 954 956 970 971 972 973 978 979 980 985"
).split()


def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.digits, k=n))


def _chars(rng: random.Random, n: int, alphabet: str) -> str:
    return "".join(rng.choices(alphabet, k=n))


ALNUM = string.ascii_letters + string.digits
B64 = ALNUM + "+/"
B64URL = ALNUM + "-_"
HEX = "0123456789abcdef"


def _name(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST), rng.choice(LAST)


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


# ---------------------------------------------------------------------------------------
# values


def email(rng: random.Random) -> str:
    first, last = _name(rng)
    local = rng.choice(
        (
            f"{first}.{last}",
            f"{first[0]}{last}",
            f"{first}_{last}{rng.randint(1, 99)}",
            f"{first}+{rng.choice(('news', 'billing', 'test', 'gh'))}",
            f"{first}.{rng.choice(string.ascii_lowercase)}.{last}",
            f"{last}{rng.randint(1970, 2005)}",
            f"{first}-{last}",
            f"{first}",
        )
    )
    if rng.random() < 0.15:
        local = local.capitalize() if rng.random() < 0.5 else local.upper()
    domain = rng.choice(DOMAINS)
    return f"{local}@{domain.upper() if rng.random() < 0.03 else domain}"


def _us_number(rng: random.Random) -> tuple[str, str, str]:
    exchange = str(rng.randint(2, 9)) + _digits(rng, 2)
    while exchange[1:] == "11":
        exchange = str(rng.randint(2, 9)) + _digits(rng, 2)
    return rng.choice(US_AREA_CODES), exchange, _digits(rng, 4)


def phone(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        a, e, n = _us_number(rng)
        number = rng.choice(
            (
                f"({a}) {e}-{n}",
                f"{a}-{e}-{n}",
                f"{a}.{e}.{n}",
                f"+1 {a} {e} {n}",
                f"+1-{a}-{e}-{n}",
                f"1-{a}-{e}-{n}",
                f"+1{a}{e}{n}",
                f"({a}){e}-{n}",
                f"+1 ({a}) {e}-{n}",
                f"{a} {e} {n}",
            )
        )
        if rng.random() < 0.12:
            number += rng.choice((" ext. ", " x", " ext ", "x")) + _digits(rng, rng.randint(2, 4))
        return number
    if roll < 0.85:
        return rng.choice(_INTERNATIONAL)(rng)
    return rng.choice(_NATIONAL)(rng)


def _d(rng: random.Random, n: int) -> str:
    return _digits(rng, n)


_INTERNATIONAL: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"+44 20 {r.choice('378')}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+44 7{r.choice('45789')}{_d(r, 2)} {_d(r, 6)}",
    lambda r: f"+44 (0)20 {r.choice('378')}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+49 30 {r.randint(2, 9)}{_d(r, 7)}",
    lambda r: f"+49 15{r.choice('1279')} {_d(r, 8)}",
    lambda r: f"+49-89-{r.randint(2, 9)}{_d(r, 7)}",
    lambda r: f"+33 {_fr_mobile(r)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
    lambda r: f"+33 1 {_d(r, 2)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
    lambda r: f"+91 {r.choice('6789')}{_d(r, 4)} {_d(r, 5)}",
    lambda r: f"+61 4{r.randint(0, 3)}{_d(r, 1)} {_d(r, 3)} {_d(r, 3)}",
    lambda r: f"+61 2 {r.choice('89')}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+81 90-{r.randint(1, 9)}{_d(r, 3)}-{_d(r, 4)}",
    lambda r: f"+81 3-{r.choice('3456')}{_d(r, 3)}-{_d(r, 4)}",
    lambda r: f"+55 11 9{_d(r, 4)}-{_d(r, 4)}",
    lambda r: f"+34 6{_d(r, 2)} {_d(r, 3)} {_d(r, 3)}",
    lambda r: f"+39 3{r.choice('2345')}{_d(r, 1)} {_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+31 6 {r.randint(1, 6)}{_d(r, 7)}",
    lambda r: f"+52 55 {r.randint(1, 9)}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"+86 13{_d(r, 1)} {_d(r, 4)} {_d(r, 4)}",
    lambda r: f"+{rng_cc(r)}",
)


def _fr_mobile(r: random.Random) -> str:
    """06 xx or 07 3x-9x: the French mobile ranges in service."""
    return f"6 {_d(r, 2)}" if r.random() < 0.6 else f"7 {r.randint(3, 9)}{_d(r, 1)}"


def rng_cc(r: random.Random) -> str:
    """E.164 without separators."""
    return r.choice(
        (
            f"447{r.choice('45789')}{_d(r, 8)}",
            f"4915{r.choice('1279')}{_d(r, 8)}",
            f"336{_d(r, 8)}",
            f"614{r.randint(0, 3)}{_d(r, 7)}",
            f"91{r.choice('6789')}{_d(r, 9)}",
            f"614{r.randint(0, 3)}{_d(r, 7)}",
        )
    )


_NATIONAL: tuple[Callable[[random.Random], str], ...] = (
    lambda r: f"020 {r.choice('378')}{_d(r, 3)} {_d(r, 4)}",
    lambda r: f"07{r.choice('45789')}{_d(r, 2)} {_d(r, 6)}",
    lambda r: f"030 {r.randint(2, 9)}{_d(r, 7)}",
    lambda r: f"015{r.choice('1279')} {_d(r, 8)}",
    lambda r: f"0{_fr_mobile(r)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
    lambda r: f"01 {_d(r, 2)} {_d(r, 2)} {_d(r, 2)} {_d(r, 2)}",
)


def bare_us_phone(rng: random.Random) -> str:
    a, e, n = _us_number(rng)
    return f"{a}{e}{n}"


def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + _digits(rng, length - len(prefix) - 1)
    for check in string.digits:
        if luhn_valid(body + check):
            return body + check
    raise AssertionError("unreachable")


_CARD_SCHEMES: tuple[tuple[Callable[[random.Random], str], tuple[int, ...]], ...] = (
    (lambda r: "4", (16, 16, 16, 13, 19)),
    (lambda r: str(r.randint(51, 55)), (16,)),
    (lambda r: str(r.randint(2221, 2720)), (16,)),
    (lambda r: r.choice(("34", "37")), (15,)),
    (lambda r: r.choice(("6011", "65")), (16,)),
    (lambda r: str(r.randint(3528, 3589)), (16,)),
    (lambda r: "36", (14,)),
    (lambda r: "62", (16, 19)),
    (lambda r: r.choice(("6759", "5018", "6304")), (12, 16, 19)),
)


def card_digits(rng: random.Random) -> str:
    prefix, lengths = rng.choice(_CARD_SCHEMES)
    return _luhn_complete(prefix(rng), rng.choice(lengths), rng)


def format_card(rng: random.Random, digits: str) -> str:
    style = rng.choice(("compact", " ", " ", "-"))
    if style == "compact":
        return digits
    if len(digits) == 15:
        groups = [digits[:4], digits[4:10], digits[10:]]
    elif len(digits) == 14:
        groups = [digits[:4], digits[4:10], digits[10:]]
    else:
        groups = [digits[i : i + 4] for i in range(0, len(digits), 4)]
    return style.join(groups)


def card(rng: random.Random) -> str:
    return format_card(rng, card_digits(rng))


_IBAN_FORMATS = {
    "DE": "18n", "GB": "4a14n", "FR": "10n11c2n", "NL": "4a10n", "ES": "20n", "IT": "1a10n12c",
    "CH": "5n12c", "BE": "12n", "AT": "16n", "PL": "24n", "SE": "20n", "NO": "11n",
    "DK": "14n", "FI": "14n", "IE": "4a14n", "PT": "21n", "LU": "3n13c", "SA": "2n18c",
    "AE": "3n16n", "CZ": "20n",
}  # fmt: skip


def _bban(rng: random.Random, spec: str) -> str:
    out, number = [], ""
    for char in spec:
        if char.isdigit():
            number += char
            continue
        alphabet = {
            "n": string.digits,
            "a": string.ascii_uppercase,
            "c": string.ascii_uppercase + string.digits,
        }[char]
        out.append(_chars(rng, int(number), alphabet))
        number = ""
    return "".join(out)


def iban_compact(rng: random.Random) -> str:
    country = rng.choice(sorted(_IBAN_FORMATS))
    bban = _bban(rng, _IBAN_FORMATS[country])
    rearranged = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in rearranged)) % 97
    value = f"{country}{check:02d}{bban}"
    assert iban_checksum_valid(value)
    return value


def format_iban(rng: random.Random, compact: str) -> str:
    if rng.random() < 0.5:
        return compact
    return " ".join(compact[i : i + 4] for i in range(0, len(compact), 4))


def iban(rng: random.Random) -> str:
    return format_iban(rng, iban_compact(rng))


def ssn_parts(rng: random.Random) -> tuple[str, str, str]:
    while True:
        area = rng.randint(1, 899)
        if area != 666:
            break
    parts = f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"
    if "".join(parts) in ("078051120", "219099999", "123456789"):
        return ssn_parts(rng)
    return parts


def ssn(rng: random.Random) -> str:
    return rng.choice(("-", "-", "-", "-", " ")).join(ssn_parts(rng))


def ipv4(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.2:
        return f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if roll < 0.35:
        return f"192.168.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if roll < 0.45:
        return f"172.{rng.randint(16, 31)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    first = rng.choice([n for n in range(1, 224) if n not in (10, 127)])
    return f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"


def ipv6(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        groups = [rng.randint(0, 0xFFFF) for _ in range(8)]
        groups[0] = rng.choice((0x2001, 0x2A00, 0x2606, 0x2400, 0x2A03))
        for i in rng.sample(range(2, 8), rng.randint(0, 3)):
            groups[i] = 0
        value = str(ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)))
    elif roll < 0.5:
        value = "fe80::" + ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(4))
    elif roll < 0.65:
        value = f"2001:db8::{rng.randint(1, 0xFFFF):x}"
    elif roll < 0.8:
        value = ":".join(f"{rng.randint(0, 0xFFFF):04x}" for _ in range(8))
        value = "2001:" + value[5:]
    elif roll < 0.9:
        value = f"::ffff:{ipv4(rng)}"
    else:
        value = ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(8))
        value = "2a02:" + value.split(":", 1)[1]
    if not any(c.isdigit() for c in value):
        return ipv6(rng)
    return value.upper() if rng.random() < 0.1 else value


def ip(rng: random.Random) -> str:
    return ipv4(rng) if rng.random() < 0.65 else ipv6(rng)


def aws_access_key(rng: random.Random) -> str:
    return rng.choice(("AKIA", "AKIA", "AKIA", "ASIA")) + _chars(
        rng, 16, string.ascii_uppercase + "234567"
    )


def aws_secret_key(rng: random.Random) -> str:
    while True:
        value = _chars(rng, 40, B64)
        if (
            any(c.isupper() for c in value)
            and any(c.islower() for c in value)
            and any(c.isdigit() for c in value)
        ):
            return value


def github_token(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return f"github_pat_{_chars(rng, 22, ALNUM)}_{_chars(rng, 59, ALNUM)}"
    return f"gh{rng.choice('pppousr')}_{_chars(rng, 36, ALNUM)}"


def gitlab_token(rng: random.Random) -> str:
    prefix = rng.choice(("glpat-", "glpat-", "glpat-", "gldt-", "glrt-", "glptt-"))
    body = _chars(rng, 20, ALNUM + "_-")
    return prefix + body.strip("-_") + _chars(rng, 20 - len(body.strip("-_")), ALNUM)


def slack_token(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return f"xoxb-{_d(rng, 12)}-{_d(rng, 13)}-{_chars(rng, 24, ALNUM)}"
    if roll < 0.8:
        return f"xoxp-{_d(rng, 12)}-{_d(rng, 12)}-{_d(rng, 13)}-{_chars(rng, 32, HEX)}"
    upper = string.ascii_uppercase + string.digits
    return f"xapp-1-A{_chars(rng, 10, upper)}-{_d(rng, 13)}-{_chars(rng, 64, HEX)}"


def stripe_key(rng: random.Random) -> str:
    prefix = rng.choice(("sk_live_", "sk_live_", "sk_test_", "rk_live_", "whsec_"))
    length = 32 if prefix == "whsec_" else rng.choice((24, 24, 99))
    return prefix + _chars(rng, length, ALNUM)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(rng: random.Random) -> str:
    alg = rng.choice(("HS256", "RS256", "ES256"))
    header: dict[str, object] = {"alg": alg, "typ": "JWT"}
    if alg != "HS256":
        header["kid"] = _chars(rng, 16, HEX)
    first, last = _name(rng)
    issued = 1_700_000_000 + rng.randint(0, 30_000_000)
    payload = {
        "sub": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "name": f"{first.title()} {last.title()}",
        "iat": issued,
        "exp": issued + 3600,
    }
    if rng.random() < 0.5:
        payload["scope"] = rng.choice(("read", "read write", "admin"))
    signature_bytes = {"HS256": 32, "RS256": 256, "ES256": 64}[alg]
    return ".".join(
        (
            _b64url(json.dumps(header, separators=(",", ":")).encode()),
            _b64url(json.dumps(payload, separators=(",", ":")).encode()),
            _b64url(rng.randbytes(signature_bytes)),
        )
    )


def private_key(rng: random.Random, newline: str = "\n") -> str:
    kind = rng.choice(("RSA ", "", "EC ", "OPENSSH ", "ENCRYPTED ", "DSA "))
    lines = rng.randint(3, 25)
    body = [_chars(rng, 64, B64) for _ in range(lines)]
    if kind == "RSA " and rng.random() < 0.3:
        body[:0] = ["Proc-Type: 4,ENCRYPTED", f"DEK-Info: AES-128-CBC,{_chars(rng, 32, HEX)}", ""]
    body.append(_chars(rng, rng.randint(4, 60), B64) + rng.choice(("", "=", "==")))
    return newline.join(
        [f"-----BEGIN {kind}PRIVATE KEY-----", *body, f"-----END {kind}PRIVATE KEY-----"]
    )


def opaque_token(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        value = _chars(rng, rng.choice((32, 40, 64)), HEX)
    elif roll < 0.5:
        value = "ya29." + _chars(rng, rng.randint(60, 120), ALNUM + "-_")
    elif roll < 0.7:
        value = _chars(rng, rng.randint(20, 48), ALNUM + "-._~")
    else:
        value = _chars(rng, rng.randint(24, 60), ALNUM)
    if not any(c.isdigit() for c in value):
        value = value[:-1] + str(rng.randint(0, 9))
    return value.rstrip(".")


_PASSWORD_WORDS = "summer winter dragon monkey tiger sunshine shadow falcon coffee".split()


def password(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.3:
        word = rng.choice(_PASSWORD_WORDS)
        return f"{word.capitalize()}{rng.randint(1, 2025)}{rng.choice('!#$%*?')}"
    if roll < 0.55:
        return _chars(rng, rng.randint(12, 24), ALNUM + "!#%^*-_+")
    if roll < 0.75:
        return _chars(rng, rng.choice((24, 32)), HEX)
    if roll < 0.9:
        return _chars(rng, rng.randint(16, 32), ALNUM)
    return f"{rng.choice(_PASSWORD_WORDS)}{rng.randint(10, 99)}"


# ---------------------------------------------------------------------------------------
# contexts: sentences, log fragments and JSON fields for each entity


@dataclass(frozen=True)
class _Spec:
    entity: str
    value: Callable[[random.Random], str]
    sentences: tuple[str, ...]
    logs: tuple[str, ...]
    json_keys: tuple[str, ...]


SPECS: tuple[_Spec, ...] = (
    _Spec(
        "EMAIL",
        email,
        (
            "Please contact {} for details.",
            "The invoice was sent to {} on Monday.",
            "From: {}",
            "Reply to <{}> before the deadline.",
            "Reach out via mailto:{} if the problem persists.",
            "{} was added as an owner of the project.",
            "CC: {}, thanks!",
            "Questions? Email {}.",
            "{} (work) and a personal address on file.",
            'Signed up as "{}" yesterday',
        ),
        ("user={}", "from=<{}>", "email={}", 'recipient="{}"', "login succeeded for {}"),
        ("email", "contact_email", "owner", "reply_to", "userEmail"),
    ),
    _Spec(
        "PHONE",
        phone,
        (
            "Call me at {} when you land.",
            "Our support line is {}.",
            "Phone: {}",
            "You can reach the front desk on {} (24/7).",
            "Tel. {} / fax on request",
            "Customer asked us to call back at {}, preferably in the morning.",
            '<a href="tel:{}">Call us</a>',
            "Office hours 9-17 (call {}).",
            "Mobile: {}; office line on request.",
            "His number is {}.",
        ),
        ("phone={}", 'caller="{}"', "sms sent to {}", "callback number {}"),
        ("phone", "mobile", "phone_number", "contactPhone", "tel"),
    ),
    _Spec(
        "CARD",
        card,
        (
            "The card {} was declined.",
            "Card number: {}",
            "Please charge {} for the renewal.",
            "Refund issued to card {} (exp 09/27).",
            "Payment method {} added by the customer.",
            "Visa {} 12/27 CVV on file",
            "Card ({}) expired last month.",
        ),
        ("card={}", "pan={}", 'card_number="{}"', "charge failed for card {}"),
        ("card_number", "pan", "cardNumber", "payment_card", "cc"),
    ),
    _Spec(
        "IBAN",
        iban,
        (
            "Please transfer the amount to IBAN {}.",
            "IBAN: {}",
            "Our bank details: {} (BIC DEUTDEFF).",
            "The payout to {} is scheduled for Friday.",
        ),
        ("iban={}", 'beneficiary_iban="{}"', "payout account {}"),
        ("iban", "account_iban", "beneficiaryIban", "bank_account"),
    ),
    _Spec(
        "US_SSN",
        ssn,
        (
            "SSN: {}",
            "The applicant's social security number is {}.",
            "Employee {} submitted the W-4 form.",
            "Verify SSN {} against the payroll record.",
        ),
        ("ssn={}", 'ssn="{}"', "tax id {} verified"),
        ("ssn", "social_security_number", "taxpayer_id"),
    ),
    _Spec(
        "IP_ADDRESS",
        ip,
        (
            "The request came from {} at noon.",
            "Block {} on the firewall.",
            "Server {} is not responding to pings.",
            "Login from a new device ({}) was detected.",
            "X-Forwarded-For: {}",
            "The DNS record points to {}.",
        ),
        ("client={}", "src={}", "remote_addr={}", "peer {} connected", "from {} port 443"),
        ("ip", "client_ip", "remoteAddress", "source_ip", "host_ip"),
    ),
    _Spec(
        "AWS_ACCESS_KEY",
        aws_access_key,
        (
            "Rotate the access key {} before Friday.",
            "The leaked key was {}.",
            "IAM user deploy-bot uses {}.",
        ),
        ("access_key_id={}", "aws_access_key_id={}", "AccessKeyId={}", "credential {} used"),
        ("AccessKeyId", "aws_access_key_id", "accessKeyId"),
    ),
    _Spec(
        "AWS_SECRET_KEY",
        aws_secret_key,
        (
            "aws_secret_access_key = {}",
            "Set AWS_SECRET_ACCESS_KEY={} in the CI settings.",
            "The AWS secret key {} was committed by mistake.",
            "aws_secret_access_key: {}",
        ),
        ("aws_secret_access_key={}", "AWS_SECRET_ACCESS_KEY={}", "SecretAccessKey={}"),
        ("SecretAccessKey", "aws_secret_access_key", "secretAccessKey"),
    ),
    _Spec(
        "GITHUB_TOKEN",
        github_token,
        (
            "Use the token {} for the release workflow.",
            "export GITHUB_TOKEN={}",
            "git clone https://{}@github.com/acme/infra.git",
            "The bot authenticates with {}.",
            "GET https://api.github.com/user?access_token={} HTTP/1.1",
        ),
        ("token={}", "GH_TOKEN={}", "github token {} expired"),
        ("github_token", "token", "ghToken"),
    ),
    _Spec(
        "GITLAB_TOKEN",
        gitlab_token,
        (
            "Create the pipeline with {}.",
            "export GITLAB_TOKEN={}",
            "The runner registered using {}.",
        ),
        ("private_token={}", "PRIVATE-TOKEN: {}", "gitlab token {} revoked"),
        ("gitlab_token", "private_token", "token"),
    ),
    _Spec(
        "SLACK_TOKEN",
        slack_token,
        (
            "The Slack bot token is {}.",
            "SLACK_BOT_TOKEN={}",
            "Install the app with {} and restart.",
        ),
        ("slack_token={}", "token={}", "posting with {}"),
        ("slack_token", "bot_token", "token"),
    ),
    _Spec(
        "STRIPE_KEY",
        stripe_key,
        (
            "Switch the backend to {} before launch.",
            "STRIPE_SECRET_KEY={}",
            "The webhook signing secret is {}.",
        ),
        ("stripe_key={}", "api_key={}", "charging with key {}"),
        ("stripe_secret_key", "secret_key", "apiKey"),
    ),
    _Spec(
        "JWT",
        jwt,
        (
            "Authorization: Bearer {}",
            "The id token {} expired.",
            "curl -H 'Authorization: Bearer {}' https://api.example.com/v1/me",
            "Set the cookie session={} and retry.",
            "Cookie: session={}; Path=/; HttpOnly",
        ),
        ("token={}", "id_token={}", "auth=Bearer {}", "jwt {} rejected: expired"),
        ("access_token", "id_token", "jwt", "token"),
    ),
    _Spec(
        "BEARER_TOKEN",
        opaque_token,
        (
            "Authorization: Bearer {}",
            'curl -H "Authorization: Bearer {}" https://api.example.com/v2/items',
            "Send the header 'Authorization: Bearer {}' with every request.",
            "authorization: bearer {}",
            "Authorization:Bearer {}",
        ),
        ("header=Authorization: Bearer {}", 'authorization="Bearer {}"', "auth: Bearer {}"),
        ("Authorization", "authorization"),
    ),
    _Spec(
        "SECRET",
        password,
        (
            "password={}",
            "Login with user admin and password: '{}'",
            "DB_PASSWORD={}",
            "client_secret={}",
            'The config has api_key = "{}" in plain text.',
            "export API_TOKEN={}",
            "password: {}",
            "psql --host=db --password={}",
            "Server=db01;Database=sales;User Id=app;Password={};",
            "PGPASSWORD={} pg_dump sales",
            "smtp_password = {}",
            "<server><id>nexus</id><password>{}</password></server>",
        ),
        ("password={}", "passwd={}", "db_password={}", 'secret="{}"', "api_key={}"),
        ("password", "client_secret", "api_key", "apiKey", "db_password", "secret", "pwd"),
    ),
)
_SPEC_BY_ENTITY = {spec.entity: spec for spec in SPECS}
_ENTITY_ORDER = [spec.entity for spec in SPECS] + ["PRIVATE_KEY"]


def _entity_parts(rng: random.Random, entity: str, where: str) -> list[Part]:
    """A sentence or log fragment with one labelled value."""
    if entity == "PRIVATE_KEY":
        key = private_key(rng)
        if where == "sentence":
            return [
                "Here is the key you asked for:\n",
                ("PRIVATE_KEY", key),
                "\nDelete it after use.",
            ]
        return ["loaded key material:\n", ("PRIVATE_KEY", key)]
    spec = _SPEC_BY_ENTITY[entity]
    if entity == "SECRET" and rng.random() < 0.2:
        scheme = rng.choice(("postgres", "mysql", "redis", "amqp", "https", "mongodb+srv"))
        user = rng.choice(FIRST)
        host = rng.choice(("db.internal", "cache.example.com", "mq.acme.io", "localhost"))
        return [f"connecting to {scheme}://{user}:", ("SECRET", password(rng).replace("@", "")
                                                       .replace("/", "").replace(":", "")
                                                       .replace("#", "").replace("?", "")),
                f"@{host}/app"]  # fmt: skip
    templates = spec.sentences if where == "sentence" else spec.logs
    value = spec.value(rng)
    if entity == "AWS_SECRET_KEY" and rng.random() < 0.15:
        return [
            "[default]\naws_access_key_id = ",
            ("AWS_ACCESS_KEY", aws_access_key(rng)),
            "\naws_secret_access_key = ",
            (entity, value),
            "\nregion = eu-west-1",
        ]
    if entity == "US_SSN" and where == "log" and rng.random() < 0.3:
        return _fill("ssn={}", entity, "".join(ssn_parts(rng)))
    if entity == "PHONE" and where == "log" and rng.random() < 0.15:
        return _fill("phone={}", entity, bare_us_phone(rng))
    return _fill(rng.choice(templates), entity, value)


def _json_field(rng: random.Random, entity: str) -> tuple[str, list[Part]]:
    """A JSON key and the labelled parts of its (string) value, JSON-escaped."""
    if entity == "PRIVATE_KEY":
        return rng.choice(("private_key", "privateKey", "ssh_key", "tls_key")), [
            ("PRIVATE_KEY", private_key(rng, newline="\\n")),
            "\\n",
        ]
    spec = _SPEC_BY_ENTITY[entity]
    key = rng.choice(spec.json_keys)
    if entity == "BEARER_TOKEN":
        return key, ["Bearer ", (entity, opaque_token(rng))]
    if entity == "PHONE" and key in ("phone", "mobile", "phone_number") and rng.random() < 0.3:
        return key, [(entity, bare_us_phone(rng))]
    if entity == "US_SSN" and key == "ssn" and rng.random() < 0.4:
        return key, [(entity, "".join(ssn_parts(rng)))]
    if entity == "SECRET" and rng.random() < 0.1:
        credentials = f"{rng.choice(FIRST)}:{password(rng)}".encode()
        return "Authorization", ["Basic ", (entity, base64.b64encode(credentials).decode())]
    return key, [(entity, spec.value(rng))]


# ---------------------------------------------------------------------------------------
# hard negatives: (sentence or log text, JSON key, JSON value)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _luhn_failing(rng: random.Random) -> str:
    while True:
        digits = card_digits(rng)
        wrong = digits[:-1] + str((int(digits[-1]) + rng.randint(1, 9)) % 10)
        if not luhn_valid(wrong):
            return format_card(rng, wrong)


def _bad_iban(rng: random.Random) -> str:
    value = iban_compact(rng)
    check = int(value[2:4])
    wrong = f"{value[:2]}{(check + rng.randint(1, 90)) % 97 + 2:02d}{value[4:]}"
    if iban_checksum_valid(wrong):
        return _bad_iban(rng)
    return format_iban(rng, wrong)


def _bad_ssn(rng: random.Random) -> str:
    area, group, serial = ssn_parts(rng)
    roll = rng.randint(0, 4)
    if roll == 0:
        area = "000"
    elif roll == 1:
        area = "666"
    elif roll == 2:
        area = f"9{_d(rng, 2)}"
    elif roll == 3:
        group = "00"
    else:
        serial = "0000"
    return f"{area}-{group}-{serial}"


def _timestamp(rng: random.Random) -> str:
    y, mo, d = rng.randint(2019, 2026), rng.randint(1, 12), rng.randint(1, 28)
    h, mi, s = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    return rng.choice(
        (
            f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z",
            f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}.{rng.randint(0, 999):03d}",
            f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}+02:00",
            f"{y}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}",
            str(rng.randint(1_500_000_000, 1_800_000_000)),
            str(rng.randint(1_500_000_000_000, 1_800_000_000_000)),
            f"{d:02d}/{mo:02d}/{y} {h:02d}:{mi:02d}",
        )
    )


def _date(rng: random.Random) -> str:
    y, mo, d = rng.randint(2019, 2026), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        (f"{y}-{mo:02d}-{d:02d}", f"{mo:02d}/{d:02d}/{y}", f"{d:02d}.{mo:02d}.{y}", f"{y}/{mo}/{d}")
    )


def _version(rng: random.Random) -> str:
    a, b, c, d = rng.randint(0, 20), rng.randint(0, 40), rng.randint(0, 200), rng.randint(0, 99)
    return rng.choice(
        (
            f"v{a}.{b}.{c}",
            f"{a}.{b}.{c}",
            f"{a}.{b}.{c}.{d}-beta",
            f"{a}.{b}.{c}-rc.{d % 5}",
            f"{a}.{b}.{c}+build.{d}",
            f"v{a}.{b}.{c}.{d}",
            f"{a}.{b}",
            f"10.0.{19000 + c}.{d}",
        )
    )


def _order(rng: random.Random) -> str:
    return rng.choice(
        (
            f"ORD-{rng.randint(2019, 2026)}-{_d(rng, 6)}",
            f"#{rng.randint(100000, 99999999)}",
            f"PO {rng.randint(4500000000, 4599999999)}",
            f"INV-{_d(rng, 8)}-{_d(rng, 4)}",
            f"{rng.randint(100, 999)}-{_d(rng, 7)}-{_d(rng, 7)}",
            f"1Z{_chars(rng, 6, string.ascii_uppercase + string.digits)}{_d(rng, 10)}",
            _d(rng, 9),
            _d(rng, 12),
            _d(rng, 20),
        )
    )


def _price(rng: random.Random) -> str:
    amount = rng.randint(1, 9_999_999) / 100
    return rng.choice((f"${amount:,.2f}", f"€ {amount:.2f}", f"USD {amount * 1000:,.0f}"))


def _hex_id(rng: random.Random) -> str:
    return _chars(rng, rng.choice((7, 12, 24, 32, 40, 64)), HEX)


def _numbers(rng: random.Random) -> str:
    return rng.choice(
        (
            f"{rng.randint(1000, 999999):,} users",
            f"{rng.random() * 1000:.3f}",
            f"{rng.randint(1, 99)}.{rng.randint(0, 99)}%",
            f"{rng.randint(1, 999)} {rng.randint(100, 999)} {rng.randint(100, 999)}",
            f"{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
            f"({rng.randint(100, 999)}) {rng.randint(100, 999)}",
            f"{rng.randint(1, 9)}e{rng.randint(3, 12)}",
            f"{rng.randint(10000, 99999)}-{rng.randint(1000, 9999)}",
            f"{rng.randint(10000, 99999)}",
        )
    )


def _not_an_ip(rng: random.Random) -> str:
    return rng.choice(
        (
            "127.0.0.1",
            "0.0.0.0",  # noqa: S104 - a hard negative, not a bind address
            "255.255.255.0",
            "::1",
            f"1.3.6.1.4.1.{rng.randint(1, 60000)}.{rng.randint(1, 9)}",
            ":".join(f"{rng.randint(0, 255):02X}" for _ in range(6)),
            f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            rng.choice(("std::vector", "Foo::Bar", "Add::add", "crate::io::Error", "dead::beef")),
            f"{rng.randint(256, 999)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{_d(rng, 1)}",
            f"version {_d(rng, 1)}.{_d(rng, 1)}.{_d(rng, 1)}.{_d(rng, 1)}",
        )
    )


def _not_an_email(rng: random.Random) -> str:
    return rng.choice(
        (
            f"@{rng.choice(FIRST)}",
            f"{rng.choice(FIRST)}@localhost",
            "icon@2x.png",
            f"lodash@4.17.{rng.randint(0, 21)}",
            f"{rng.choice(FIRST)} at example dot com",
            "@types/node",
            "git@github.com:acme/infra.git".replace("git@", "ssh://git@"),
        )
    )


def _placeholder_secret(rng: random.Random) -> str:
    return rng.choice(
        (
            "password: ********",
            "api_key=<YOUR_API_KEY>",
            "token: ${GITHUB_TOKEN}",
            "ghp_" + "x" * 36,
            "Authorization: Bearer <token>",
            "Authorization: Bearer $TOKEN",
            "AKIA" + "X" * 16,
            "password=null",
            "Password: incorrect",
            "the token expired",
            "secret: true",
            "password = get_password(user)",
            "token = request.headers.get('Authorization')",
            "if password == confirm:",
            "PWD=/home/alice/project",
            "uses Bearer authentication",
            'WWW-Authenticate: Bearer realm="api", error="invalid_token"',
            "password_policy=strong",
            "sk_live_" + "x" * 24,
            "pk_live_" + _chars(rng, 24, ALNUM),
            "pk_test_" + _chars(rng, 24, ALNUM),
            "glpat-" + "x" * 20,
        )
    )


def _other_block(rng: random.Random) -> str:
    kind = rng.choice(("PUBLIC KEY", "CERTIFICATE", "RSA PUBLIC KEY"))
    body = "\n".join(_chars(rng, 64, B64) for _ in range(rng.randint(2, 6)))
    if rng.random() < 0.3:
        return f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{_chars(rng, 43, B64)} deploy@ci"
    return f"-----BEGIN {kind}-----\n{body}\n-----END {kind}-----"


def _base64_blob(rng: random.Random) -> str:
    payload = json.dumps({"id": rng.randint(1, 9999), "kind": rng.choice(PRODUCTS)})
    return _b64url(payload.encode()) + rng.choice(("", ".sig"))


def _imei(rng: random.Random) -> str:
    """15 digits, Luhn-valid, but no card scheme issues 15-digit numbers with these prefixes."""
    return _luhn_complete(rng.choice(("35", "86", "99")), 15, rng)


def _misc_identifier(rng: random.Random) -> str:
    return rng.choice(
        (
            f"ISBN 978-{rng.randint(0, 9)}-{_d(rng, 2)}-{_d(rng, 6)}-{rng.randint(0, 9)}",
            f"ISBN {rng.randint(0, 9)}-{_d(rng, 3)}-{_d(rng, 5)}-{rng.randint(0, 9)}",
            f"IMEI {_imei(rng)}",
            f"routing {rng.choice(('0', '1', '2', '3'))}{_d(rng, 8)}",
            f"{rng.uniform(-90, 90):.4f}, {rng.uniform(-180, 180):.4f}",
            f"arn:aws:iam::{_d(rng, 12)}:role/deploy",
            f"#{_chars(rng, 6, HEX)}",
            f"sha256:{_chars(rng, 64, HEX)}",
            f"{rng.randint(0, 9)}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            f"{rng.randint(1, 9)} {_d(rng, 3)} {_d(rng, 3)} {_d(rng, 3)}",
            "aws s3 cp s3://data-lake/raw/2024/01/05/events.json .",
            "valueFrom: secretKeyRef: name=db-credentials",
            "SELECT id FROM users WHERE password = ? AND email = ?",
            f"data:image/png;base64,{_chars(rng, 60, B64)}",
            f"{rng.randint(1, 12)}/{rng.randint(1, 28)}/{rng.randint(2019, 2026)}",
            f"{_d(rng, 3)}.{_d(rng, 3)}.{_d(rng, 4)}.{rng.randint(1, 9)}",
        )
    )


_NEGATIVES: tuple[tuple[Callable[[random.Random], str], tuple[str, ...], tuple[str, ...]], ...] = (
    (_order, ("Order {} has shipped.", "Your reference is {}."), ("order_id", "reference")),
    (_timestamp, ("Last seen {}.", "Created at {}"), ("created_at", "timestamp", "ts")),
    (_version, ("Upgraded to {} yesterday.", "Running agent {}"), ("version", "agent_version")),
    (_uuid, ("Request {} failed.", "trace_id={}"), ("request_id", "id", "trace_id")),
    (_luhn_failing, ("Ticket number {}.", "Reference {} (not a card)."), ("tracking", "ref")),
    (_hex_id, ("commit {}", "object {} stored"), ("sha", "commit", "etag", "object_id")),
    (_date, ("Due on {}.", "Delivered {}"), ("due_date", "date")),
    (_price, ("Total: {}", "The plan costs {} per year."), ("amount", "price")),
    (_numbers, ("We served {} last week.", "Count: {}"), ("count", "zip", "value")),
    (_bad_iban, ("Old account {} (closed).", "IBAN {} failed validation."), ("old_iban",)),
    (_bad_ssn, ("Sample SSN {} is invalid.", "id {}"), ("sample_ssn", "emp_id")),
    (_not_an_ip, ("Listening on {}.", "Value {}"), ("bind", "netmask", "oid", "mac")),
    (_not_an_email, ("Ping {} in chat.", "Depends on {}"), ("handle", "package")),
    (_placeholder_secret, ("Example: {}", "Docs say: {}"), ("example", "note")),
    (_other_block, ("Public material:\n{}", "cert:\n{}"), ("public_key", "certificate")),
    (_base64_blob, ("Payload {}", "cursor={}"), ("next_page_token", "cursor", "state")),
    (_misc_identifier, ("Note: {}", "see {}"), ("identifier", "misc", "location")),
    (_imei, ("Device IMEI {} registered.", "imei={}"), ("imei",)),
)


def _negative_text(rng: random.Random) -> str:
    value_of, templates, _ = rng.choice(_NEGATIVES)
    return rng.choice(templates).replace("{}", value_of(rng))


def _json_negative(rng: random.Random) -> tuple[str, str]:
    value_of, _, keys = rng.choice(_NEGATIVES)
    return rng.choice(keys), value_of(rng)


def _pick_entities(rng: random.Random) -> list[str]:
    return [rng.choice(_ENTITY_ORDER) for _ in range(rng.randint(1, 5))]


# ---------------------------------------------------------------------------------------
# samples


def _filler(rng: random.Random) -> str:
    first, last = _name(rng)
    return rng.choice(
        (
            f"Hi {first.title()},",
            f"Thanks, {first.title()} {last.title()}.",
            f"The {rng.choice(PRODUCTS)} order for {rng.choice(COMPANIES)} in "
            f"{rng.choice(CITIES)} is ready.",
            f"{_words(rng, rng.randint(5, 14)).capitalize()}.",
            f"Meeting moved to {rng.randint(1, 12)} pm.",
            f"See ticket {rng.choice(COMPANIES).upper()}-{rng.randint(10, 9999)} for context.",
        )
    )


def _sentence_sample(rng: random.Random) -> Sample:
    pieces: list[list[Part]] = [[_filler(rng)] for _ in range(rng.randint(1, 3))]
    pieces += [_entity_parts(rng, e, "sentence") for e in _pick_entities(rng)]
    pieces += [[_negative_text(rng)] for _ in range(rng.randint(1, 4))]
    rng.shuffle(pieces)
    text = _Text()
    for i, parts in enumerate(pieces):
        if i:
            text.add(rng.choice((" ", " ", "\n", "\n\n")))
        text.add(*parts)
    return text.sample()


_LEVELS = ("INFO", "INFO", "INFO", "WARN", "ERROR", "DEBUG")
_COMPONENTS = ("api", "auth", "billing", "worker", "gateway", "db", "mailer", "scheduler")


def _log_sample(rng: random.Random) -> Sample:
    entities = _pick_entities(rng)
    lines = max(len(entities), rng.randint(2, 8))
    slots: list[list[list[Part]]] = [[] for _ in range(lines)]
    for entity in entities:
        slots[rng.randrange(lines)].append(_entity_parts(rng, entity, "log"))
    text = _Text()
    for slot in slots:
        y, mo, d = rng.randint(2023, 2026), rng.randint(1, 12), rng.randint(1, 28)
        stamp = (
            f"{y}-{mo:02d}-{d:02d}T{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
            f"{rng.randint(0, 59):02d}.{rng.randint(0, 999):03d}Z"
        )
        text.add(
            f"{stamp} {rng.choice(_LEVELS)} [{rng.choice(_COMPONENTS)}] "
            f"req={_uuid(rng)[:8]} pid={rng.randint(100, 65000)} "
        )
        items: list[list[Part]] = [*slot, [_words(rng, rng.randint(2, 6))]]
        if rng.random() < 0.6:
            items.append([_negative_text(rng)])
        if rng.random() < 0.5:
            items.append(
                [f"latency={rng.randint(1, 2000)}ms status={rng.choice((200, 201, 404, 500))}"]
            )
        rng.shuffle(items)
        for i, parts in enumerate(items):
            if i:
                text.add(" ")
            text.add(*parts)
        text.add("\n")
    return text.sample()


def _json_sample(rng: random.Random) -> Sample:
    fields: list[tuple[str, list[Part] | str | int]] = [("id", rng.randint(1, 10**9))]
    for entity in _pick_entities(rng):
        fields.append(_json_field(rng, entity))
    for _ in range(rng.randint(1, 4)):
        fields.append(_json_negative(rng))
    first, last = _name(rng)
    fields.append(("name", f"{first.title()} {last.title()}"))
    if rng.random() < 0.5:
        fields.append(("usage", rng.randint(1, 100000)))
    head, tail = fields[0], fields[1:]
    rng.shuffle(tail)
    fields = [head, *tail]
    text = _Text()
    indent = rng.random() < 0.5
    nested = rng.random() < 0.3
    if nested:
        text.add('{"content": [{"type": "text", "text": "ok"}], "structuredContent": ')
    text.add("{")
    for i, (key, value) in enumerate(fields):
        text.add("," if i else "", "\n  " if indent else (" " if i else ""))
        text.add(json.dumps(key), ": ")
        if isinstance(value, int):
            text.add(str(value))
        elif isinstance(value, str):
            text.add(json.dumps(value))
        else:
            text.add('"', *value, '"')
    text.add("\n}" if indent else "}")
    if nested:
        text.add(', "isError": false}')
    return text.sample()


_TABLE_COLUMNS: tuple[tuple[str, str | None, Callable[[random.Random], str]], ...] = (
    ("email", "EMAIL", email),
    ("phone", "PHONE", phone),
    ("ssn", "US_SSN", ssn),
    ("card", "CARD", card),
    ("iban", "IBAN", iban),
    ("last_ip", "IP_ADDRESS", ip),
    ("order_id", None, _order),
    ("created", None, _timestamp),
    ("amount", None, lambda r: f"{r.randint(1, 99999) / 100:.2f}"),
    ("zip", None, lambda r: r.choice((_d(r, 5), f"{_d(r, 5)}-{_d(r, 4)}"))),
    ("version", None, _version),
    ("device", None, _imei),
)


def _table_sample(rng: random.Random) -> Sample:
    """A query result as CSV, TSV or a markdown table."""
    columns = [("id", None, lambda r: str(r.randint(1, 99999)))]
    columns += [("name", None, lambda r: " ".join(_name(r)).title())]
    columns += rng.sample(_TABLE_COLUMNS, rng.randint(2, 5))
    style = rng.choice(("csv", "tsv", "markdown"))
    separator = {"csv": ",", "tsv": "\t", "markdown": " | "}[style]
    text = _Text()
    edge = "| " if style == "markdown" else ""
    end = " |" if style == "markdown" else ""
    text.add(edge + separator.join(name for name, _, _ in columns) + end + "\n")
    if style == "markdown":
        text.add("|" + "|".join("---" for _ in columns) + "|\n")
    for _ in range(rng.randint(1, 4)):
        text.add(edge)
        for i, (_, entity, value_of) in enumerate(columns):
            if i:
                text.add(separator)
            value = value_of(rng)
            if style == "csv" and ("," in value or " " in value) and rng.random() < 0.5:
                text.add('"', (entity, value) if entity else value, '"')
            elif style == "csv" and "," in value:
                text.add('"', (entity, value) if entity else value, '"')
            else:
                text.add((entity, value) if entity else value)
        text.add(end + "\n")
    return text.sample()


def realistic_text(size: int, seed: int = 1234, pii_share: float = 0.1) -> str:
    """A tool result of about `size` characters for benchmarks: ordinary log lines, JSON
    records, query results and prose full of hard negatives (timestamps, ids, versions,
    amounts), with labelled samples (one to five values each) as about `pii_share` of the
    pieces."""
    rng = random.Random(seed)
    builders = (_sentence_sample, _log_sample, _json_sample, _table_sample)
    pieces: list[str] = []
    length = 0
    while length < size:
        if rng.random() < pii_share:
            piece = rng.choice(builders)(rng).text
        else:
            piece = rng.choice((_benign_log, _benign_json, _benign_prose))(rng)
        pieces.append(piece)
        length += len(piece) + 1
    return "\n".join(pieces)[:size]


def _benign_log(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(2, 6)):
        lines.append(
            f"{_timestamp(rng)} {rng.choice(_LEVELS)} [{rng.choice(_COMPONENTS)}] "
            f"req={_uuid(rng)} {_words(rng, rng.randint(3, 8))} "
            f"latency={rng.randint(1, 2000)}ms status={rng.choice((200, 201, 304, 404, 500))} "
            f"{_negative_text(rng)}"
        )
    return "\n".join(lines)


def _benign_json(rng: random.Random) -> str:
    record = {
        "id": rng.randint(1, 10**9),
        "uuid": _uuid(rng),
        "created_at": _timestamp(rng),
        "status": rng.choice(("active", "pending", "closed")),
        "items": [
            {"sku": _order(rng), "qty": rng.randint(1, 9), "price": _price(rng)}
            for _ in range(rng.randint(1, 3))
        ],
        "version": _version(rng),
        "note": _words(rng, rng.randint(4, 12)),
    }
    return json.dumps(record)


def _benign_prose(rng: random.Random) -> str:
    return " ".join(
        rng.choice((_filler(rng), _negative_text(rng), f"{_words(rng, 10).capitalize()}."))
        for _ in range(rng.randint(2, 6))
    )
