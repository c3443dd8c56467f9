"""Built-in detectors for sensitive values in text, and `scan`, which runs a set of them.

This runs on every tool result on the data path, so each detector is built to be cheap on
text that holds nothing for it. `re` is fast at finding a literal and slow at stepping
through a character class, so detectors look for literals: `"@"`, `"-----BEGIN "`, token
prefixes, keywords, and, for the digit-based entities, multi-character literals such as
`0000` in a "shape" of the text (every digit mapped to 0 and every capital to A, one byte a
character). Full patterns run only where an anchor was found. Every pattern is linear:
quantifiers are bounded and repeated groups are separated by mandatory delimiters, so no
input makes them backtrack catastrophically.

Each search for a literal is a pass over the text, so the detectors share what they can
through `scan` (see `_Views`): the derived forms of the text (ASCII, shape, lower case) are
made once; the positions that several digit-based detectors start from (runs of nine or
more digits, pairs of digit groups) are searched for once; and one pass of a `re2.Set`
tells which keywords and prefixes occur at all (`_TRIGGERS`), so that the searches for
those that do not are skipped. In a typical 10 KB tool result most prefixes and several
keywords are absent.

What each detector counts (a finding's span is exactly the sensitive value):

- email: local@domain.tld with an alphabetic TLD; not `@handles`, `pkg@1.2.3`,
  `user@localhost`, `icon@2x.png` (TLDs that are file extensions), nor the userinfo of a URL
  (`ssh://git@host`, `postgres://user:pw@host`, where secret_assignment takes the password).
- phone: a candidate must be written as a phone number: `+` and a country code
  (`+44 20 7946 0958`, `+14155552671`, `+1 (415) 555-2671`, `+44 (0)20 ...`), or a national
  number with separators: NANP grouped 3-3-4 or 1-3-3-4 (`(415) 555-2671`, `415.555.2671`,
  `1-800-555-0199`), or with a trunk 0 (`020 7946 0958`, `06 12 34 56 78`), tried in
  `national_regions`. It must then be a valid number of its numbering plan, checked with the
  patterns of `phonenumbers`' metadata (what `phonenumbers.is_valid_number` checks, without
  its tens of microseconds of parsing). A bare digit run (`4155552671`) counts only after a
  word such as "phone", "tel" or "mobile"; elsewhere it is as likely an order number or an
  epoch time. Dates, times, IPs, versions, ZIP+4, SSN-shaped and card-shaped runs and the
  digits ending an IBAN never count. The span includes `+`, parentheses and an extension
  (`ext. 23`, `x23`).
- payment_card: 13-19 digits compact, or 12-19 in groups separated by one consistent space
  or dash (4-4-4[-4][-3], Amex/Diners 4-6-5/4-6-4), not part of a longer run of digits; the
  Luhn checksum must hold and the prefix and length must belong to a card scheme. A compact
  12-digit run counts only after a word such as "card" or "pan": elsewhere it is far more
  often an AWS account id or an order number (a tenth of which pass Luhn) than a 12-digit
  Maestro card. Digits that end a grouped account number (`IE29 AIBK 9311 5212 3456 78`)
  do not count.
- iban: country code, check digits and BBAN, compact or in groups of four separated by
  single spaces, upper case; the length must match the country and mod-97 must be 1.
- us_ssn: ddd-dd-dddd or ddd dd dddd with a valid area (not 000, 666, 900-999), group
  (not 00) and serial (not 0000), minus the well-known invalid numbers. A bare 9-digit run
  counts only after "SSN" or "social security"; elsewhere it is as likely a routing or
  order number.
- ip_address: IPv4 as four decimal octets (no leading zeros) that is not part of a longer
  dotted run (OIDs), not glued to a word (`v1.2.3.4`), not after "version"/"release"/"build"
  and not followed by a pre-release suffix (`1.2.3.4-beta`, `+build`); IPv6 as validated
  by `ipaddress` (full, compressed, embedded IPv4, zone id), containing at least one digit
  so that `Add::add` and `dead::beef` in code do not count. Ports and CIDR suffixes are not
  part of the span. Not sensitive and so not flagged: unspecified (0.0.0.0, ::), loopback
  (127.0.0.0/8, ::1) and netmasks/broadcast (255.x.x.x).
- aws_access_key: AKIA/ASIA/ABIA/ACCA + 16 upper-case letters or digits.
- aws_secret_key: 40 base64 characters with upper, lower and a digit/`+`/`/`, not hex,
  within 100 characters after "aws" or "secret access key"/"secret_key", or within 300
  characters of an access key id. Without such context a 40-character string is anything.
- github_token (ghp_/gho_/ghu_/ghs_/ghr_, github_pat_), gitlab_token (glpat- and the other
  gl*- prefixes, runner registration GR1348941), slack_token (xox?-, xapp-), stripe_key
  (sk_/rk_ live/test, whsec_; publishable pk_ keys are public by design): the prefix,
  a length range, and enough distinct characters to rule out `ghp_xxxxxxxx` placeholders.
  GitHub's token checksum is not publicly specified, so it is not checked.
- jwt: three base64url segments, header and payload starting with `eyJ`; the header must
  decode to a JSON object with "alg". JWE (five segments) does not count.
- private_key: the whole PEM block from `-----BEGIN ... PRIVATE KEY-----` to its END line
  (also with the `\\n` escapes of JSON text); without an END line, the header and the
  base64 that follows. Public keys and certificates do not count.
- bearer_token: the token after "Bearer " (12+ token68 characters with a digit), not
  `Bearer realm=...`, `Bearer <token>` or `Bearer $TOKEN`.
- secret_assignment: the value in `key=value`, `key: value`, `"key": "value"`,
  `key => value`, `<key>value</key>` where the key ends in password/passwd/pwd/secret/
  token/api key/access key/private key/credentials/auth/session id..., and the password in
  URL userinfo (`scheme://user:PASSWORD@host`). Unquoted values end at whitespace, a quote
  or one of `,;&<>()[]` (so `password=x&user=y` is `x`). Unquoted values after `:` must look
  like secrets (a digit, a symbol or an inner capital), so prose such as "Password:
  incorrect" does not count; placeholders (`***`, `<redacted>`, `${VAR}`, `null`, `true`) and code
  (`password = get_password()`) do not count; keys such as token_type, max_tokens,
  next_page_token, secret_name do not count. Prose ("the password is x") does not count.
"""

import base64
import binascii
import ipaddress
import json
import logging
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from functools import cache, lru_cache
from operator import itemgetter
from typing import NamedTuple, Protocol

import phonenumbers
import re2

try:  # the e-mail and card detectors, shared searches and merging in C (native/masking_native.c)
    import masking_native as _native
except ImportError:  # not built: their Python implementations below run instead
    _native = None
    logging.getLogger(__name__).warning(
        "masking_native is not installed (it is built from native/ by `uv sync`, which needs "
        "a C compiler): the e-mail and card detectors run in Python, several times slower"
    )


class Finding(NamedTuple):
    # A tuple: made for every value found, and a frozen dataclass's __init__ costs several
    # times as much.
    start: int
    end: int
    entity: str
    detector: str


# Finding(start, end, entity, detector) is a call of a Python function; where values come by
# the hundred (e-mail addresses, card numbers) they are made with tuple.__new__ directly:
# _new_finding(Finding, (start, end, entity, detector)), half the cost.
_new_finding = tuple.__new__


class Detector(Protocol):
    name: str
    entity: str

    def find(self, text: str) -> Iterator[Finding]: ...


_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_WORD = _ALNUM | {"_"}
_ALNUM_BYTES = frozenset(map(ord, _ALNUM))  # the same characters as items of a bytes object
_NON_DIGITS = re.compile(r"[^0-9]")


def _after_grouped_account(text: str, start: int) -> bool:
    # Its country code and check digits are AA00 on the shape: most texts have none.
    views = _views(text)
    if not views.accounts:
        return False
    low = max(0, start - 48)
    return views.shape.find(b"AA00", low, start) != -1 and bool(
        _GROUPED_ACCOUNT_BEFORE.search(text, low, start)
    )


_SHAPE_TABLE = bytes.maketrans(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 10 + b"A" * 26)
# The shape with every number separator (space, dot, dash) written as a dash, so that
# "415 555", "415.555" and "415-555" are all found with one literal search for b"000-000".
_JOINED_TABLE = bytes.maketrans(b" .", b"--")
# Letters, digits and ._%+- (what an e-mail address's local part holds) as L, all else a space.
_EMAIL_LOCAL_BYTES = _ALNUM_BYTES | frozenset(b"._%+-")
_LOCAL_TABLE = bytes(ord("L") if byte in _EMAIL_LOCAL_BYTES else ord(" ") for byte in range(256))
_LONG_RUN = re.compile(rb"000000000+")


# What the searches of the detectors start from, by name: patterns in RE2 syntax on the
# ASCII view (`(?i)` for the keywords, which the detectors look for in lower case), each
# matching wherever the search it stands for could find something. One pass of a
# `re2.Set` over the text tells which of them occur, so that detectors skip the searches
# for those that do not. `scan` runs it when its detectors use enough of these (each search
# is a pass over the text; the set costs about as much as `_SET_WORTH_IT` of them). A set
# matches with a DFA that, unlike single patterns, never gives up on a long text: when its
# cache fills, it resets it and goes on.
_TRIGGERS: dict[str, bytes] = {
    "jwt": rb"eyJ",
    "pem": rb"-----BEGIN ",
    "aws_key_id": rb"A(?:KIA|SIA|BIA|CCA)",
    "github": rb"gh[pousr]_|github_pat_",
    "gitlab": rb"gl(?:pat|dt|rt|ptt|ft|imt|cbt|soat|oas|agent|wt|ffct)-|GR1348941",
    "slack": rb"x(?:ox[abposre]|app)-",
    "stripe": rb"[sr]k_(?:live|test)_|whsec_",
    # a password in URL userinfo (`_URL_USERINFO`)
    "url": rb"""://[^\s:/@?#"'<>]*:[^\s/@?#"'<>]+@""",
    "ipv4": rb"\.[0-9]{1,3}\.[0-9]",
    "ipv6": rb":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)",
    "aws": rb"(?i)aws",
    "aws_secret_words": rb"(?i)secret[ _\-]?(?:access[ _\-]?)?key",  # `_AWS_SECRET_CONTEXT`
    "bearer": rb"(?i)bearer[ \t]{1,4}[A-Za-z0-9\-._~+/]{12}",  # and a value (`_BEARER_VALUE`)
    "ssn": rb"(?i)ss[n#]|social",
    "phone_word": rb"(?i)phone|tel|mobile|cell|fax|sms|whatsapp|contact",
    "paren": rb"\([0-9]{2}",
    # what `_FRENCH_ANCHOR` needs: four groups of two digits after a non-word character
    "french": rb"(?:^|[^A-Za-z0-9_\-.+/])[0-9]{2}"
    rb"(?:(?: [0-9]{2}){3}|(?:\.[0-9]{2}){3}|(?:-[0-9]{2}){3})",
} | {
    # a key with a secret_assignment keyword, then an operator (`_OPERATOR_AFTER_KEY`)
    word: rb"""(?i)%s[a-z0-9_.\-]{0,60}(?:(?:\\?["'])?[ \t]{0,3}[=:]|>[^<>\n]*</)""" % word.encode()
    for word in ("pass", "pwd", "secret", "token", "key", "auth", "credential", "session")
}
_SET_WORTH_IT = 6


def _trigger_set() -> re2.Set | None:
    options = re2.Options()
    options.log_errors = False
    trigger_set = re2.Set.SearchSet(options)
    for pattern in _TRIGGERS.values():
        trigger_set.Add(pattern)
    trigger_set.Compile()
    # A set whose DFA cannot start (too large for its memory) matches nothing at all.
    if trigger_set.Match(b"x eyJ x") is None:
        return None
    return trigger_set


_TRIGGER_SET = _trigger_set()
_TRIGGER_NAMES = tuple(_TRIGGERS)


class _Views:
    """Derived forms of one text, shared by the detectors that scan it.

    Each view has one byte per character of the text (anything outside ASCII is `?`), so a
    position in a view is a position in the text. The shape maps every ASCII digit to 0 and
    every capital to A, so detectors can look for multi-character literals such as b"0000"
    or b"AA00" (which `bytes.find` and `re` find fast) instead of stepping through every
    digit with a character class; `joined` is the shape with number separators unified.
    `lower` is the text with ASCII letters in lower case, for keyword searches.
    """

    __slots__ = (
        "_accounts", "_ascii", "_group_pairs", "_joined", "_local", "_long_runs", "_lower",
        "_shape", "present", "text",
    )  # fmt: skip

    def __init__(self, text: str) -> None:
        self.text = text
        self._ascii: bytes | None = None
        self._shape: bytes | None = None
        self._joined: bytes | None = None
        self._lower: bytes | None = None
        self._local: bytes | None = None
        self._accounts: bool | None = None
        self._long_runs: list[tuple[int, int]] | None = None
        self._group_pairs: list[int] | None = None
        # The names of the `_TRIGGERS` in the text, once `find_triggers` has run.
        self.present: frozenset[str] | None = None

    def find_triggers(self) -> None:
        if self.present is None and _TRIGGER_SET is not None:
            found = _TRIGGER_SET.Match(self.ascii) or ()  # None when nothing matches
            self.present = frozenset(_TRIGGER_NAMES[i] for i in found)

    def may_contain(self, trigger: str) -> bool:
        """False only if the text is known not to contain the trigger."""
        return self.present is None or trigger in self.present

    @property
    def ascii(self) -> bytes:
        if self._ascii is None:
            self._ascii = self.text.encode("ascii", "replace")
        return self._ascii

    def _derive(self) -> None:
        """shape, joined, lower and local in one pass over the ASCII view
        (`masking_native.views`, which gives what the properties below give without it)."""
        self._shape, self._joined, self._lower, self._local = _native.views(self.ascii)

    @property
    def shape(self) -> bytes:
        if self._shape is None:
            if _native is not None:
                self._derive()
            else:
                self._shape = self.ascii.translate(_SHAPE_TABLE)
        return self._shape  # type: ignore[return-value]

    @property
    def joined(self) -> bytes:
        if self._joined is None:
            if _native is not None:
                self._derive()
            else:
                self._joined = self.shape.translate(_JOINED_TABLE)
        return self._joined  # type: ignore[return-value]

    @property
    def lower(self) -> bytes:
        if self._lower is None:
            if _native is not None:
                self._derive()
            else:
                self._lower = self.ascii.lower()
        return self._lower  # type: ignore[return-value]

    @property
    def local(self) -> bytes:
        """The text with every character that may be in an e-mail address's local part as
        L and every other as a space."""
        if self._local is None:
            if _native is not None:
                self._derive()
            else:
                self._local = self.ascii.translate(_LOCAL_TABLE)
        return self._local  # type: ignore[return-value]

    @property
    def accounts(self) -> bool:
        """Whether the shape holds AA00 anywhere, as every grouped account number does."""
        if self._accounts is None:
            self._accounts = b"AA00" in self.shape
        return self._accounts

    # Positions shared by the digit-based detectors: each list costs one search of the text.

    @property
    def long_runs(self) -> list[tuple[int, int]]:
        """(start, end) of every run of nine or more digits, in order: bare phone numbers,
        compact card numbers and bare SSNs are among them."""
        if self._long_runs is None:
            self._long_runs = (_native or _Searches).runs(self.shape, 48, 9)  # 48: b"0"
        return self._long_runs

    @property
    def group_pairs(self) -> list[int]:
        """Every position, overlaps included, of b"000-000" on the joined shape: a group of
        three digits and a group of at least three, as in NANP phone numbers and grouped
        card numbers."""
        if self._group_pairs is None:
            self._group_pairs = (_native or _Searches).positions(self.joined, b"000-000")
        return self._group_pairs


class _Searches:
    """The specification of the shared searches of `masking_native`, which find the same."""

    @staticmethod
    def runs(data: bytes, byte: int, minimum: int) -> list[tuple[int, int]]:
        """(start, end) of every maximal run of `byte` at least `minimum` long."""
        pattern = _LONG_RUN if (byte, minimum) == (48, 9) else _run_pattern(byte, minimum)
        return [m.span() for m in pattern.finditer(data)]

    @staticmethod
    def positions(data: bytes, literal: bytes) -> list[int]:
        """Every start of `literal` in `data`, overlaps included."""
        hits = []
        position = data.find(literal)
        while position != -1:
            hits.append(position)
            position = data.find(literal, position + 1)
        return hits


@cache
def _run_pattern(byte: int, minimum: int) -> re.Pattern[bytes]:
    return re.compile(re.escape(bytes([byte])) + b"{%d,}" % minimum)


_last_views: _Views | None = None


def _views(text: str) -> _Views:
    # One entry: `scan` runs every detector over the same text object in turn.
    global _last_views
    views = _last_views
    if views is None or views.text is not text:
        views = _last_views = _Views(text)
    return views


def _literal_hits(
    shape: bytes, literals: tuple[bytes, ...], *, overlapping: bool = False
) -> list[int]:
    """Start positions of the literals in the shape, in order (hits are few)."""
    hits = []
    for literal in literals:
        step = 1 if overlapping else len(literal)
        position = shape.find(literal)
        while position != -1:
            hits.append(position)
            position = shape.find(literal, position + step)
    if len(literals) > 1:
        hits.sort()
    return hits


def _distinct_enough(value: str, minimum: int = 6) -> bool:
    """Rule out placeholders such as xxxxxxxx or 00000000."""
    return len(set(value)) >= min(minimum, len(value))


# ---------------------------------------------------------------------------------------
# email

_EMAIL_DOMAIN = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.){1,8}([A-Za-z]{2,24})(?![A-Za-z0-9\-])"
)
_URL_USERINFO_BEFORE = re.compile(r"://[^\s/@]{0,256}\Z")
# TLD-shaped file extensions: `icon@2x.png`, `bundle@1.0.js` are file names, not addresses.
_FILE_EXTENSIONS = frozenset(
    "png jpg jpeg gif svg webp ico bmp tif tiff css scss js mjs cjs jsx ts tsx json html htm "
    "xml yaml yml txt csv pdf zip gz tgz tar lock map woff woff2 ttf otf eot wasm".split()
)


class EmailDetector:
    name = "email"
    entity = "EMAIL"

    def find(self, text: str) -> Iterator[Finding]:
        if _native is None:
            return self.find_python(text)
        return iter(_native.email_findings(text, Finding, self.entity, self.name))

    def find_python(self, text: str) -> Iterator[Finding]:
        """The specification of `masking_native.email_findings`, which finds the same."""
        at = text.find("@")
        if at == -1:
            return
        local = _views(text).local
        urls = "://" in text
        entity, name = self.entity, self.name
        # One pass of the loop per @ (a result may hold hundreds of addresses): the checks
        # are inline, and findings are made as plain tuples of the Finding class.
        while at != -1:
            # The local part: the run of local-part characters before the @, at most 64 (a
            # run of 65 is longer: not an address).
            low = at - 65 if at >= 65 else 0
            start = local.rfind(b" ", low, at) + 1
            if start == 0 and at - low == 65:
                at = text.find("@", at + 1)
                continue
            while start < at and text[start] == ".":
                start += 1
            if (
                start == at
                or text[at - 1] == "."
                or text.find("..", start, at) != -1
                or (urls and _in_url_userinfo(text, start))
                or (domain := _EMAIL_DOMAIN.match(text, at + 1)) is None
                or domain.group(1).lower() in _FILE_EXTENSIONS
            ):
                at = text.find("@", at + 1)
                continue
            end = domain.end()
            yield _new_finding(Finding, (start, end, entity, name))
            at = text.find("@", end)


def _in_url_userinfo(text: str, start: int) -> bool:
    """ssh://git@host, scheme://user:password@host: the part before the @ is a URL's
    userinfo, not an address's local part."""
    low = max(0, start - 260)
    return text.rfind("://", low, start) != -1 and bool(
        _URL_USERINFO_BEFORE.search(text, low, start)
    )


# ---------------------------------------------------------------------------------------
# phone

_PHONE = re.compile(
    r"""
    [+(0-9]
    (?<![\w+\-./#$@%&\\*)][+(0-9])      # starts a token: not inside a word, number or path
    (?<![0-9][ .\-][+(0-9])              # nor continues a run of digit groups
    (?<![0-9]:[+(0-9])                   # nor follows a time or a port
    (?:
        (?<=\+) [0-9]{1,3}
            (?:[ .\-]?\(0?[0-9]{0,4}\))?
            [ .\-]?[0-9]{1,12}
            (?:[ .\-][0-9]{1,8}){0,6}
      | (?<=\() [0-9]{2,5}\)[ .\-]?[0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,3}
      | (?<=[0-9]) [0-9]{0,4}[ .\-][0-9]{2,8}(?:[ .\-][0-9]{2,8}){0,4}
      | (?<=[0-9]) (?P<bare>[0-9]{8,14})
    )
    (?P<ext>[ ]?(?:ext\.?|x|extension|ext:)[ ]?[0-9]{1,6})?
    (?![\w\-+]|[.:/][0-9]|[ ][0-9])
    """,
    re.VERBOSE,
)
_DATE_SHAPE = re.compile(
    r"(?:[0-9]{4}[./\- ][0-9]{1,2}[./\- ][0-9]{1,2}|[0-9]{1,2}[./\- ][0-9]{1,2}[./\- ][0-9]{2,4})\Z"
)
_DOTTED_QUAD = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}\Z")
_SSN_SHAPE = re.compile(r"[0-9]{3}([\- ])[0-9]{2}\1[0-9]{4}\Z")
_ZIP_PLUS_4 = re.compile(r"[0-9]{5}-[0-9]{4}\Z")
# Every phone candidate contains one of these on the shape (digits are 0): a + and a digit;
# a ( and two; two groups of at least three digits at the start of a number (NANP and most
# national formats); four groups of two (French style); ten or eleven digits in a row (bare
# numbers, which count only after a phone word). Each anchor is a pattern on the shape that
# rejects in place what is glued to a word or inside a longer number (UUIDs, timestamps,
# ids). The patterns for + and ( run over the shape; the others run only where a shared
# search found their start (`_Views.group_pairs`, `_Views.long_runs`) or where a literal on
# the joined shape is. Few anchors open a window around them where the full pattern runs.
_PHONE_SEPARATOR = rb"[ .\-]"
_NUMBER_STARTS = (
    b"000" + _PHONE_SEPARATOR + b"000",
    b"0000" + _PHONE_SEPARATOR + b"000",
    b"00000" + _PHONE_SEPARATOR + b"000",
)
_NUMBER_STARTS += (b"0" + _PHONE_SEPARATOR + _NUMBER_STARTS[0],)


_PLUS_ANCHOR = re.compile(rb"\+0(?<![\w+\-./]\+0)(?!0?:)")
_PAREN_ANCHOR = re.compile(rb"\(00")
_NANP_ANCHOR = re.compile(  # found among `_Views.group_pairs`
    rb"000"
    + _PHONE_SEPARATOR
    + rb"000(?:"
    + rb"|".join(rb"(?<=[^\w\-.+/]%s)|(?<=^%s)" % (g, g) for g in _NUMBER_STARTS)
    + rb")"
)
_FRENCH_ANCHOR = re.compile(  # found where b"00-00-00-00" is on the joined shape
    rb"00(?P<s>[ .\-])00(?P=s)00(?P=s)00"
    rb"(?:(?<=[^\w\-.+/]00[ .\-]00[ .\-]00[ .\-]00)|(?<=^00[ .\-]00[ .\-]00[ .\-]00))"
)
# An anchor inside a run of thirteen or more digits in groups (4111 1111 1111 1111 on the
# joined shape): longer than any national number. A match takes in the whole run (it can
# neither start after a digit and a separator nor end before one), so no phone is found
# there; one written with + is found from the window of its + anchor.
_RUN_AFTER = re.compile(rb"(?:-?0)+")
_RUN_BEFORE = re.compile(rb"(?:0-?)+\Z")


def _outside_long_runs(joined: bytes, positions: list[int]) -> list[int]:
    """The positions (ascending, each on a digit of the joined shape) that are not in a run
    of thirteen or more digits."""
    if _native is not None:
        return _native.outside_long_runs(joined, positions)
    return _outside_long_runs_python(joined, positions)


def _outside_long_runs_python(joined: bytes, positions: list[int]) -> list[int]:
    """The specification of `masking_native.outside_long_runs`, which finds the same. A run
    is measured once for all the positions in it (a grouped card number holds three)."""
    kept = []
    run_end = -1
    for position in positions:
        if position < run_end:
            continue
        after = _RUN_AFTER.match(joined, position)
        digits = after.group().count(b"0") if after else 0
        if digits < 13:
            # A run that reaches past the 24 characters looked at holds 12 digits there.
            before = _RUN_BEFORE.search(joined, max(0, position - 24), position)
            digits += before.group().count(b"0") if before else 0
        if digits >= 13:
            run_end = after.end() if after else position
        else:
            kept.append(position)
    return kept


# A bare number is a whole run of ten or eleven digits, not after a word character (on the
# shape: a lower-case letter, A, 0 or _), - or +.
_BARE_PHONE_REJECT_BEFORE = frozenset(b"abcdefghijklmnopqrstuvwxyzA0_-+")


def _matches_at(
    pattern: re.Pattern[bytes], shape: bytes, candidates: Iterable[int]
) -> Iterator[int]:
    """The starts of the matches of `pattern` on the shape, without overlaps, as `finditer`
    gives them, where `candidates` (ascending) holds every position a match can start at."""
    resume = 0
    for position in candidates:
        if position >= resume and (match := pattern.match(shape, position)) is not None:
            resume = match.end()
            yield position


_DIGIT_GROUPS = re.compile(r"[0-9]+")
_NANP_GROUPS = frozenset({(3, 3, 4), (1, 3, 3, 4), (3, 7), (1, 3, 7)})
_PHONE_CONTEXT = re.compile(  # on the lower-case view
    rb"(?<![a-z])(?:phone|tel|mobile|cell|fax|sms|whatsapp|contact)[a-z_\-]{0,12}[^a-z0-9]{1,6}\Z"
)


class _NumberingPlan:
    """The valid national significant numbers of one region, from `phonenumbers`' metadata,
    as compiled patterns: what `phonenumbers.is_valid_number` checks, in two regex matches
    instead of its parsing and per-type calls (tens of microseconds a number)."""

    def __init__(self, metadata: phonenumbers.PhoneMetadata) -> None:
        general = metadata.general_desc
        self.lengths = frozenset(general.possible_length or ())
        self.general = re.compile(general.national_number_pattern or "(?!)")
        types = (
            metadata.fixed_line, metadata.mobile, metadata.toll_free, metadata.premium_rate,
            metadata.shared_cost, metadata.personal_number, metadata.voip, metadata.pager,
            metadata.uan, metadata.voicemail,
        )  # fmt: skip
        patterns = [
            f"(?:{desc.national_number_pattern})"
            for desc in types
            if desc is not None and desc.national_number_pattern
        ]
        self.any_type = re.compile("|".join(patterns) or "(?!)")
        self.national_prefix = metadata.national_prefix

    def is_valid(self, significant: str) -> bool:
        return (
            (not self.lengths or len(significant) in self.lengths)
            and self.general.fullmatch(significant) is not None
            and self.any_type.fullmatch(significant) is not None
        )


@cache
def _region_plan(region: str) -> _NumberingPlan | None:
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return _NumberingPlan(metadata) if metadata is not None else None


@cache
def _country_plans(country_code: int) -> tuple[_NumberingPlan, ...]:
    plans = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        if region == "001":
            metadata = phonenumbers.PhoneMetadata.metadata_for_nongeo_region(country_code)
            if metadata is not None:
                plans.append(_NumberingPlan(metadata))
        elif (plan := _region_plan(region)) is not None:
            plans.append(plan)
    return tuple(plans)


def _valid_international(digits: str) -> bool:
    """digits: everything after the +, the country code first (codes are prefix-free)."""
    for length in (1, 2, 3):
        plans = _country_plans(int(digits[:length]))
        if plans:
            significant = digits[length:]
            return any(
                plan.is_valid(significant)
                or (  # "+44 020 ...": a trunk prefix written after the country code
                    bool(plan.national_prefix)
                    and significant.startswith(plan.national_prefix)  # type: ignore[arg-type]
                    and plan.is_valid(significant[len(plan.national_prefix) :])  # type: ignore[arg-type]
                )
                for plan in plans
            )
    return False


def _valid_national(digits: str, region: str) -> bool:
    plan = _region_plan(region)
    if plan is None:
        return False
    prefix = plan.national_prefix
    if prefix and digits.startswith(prefix):
        digits = digits[len(prefix) :]
    return plan.is_valid(digits)


class PhoneDetector:
    name = "phone"
    entity = "PHONE"
    triggers = ("french", "phone_word", "paren")

    def __init__(
        self,
        default_region: str = "US",
        national_regions: tuple[str, ...] = ("GB", "DE", "FR", "IT", "ES", "NL", "AU", "IN"),
    ) -> None:
        # Numbers without a trunk 0 are read in default_region (NANP numbers have none);
        # numbers with one are tried in national_regions.
        self.default_region = default_region
        self.national_regions = national_regions

    def find(self, text: str) -> Iterator[Finding]:
        # Every candidate contains one of the shape anchors (or follows a phone word); the
        # full pattern runs only in windows around them.
        views = _views(text)
        shape, joined = views.shape, views.joined
        windows = [(m.start(), m.start() + 40) for m in _PLUS_ANCHOR.finditer(shape)]
        if views.may_contain("paren"):
            windows += [(m.start(), m.start() + 40) for m in _PAREN_ANCHOR.finditer(shape)]
        windows += [
            (position - 8, position + 36)
            for position in _matches_at(
                _NANP_ANCHOR, shape, _outside_long_runs(joined, views.group_pairs)
            )
        ]
        if views.may_contain("french"):
            french = _literal_hits(joined, (b"00-00-00-00",), overlapping=True)
            windows += [
                (position, position + 24) for position in _matches_at(_FRENCH_ANCHOR, shape, french)
            ]
        windows += [
            (start, start + 16)
            for start, end in (views.long_runs if views.may_contain("phone_word") else ())
            if 10 <= end - start <= 11
            and (start == 0 or shape[start - 1] not in _BARE_PHONE_REJECT_BEFORE)
            and _PHONE_CONTEXT.search(views.lower[max(0, start - 32) : start])
        ]
        if not windows:
            return
        size = len(text)
        resume = 0
        for low, high in _merged(windows, size):
            for match in _PHONE.finditer(text, max(low, resume), high):
                if match.end() == high and high < size:  # cut by the window: match again
                    match = _PHONE.match(text, match.start())
                    if match is None:
                        continue
                start = match.start()
                resume = match.end()
                core_end = match.start("ext") if match.group("ext") else match.end()
                core = text[start:core_end]
                if self._is_phone(text, start, core, match.group("bare") is not None):
                    yield Finding(start, match.end(), self.entity, self.name)

    def _is_phone(self, text: str, start: int, core: str, bare: bool) -> bool:
        digits = _NON_DIGITS.sub("", core.replace("(0)", ""))
        count = len(digits)
        if core[0] == "+":
            return 8 <= count <= 15 and _valid_international(digits)
        # A national number has a trunk 0 and 9-12 digits, or is a NANP number.
        trunk = digits[0] == "0"
        if not (9 <= count <= 12 if trunk else count == 10 or (count == 11 and digits[0] == "1")):
            return False
        if bare and not _PHONE_CONTEXT.search(_views(text).lower[max(0, start - 32) : start]):
            return False
        if not bare and (
            _DATE_SHAPE.match(core)
            or _DOTTED_QUAD.match(core)
            or _SSN_SHAPE.match(core)
            or _ZIP_PLUS_4.match(core)
            or _after_grouped_account(text, start)
        ):
            return False
        if trunk:
            return any(_valid_national(digits, r) for r in self.national_regions)
        if not bare and tuple(map(len, _DIGIT_GROUPS.findall(core))) not in _NANP_GROUPS:
            return False  # 5348 5938 39 is not how anyone writes a NANP number
        return _valid_national(digits[-10:], self.default_region)


# ---------------------------------------------------------------------------------------
# payment card

# A card stands on its own: not joined to a word, a number or a dash before it ("12-4111
# 1111 1111 1111" is one identifier). A short number may come before it after a space ("qty
# 3 4111 1111 1111 1111"); four digits or more, only where they end a card found before it
# (`PaymentCardDetector.find_python`): otherwise they are a longer grouped number.
_CARD = re.compile(  # on the shape (digits are 0)
    rb"""
    0000(?<![\w.\-+/$]0000)
    (?:
        0{8,15}
      | (?P<s>[ \-])0000(?P=s)0000(?:(?P=s)0{1,4}(?:(?P=s)000)?)?
      | (?P<t>[ \-])000000(?P=t)0{4,5}
    )
    (?![\w\-+]|\.0)
    """,
    re.VERBOSE,
)
# Every card starts a run of twelve or more digits or starts one of these on the joined
# shape (which all hold a `_Views.group_pairs` position one character in); the full pattern
# runs only there.
_GROUPED_CARD_STARTS = (b"0000-0000-0000", b"0000-000000-0000")
_CARD_CONTEXT = re.compile(  # on the lower-case view
    rb"(?<![a-z])(?:card|pan|visa|maestro|mastercard|cc)[a-z_\- ]{0,12}[^a-z0-9]{1,6}\Z"
)


# Each digit doubled, its two digits added: 5 -> 10 -> 1.
_LUHN_DOUBLED = bytes.maketrans(b"0123456789", b"0246813579")


def luhn_valid(digits: str) -> bool:
    """digits: ASCII digits only. Summed as bytes (ASCII codes, 48 over each digit)."""
    b = digits.encode()
    total = sum(b[-1::-2]) + sum(b[-2::-2].translate(_LUHN_DOUBLED)) - 48 * len(b)
    return total % 10 == 0


# The lengths any scheme below issues, by first digit: most candidates fail this already.
_CARD_LENGTHS = {
    "1": {15}, "2": {16, 17, 18, 19}, "3": {14, 15, 16, 17, 18, 19}, "4": {13, 16, 19},
    "5": {12, 13, 14, 15, 16, 17, 18, 19}, "6": {12, 13, 14, 15, 16, 17, 18, 19},
    "8": {16, 17, 18, 19}, "9": {16},
}  # fmt: skip


@lru_cache(maxsize=4096)
def _scheme_issues(d: str, n: int) -> bool:
    """Does a card number of length n that starts with d (its first four digits) belong to
    a card scheme that issues this length?"""
    if n not in _CARD_LENGTHS.get(d[0], ()):
        return False
    if d[0] == "1":  # UATP (no other scheme starts with 1)
        return n == 15
    p2, p3, p4 = int(d[:2]), int(d[:3]), int(d[:4])
    if d[0] == "4":  # Visa, Visa Electron
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 2200 <= p4 <= 2204:  # Mir
        return 16 <= n <= 19
    if p2 in (36, 38, 39) or 300 <= p3 <= 305 or p4 == 3095:  # Diners Club
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p2 in (62, 65, 81, 82) or p4 == 6011 or 644 <= p3 <= 649:  # UnionPay, Discover, RuPay
        return 16 <= n <= 19
    if p2 == 50 or 56 <= p2 <= 69:  # Maestro
        return 12 <= n <= 19
    if p4 == 9792:  # Troy
        return n == 16
    return False


def _card_context(text: str, start: int) -> bool:
    """A card word ("card", "pan", "visa"...) just before a candidate: a compact 12-digit
    one, or a grouped one read without the number after it."""
    return bool(_CARD_CONTEXT.search(_views(text).lower[max(0, start - 32) : start]))


def _card_digits_ok(digits: str) -> bool:
    """Not one digit repeated, a scheme's prefix and length, and the Luhn check
    (`luhn_valid`, inline: this runs for every candidate)."""
    b = digits.encode()
    n = len(b)
    return (
        b.count(b[0]) != n
        and _scheme_issues(digits[:4], n)
        and (sum(b[-1::-2]) + sum(b[-2::-2].translate(_LUHN_DOUBLED)) - 48 * n) % 10 == 0
    )


class PaymentCardDetector:
    name = "payment_card"
    entity = "CARD"

    def find(self, text: str) -> Iterator[Finding]:
        if _native is None:
            return self.find_python(text)
        return iter(
            _native.card_findings(
                text,
                Finding,
                self.entity,
                self.name,
                _card_context,
                _after_grouped_account,
                _views(text).shape,
            )
        )

    def find_python(self, text: str) -> Iterator[Finding]:
        """The specification of `masking_native.card_findings`, which finds the same."""
        views = _views(text)
        shape = views.shape
        resume = 0
        joined = views.joined
        # (start, end of the run) for compact candidates, whose match, if any, is the whole
        # run; (start, 0) for grouped ones.
        candidates = [
            (start, end)
            for start, end in views.long_runs
            if end - start in _CARD_LENGTHS.get(text[start], ())
        ]
        candidates += [
            (hit - 1, 0)
            for hit in views.group_pairs
            if hit and joined.startswith(_GROUPED_CARD_STARTS, hit - 1)
        ]
        candidates.sort()
        accounts = views.accounts
        for position, run_end in candidates:
            if position < resume or (run_end and not _card_digits_ok(text[position:run_end])):
                continue  # the checks on the digits alone first: they reject most candidates
            match = _CARD.match(shape, position)
            if match is None:
                continue
            start, end = match.span()
            if shape.endswith(b"0000 ", 0, start) and start - 1 != resume:
                continue  # inside a longer grouped number
            if run_end:
                digits = text[start:end]
            else:  # digits and the separators space or -, as the match on the shape tells
                digits = text[start:end].replace(" ", "").replace("-", "")
                if not _card_digits_ok(digits):
                    # After a card word, a card and a number after it: "card 4111 1111 1111
                    # 1111 123", "Visa 6759 3658 6923 12/27" (the groups before the match's
                    # last space, at least three). Without one, such digits are one number.
                    end = text.rfind(" ", start + 14, end)
                    if end == -1 or not _card_context(text, start):
                        continue
                    digits = text[start:end].replace(" ", "")
                    if not _card_digits_ok(digits):
                        continue
            if len(digits) == 12 and end - start == 12 and not _card_context(text, start):
                continue
            if accounts and _after_grouped_account(text, start):
                continue
            resume = end
            yield _new_finding(Finding, (start, end, self.entity, self.name))


# ---------------------------------------------------------------------------------------
# IBAN

IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN_START = re.compile(rb"AA00")  # on the shape: two capitals and two digits
# "NL91 ABNA 0417 1643 00", "PL11 4005 6941 ...": digits that continue a grouped account
# number (a country's code standing alone, its check digits, groups of four) are not a phone
# or card number. "FY24 4111 1111 1111 1111" or "COVID19 4111 ..." start no account.
_GROUPED_ACCOUNT_BEFORE = re.compile(
    rf"(?<![A-Za-z0-9])(?:{'|'.join(IBAN_LENGTHS)})[0-9]{{2}}(?: [A-Z0-9]{{4}})* \Z"
)


# Each letter as its number in base 36 (A and a are 10, Z and z 35).
_IBAN_LETTER_VALUES = str.maketrans(
    {c: str(int(c, 36)) for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"}
)


def iban_checksum_valid(compact: str) -> bool:
    rearranged = compact[4:] + compact[:4]
    if not rearranged.isascii() or not rearranged.isalnum():
        raise ValueError(f"not an IBAN: {compact!r}")
    return int(rearranged.translate(_IBAN_LETTER_VALUES)) % 97 == 1


@cache
def _iban_rest(length: int) -> re.Pattern[str]:
    """The BBAN of an IBAN of this length, compact or in groups of four after single spaces."""
    groups, remainder = divmod(length - 4, 4)
    grouped = f"(?: [A-Z0-9]{{4}}){{{groups}}}" + (f" [A-Z0-9]{{{remainder}}}" if remainder else "")
    return re.compile(f"(?:[A-Z0-9]{{{length - 4}}}|{grouped})(?![A-Za-z0-9])")


class IbanDetector:
    name = "iban"
    entity = "IBAN"

    def find(self, text: str) -> Iterator[Finding]:
        resume = 0
        for match in _IBAN_START.finditer(_views(text).shape):
            start = match.start()
            if start < resume or (start > 0 and text[start - 1] in _ALNUM):
                continue
            length = IBAN_LENGTHS.get(text[start : start + 2])
            if length is None:
                continue
            rest = _iban_rest(length).match(text, start + 4)
            if rest is None:
                continue
            if iban_checksum_valid(text[start : start + 4] + rest.group().replace(" ", "")):
                resume = rest.end()
                yield Finding(start, rest.end(), self.entity, self.name)


# ---------------------------------------------------------------------------------------
# US social security number

_SSN = re.compile(  # on the shape
    rb"""
    000(?<![\w.\-+/\#$]000)(?<!0[ \-]000)(?<!0:000)
    (?:
        (?P<sep>[\- ])00(?P=sep)0000
      | (?P<bare>000000)
    )
    (?![\w\-+]|[./:]0|[ \-]0)
    """,
    re.VERBOSE,
)
_SSN_ANCHOR = b"000-00-0000"  # on the joined shape
_SSN_WORD = re.compile(rb"ss[n#]|social")
_SSN_CONTEXT = re.compile(  # on the lower-case view
    rb"(?<![a-z])(?:ssn|ss#|social[ _\-]?security)[a-z_\-. #]{0,12}[^a-z0-9]{1,6}\Z"
)
_INVALID_SSNS = frozenset({"078051120", "219099999", "123456789"})


class UsSsnDetector:
    name = "us_ssn"
    entity = "US_SSN"
    triggers = ("ssn",)

    def find(self, text: str) -> Iterator[Finding]:
        views = _views(text)
        shape = views.shape
        anchors = _literal_hits(views.joined, (_SSN_ANCHOR,))
        # A bare number is looked at only if "ssn", "ss#" or "social" starts at most 31
        # characters before it (so that nine of its digits lie within 40 characters of the
        # word), and after the last nine digits of the run before it.
        lowered = views.lower
        previous_end = 0
        for start, end in views.long_runs if views.may_contain("ssn") else ():
            # Only a run of exactly nine digits can be a bare SSN.
            if end - start == 9 and _SSN_WORD.search(
                lowered, max(start - 31, previous_end - 8, 0), start
            ):
                anchors.append(start)
            previous_end = end
        if len(anchors) > 1:
            anchors.sort()
        for position in anchors:
            match = _SSN.match(shape, position)
            if match is None:
                continue
            start = match.start()
            digits = _NON_DIGITS.sub("", text[start : match.end()])
            area, group, serial = digits[:3], digits[3:5], digits[5:]
            if (
                area == "000"
                or area == "666"
                or area[0] == "9"
                or group == "00"
                or serial == "0000"
                or digits in _INVALID_SSNS
            ):
                continue
            if match.group("bare") is not None:
                if not _SSN_CONTEXT.search(views.lower[max(0, start - 32) : start]):
                    continue
            yield Finding(start, match.end(), self.entity, self.name)


# ---------------------------------------------------------------------------------------
# IP addresses

_IPV4_ANCHOR = re.compile(rb"\.0{1,3}\.0")  # on the shape
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.[0-9]|-[A-Za-z]|\+)")
_VERSION_BEFORE = re.compile(r"(?<![a-z])(?:version|ver|release|build|firmware|rev)[\s:=]{0,3}\Z")
_IPV4_BEFORE_REJECT = _WORD | set(".-")
_IPV6_ANCHOR = re.compile(r":(?::|[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{1,4}:)")
_IPV6 = re.compile(
    r"(?:[0-9A-Fa-f:]{0,36}:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f:]{2,39})"
    r"(?:%[0-9A-Za-z_.]{1,16})?"
)
_HEX_COLON = frozenset("0123456789abcdefABCDEF:")


class IpAddressDetector:
    name = "ip_address"
    entity = "IP_ADDRESS"
    triggers = ("ipv4", "ipv6")

    def find(self, text: str) -> Iterator[Finding]:
        views = _views(text)
        if views.may_contain("ipv4") and "." in text:
            yield from self._find_v4(text)
        if views.may_contain("ipv6") and ":" in text:
            yield from self._find_v6(text)

    def _find_v4(self, text: str) -> Iterator[Finding]:
        pos = 0
        shape = _views(text).shape
        while anchor := _IPV4_ANCHOR.search(shape, pos):
            dot = anchor.start()
            start = dot
            while start > 0 and dot - start < 3 and text[start - 1].isdigit():
                start -= 1
            # Glued to a word or inside a dotted run (OIDs, versions): rejected before the
            # pattern runs. Any address starting inside a rejected one is rejected too, so
            # going on from the next dot finds what going on from its end would.
            if start == dot or (start > 0 and text[start - 1] in _IPV4_BEFORE_REJECT):
                pos = dot + 1
                continue
            match = _IPV4.match(text, start)
            if match is None:
                pos = dot + 1
                continue
            pos = match.end()
            first = int(match.group().split(".", 1)[0])
            if first in (0, 127, 255):
                continue
            if _VERSION_BEFORE.search(text[max(0, start - 12) : start].lower()):
                continue
            yield Finding(start, match.end(), self.entity, self.name)

    def _find_v6(self, text: str) -> Iterator[Finding]:
        pos = 0
        while anchor := _IPV6_ANCHOR.search(text, pos):
            start = anchor.start()
            floor = max(0, start - 39)
            while start > floor and text[start - 1] in _HEX_COLON:
                start -= 1
            if start > 0 and (text[start - 1] in _WORD or text[start - 1] == "."):
                pos = anchor.end()
                continue
            match = _IPV6.match(text, start)
            if match is None:  # pragma: no cover - the anchor guarantees a match
                pos = anchor.end()
                continue
            pos = max(match.end(), anchor.end())  # the walk back may have reached behind pos
            end = self._valid_v6_end(text, start, match.end())
            if end:
                yield Finding(start, end, self.entity, self.name)

    @staticmethod
    def _valid_v6_end(text: str, start: int, end: int) -> int | None:
        following = text[end + 1 : end + 2]
        if end < len(text) and (
            text[end] in _WORD or (text[end] == "." and (following.isalnum() or following == "."))
        ):
            return None
        candidate = text[start:end]
        for attempt in (candidate, candidate[:-1] if candidate.endswith(":") else ""):
            if not attempt or not any(c.isdigit() for c in attempt):
                continue
            address_part = attempt.split("%", 1)[0]
            if "::" not in address_part and address_part.count(":") < 6:
                continue
            try:
                address = ipaddress.IPv6Address(attempt)
            except ValueError:
                continue
            if address.is_unspecified or address.is_loopback:
                return None
            return start + len(attempt)
        return None


# ---------------------------------------------------------------------------------------
# prefixed tokens: AWS access key ids, GitHub, GitLab, Slack, Stripe


class PrefixedTokenDetector:
    """A token recognised by its prefixes (patterns that each start with a literal, so `re`
    finds them quickly; an alternation of different literals would step through the text
    character by character), then a body pattern with a group named body, which is checked
    for placeholders.

    A prefix given as (pattern, lead) matches from its `lead`-th character on and checks the
    characters before with a lookbehind: `re` finds a pattern fastest by a rare first
    character, such as the `_` of `_live_` rather than the `s` of `sk_live_`."""

    def __init__(
        self,
        name: str,
        entity: str,
        prefixes: tuple[str | tuple[str, int], ...],
        body: str,
        *,
        trigger: str,
        token_chars: frozenset[str] = _WORD,
        strip: str = "",
    ) -> None:
        self.name = name
        self.entity = entity
        self.triggers = (trigger,)  # in _TRIGGERS: occurs wherever a prefix does
        self._prefixes = tuple(
            (re.compile(p), 0) if isinstance(p, str) else (re.compile(p[0]), p[1]) for p in prefixes
        )
        self._body = re.compile(body)
        self._token_chars = token_chars
        self._strip = strip

    def find(self, text: str) -> Iterator[Finding]:
        if not _views(text).may_contain(self.triggers[0]):
            return
        hits = [
            (hit.start() - lead, hit.end())
            for prefix, lead in self._prefixes
            for hit in prefix.finditer(text)
        ]
        if not hits:
            return
        if len(self._prefixes) > 1:
            hits.sort()
        size = len(text)
        resume = 0
        for start, body_start in hits:
            if start < resume or (start > 0 and text[start - 1] in self._token_chars):
                continue
            match = self._body.match(text, body_start)
            if match is None:
                continue
            end = match.end()
            while self._strip and end > body_start and text[end - 1] in self._strip:
                end -= 1
            if end < size and text[end] in self._token_chars:
                continue
            if _distinct_enough(match.group("body")):
                resume = end
                yield Finding(start, end, self.entity, self.name)


# ---------------------------------------------------------------------------------------
# AWS secret access key

_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AUTH_SCHEME_BEFORE = re.compile(r"(?i)(?:bearer|basic|token)[ \t]{1,4}\Z")
_AWS_SECRET_CONTEXT = re.compile(rb"aws|secret[ _\-]?access[ _\-]?key|secret[ _\-]?key")
_AWS_KEY_ID = re.compile(r"A(?:KIA|SIA|BIA|CCA)[A-Z0-9]{16}")
_HEX = frozenset("0123456789abcdefABCDEF")


def _merged(windows: list[tuple[int, int]], size: int) -> Iterator[tuple[int, int]]:
    """The union of the windows, clipped to the text, in order."""
    low = high = -1
    for start, end in sorted(windows):
        start, end = max(start, 0), min(end, size)
        if start > high:
            if high > low:
                yield low, high
            low = start
        high = max(high, end)
    if high > low:
        yield low, high


class AwsSecretKeyDetector:
    name = "aws_secret_key"
    entity = "AWS_SECRET_KEY"
    triggers = ("aws", "aws_secret_words", "aws_key_id")

    def find(self, text: str) -> Iterator[Finding]:
        views = _views(text)
        lowered = views.lower
        windows: list[tuple[int, int]] = []
        for word, trigger in ((b"aws", "aws"), (b"secret", "aws_secret_words")):
            if not views.may_contain(trigger):
                continue
            pos = lowered.find(word)
            while pos != -1:
                context = _AWS_SECRET_CONTEXT.match(lowered, pos)
                if context is not None:
                    windows.append((context.end(), context.end() + 100))
                pos = lowered.find(word, pos + len(word))
        if views.may_contain("aws_key_id"):
            windows += [(m.start() - 300, m.end() + 300) for m in _AWS_KEY_ID.finditer(text)]
        if not windows:
            return
        for low, high in _merged(windows, len(text)):
            for match in _AWS_SECRET.finditer(text, low, high):
                value = match.group()
                if match.end() == high and high < len(text) and text[high] in _ALNUM:
                    continue  # cut by the window
                if value.startswith("eyJ"):
                    continue  # base64 of a JSON object: a cursor or a payload
                if _AUTH_SCHEME_BEFORE.search(text, max(0, match.start() - 12), match.start()):
                    continue  # an HTTP credential: bearer_token's or secret_assignment's
                if self._looks_like_secret(value):
                    yield Finding(match.start(), match.end(), self.entity, self.name)

    @staticmethod
    def _looks_like_secret(value: str) -> bool:
        if all(c in _HEX for c in value):
            return False  # a SHA-1 in hex
        has_upper = any(c.isupper() for c in value)
        has_lower = any(c.islower() for c in value)
        has_other = any(c.isdigit() or c in "+/" for c in value)
        return has_upper and has_lower and has_other and _distinct_enough(value, 12)


# ---------------------------------------------------------------------------------------
# JWT

_JWT = re.compile(r"eyJ[A-Za-z0-9_\-]{2,4096}\.eyJ[A-Za-z0-9_\-]{2,16384}\.[A-Za-z0-9_\-]{0,4096}")
_B64URL_CHARS = _WORD | {"-"}
_B64URL_RUN = re.compile(r"[A-Za-z0-9_\-]*")


def _b64url_json(segment: str) -> object:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError):
        return None


class JwtDetector:
    name = "jwt"
    entity = "JWT"
    triggers = ("jwt",)

    def find(self, text: str) -> Iterator[Finding]:
        if not _views(text).may_contain("jwt"):
            return
        pos = text.find("eyJ")
        while pos != -1:
            match = _JWT.match(text, pos)
            if match is None:
                # Skip the rest of this base64url run: a run of eyJeyJ... is tried once.
                pos = text.find("eyJ", _B64URL_RUN.match(text, pos).end())  # type: ignore[union-attr]
                continue
            start, end = match.span()
            pos = text.find("eyJ", end)
            if start > 0 and (text[start - 1] in _B64URL_CHARS or text[start - 1] == "."):
                continue
            if end < len(text) and text[end] in _B64URL_CHARS:
                continue
            header = _b64url_json(match.group().split(".", 1)[0])
            if isinstance(header, dict) and "alg" in header:
                yield Finding(start, end, self.entity, self.name)


# ---------------------------------------------------------------------------------------
# PEM private key

_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY( BLOCK)?-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_PEM_BODY = re.compile(r"[A-Za-z0-9+/=\s\\:,\-]*?(?=-----|[^A-Za-z0-9+/=\s\\:,\-]|\Z)")
_PEM_MAX = 64 * 1024


class PrivateKeyDetector:
    name = "private_key"
    entity = "PRIVATE_KEY"
    triggers = ("pem",)

    def find(self, text: str) -> Iterator[Finding]:
        if not _views(text).may_contain("pem"):
            return
        pos = text.find("-----BEGIN ")
        while pos != -1:
            begin = _PEM_BEGIN.match(text, pos)
            if begin is None:
                pos = text.find("-----BEGIN ", pos + 11)
                continue
            # The END line must come before the next BEGIN: each character is searched once.
            next_begin = text.find("-----BEGIN ", begin.end())
            limit = len(text) if next_begin == -1 else next_begin
            end_marker = _PEM_END.search(text, begin.end(), min(limit, begin.end() + _PEM_MAX))
            if end_marker is not None:
                end = end_marker.end()
            else:  # truncated: the header and the base64 that follows
                body = _PEM_BODY.match(text, begin.end())
                end = body.end() if body else begin.end()
                while end > begin.end() and text[end - 1] in " \t\r\n\\":
                    end -= 1
            yield Finding(pos, end, self.entity, self.name)
            pos = text.find("-----BEGIN ", end)


# ---------------------------------------------------------------------------------------
# bearer token

_BEARER_VALUE = re.compile(r"[ \t]{1,4}([A-Za-z0-9\-._~+/]{12,8192}=*)")


def _is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER.match(value))


class BearerTokenDetector:
    name = "bearer_token"
    entity = "BEARER_TOKEN"
    triggers = ("bearer",)

    def find(self, text: str) -> Iterator[Finding]:
        views = _views(text)
        if not views.may_contain("bearer"):
            return
        lowered = views.lower
        pos = lowered.find(b"bearer")
        if pos == -1:
            return
        # Mixed case such as "BeArEr" counts only where the text also has "earer" or "EARER".
        if text[pos + 1 : pos + 6] not in ("earer", "EARER") and (
            "earer" not in text and "EARER" not in text
        ):
            return
        while pos != -1:
            if pos > 0 and lowered[pos - 1] in _ALNUM_BYTES:
                pos = lowered.find(b"bearer", pos + 6)
                continue
            match = _BEARER_VALUE.match(text, pos + 6)
            if match is not None:
                start, end = match.span(1)
                while end > start and text[end - 1] in ".,":
                    end -= 1
                token = text[start:end]
                if (
                    end - start >= 12
                    and any(c.isdigit() for c in token)
                    and _distinct_enough(token, 8)
                    and not _is_placeholder(token)
                ):
                    yield Finding(start, end, self.entity, self.name)
                pos = lowered.find(b"bearer", end)
            else:
                pos = lowered.find(b"bearer", pos + 6)


# ---------------------------------------------------------------------------------------
# key=value secrets

# Literal words that start the search (on the lower-case view), with the rest of the key
# after them; the whole key is then checked against _SECRET_KEY. Each pattern starts with
# its literal, which `re` finds fast.
_SECRET_TRIGGERS = tuple(
    (word, re.compile(rb"%s[a-z0-9_.\-]{0,60}" % word.encode()))
    for word in ("pass", "pwd", "secret", "token", "key", "auth", "credential", "session")
)
_KEY_CHARS = frozenset(map(ord, _WORD | set("-.")))
_OPERATOR_AFTER_KEY = re.compile(r"(?:\\?[\"'])?[ \t]{0,3}(?:=|:)|>[^<>\n]{1,512}</")
_SECRET_KEY = re.compile(
    r"(?:password|passwd|passphrase|pass|pwd|secret|token|apikey|accesskey|secretkey"
    r"|privatekey|signingkey|encryptionkey|masterkey|authkey|accountkey|subscriptionkey"
    r"|clientkey|appkey|sessionid|sessionkey|authorization|auth|credentials?)"
    r"(?:value|str|string|plain|plaintext|raw|b64|base64|hex|hash|confirm|confirmation)?[0-9]*\Z"
)
_NOT_SECRET_KEY = re.compile(r"page|cursor|continuation|sync|nonce|csrf|xsrf|bypass|compass")
_ASSIGNMENT = re.compile(
    r"""
    (?P<kq>\\?["'])?[ \t]{0,3}(?P<op>=>|:=|==?|:)[ \t]{0,3}
    (?:
        "(?P<dq>(?:[^"\\\n]|\\[^"\n]){1,512})"
      | '(?P<sq>[^'\\\n]{1,512})'
      | \\"(?P<eq>[^"\\\n]{1,512})\\"
      | (?P<bare>[^\s"'`,;&<>()\[\]]{1,512})
    )
    """,
    re.VERBOSE,
)
_PLACEHOLDER = re.compile(
    r"""(?ix)
    (?:\*+|x{3,}|\.{3}|…|-+|_+|\?+
     |<[^>]*>|\[[^\]]*\]|\(\s*(?:hidden|redacted|masked|none)\s*\)
     |\$\{[^}]*\}|\$\(?[A-Za-z_][A-Za-z0-9_]*\)?|\{\{.*\}\}|%\(?\w*\)?s|%s|\{\w*\}
     |null|none|nil|true|false|undefined|n/?a|redacted|masked|hidden|filtered|removed|empty
     |your[_\-\s]?\w*|my[_\-\s]?(?:password|secret|token|api[_\-]?key)|example\w*|placeholder
     |env:\S*|secretkeyref|valuefrom|[:@]\w+)\Z"""
)
_XML_VALUE = re.compile(r">([^<>\n]{1,512})</")
_AUTH_SCHEMES = re.compile(r"(?i)(basic|token|digest|apikey|api-key|bearer)[ ]+(?=[^\s\"'])")
_BARE_TOKEN = re.compile(r"[^\s\"'`,;&<>]{1,4096}")
_ATTRIBUTE_ACCESS = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+\Z")
_URL_USERINFO = re.compile(r"[^\s:/@?#\"'<>]{0,128}:([^\s/@?#\"'<>]{1,256})@")
_SCHEME_BEFORE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]{0,20}\Z")


class SecretAssignmentDetector:
    name = "secret_assignment"
    entity = "SECRET"
    triggers = (*(word for word, _ in _SECRET_TRIGGERS), "url")

    def find(self, text: str) -> Iterator[Finding]:
        found: list[tuple[int, int]] = []
        views = _views(text)
        if "=" in text or ":" in text or "</" in text:
            lowered = views.lower
            key_ends: set[int] = set()
            for word, trigger in _SECRET_TRIGGERS:
                if not views.may_contain(word):
                    continue
                hit = trigger.search(lowered)
                while hit is not None:
                    pos, end = hit.span()
                    if end not in key_ends and _OPERATOR_AFTER_KEY.match(text, end):
                        key_ends.add(end)
                        span = self._value_after_key(text, lowered, pos, end)
                        if span:
                            found.append(span)
                    hit = trigger.search(lowered, end)
        if views.may_contain("url") and "://" in text:
            found.extend(self._url_passwords(text))
        found.sort()
        for start, end in found:
            yield Finding(start, end, self.entity, self.name)

    @staticmethod
    def _value_after_key(
        text: str, lowered: bytes, hit: int, key_end: int
    ) -> tuple[int, int] | None:
        key_start = hit
        while key_start > 0 and lowered[key_start - 1] in _KEY_CHARS and hit - key_start < 64:
            key_start -= 1
        key = lowered[key_start:key_end].decode().strip(".-")
        normalized = key.replace("_", "").replace("-", "").replace(".", "")
        if not _SECRET_KEY.search(normalized) or _NOT_SECRET_KEY.search(normalized):
            return None
        if text[key_end : key_end + 1] == ">" and text[key_start - 1 : key_start] == "<":
            element = _XML_VALUE.match(text, key_end)  # <password>value</password>
            if element is None or _is_placeholder(element.group(1)):
                return None
            return element.span(1)
        match = _ASSIGNMENT.match(text, key_end)
        if match is None or match.group("op") == "==":
            return None  # not an assignment, or a comparison in code
        op = match.group("op")
        group = next(g for g in ("dq", "sq", "eq", "bare") if match.group(g) is not None)
        quoted = group != "bare"
        start, end = match.span(group)
        if normalized.endswith(("authorization", "auth")):
            # "Authorization: Basic abc=" or {"authorization": "Token abc"}: the credential
            scheme = _AUTH_SCHEMES.match(text, start, end if quoted else len(text))
            if scheme is not None:
                if scheme.group(1).lower() == "bearer":
                    return None  # bearer_token's
                start = scheme.end()
                if not quoted:
                    token = _BARE_TOKEN.match(text, start)
                    if token is None:
                        return None
                    end = token.end()
        if not quoted:
            while end > start and text[end - 1] in ".:":
                end -= 1  # the end of a sentence
            if text[start] in "{[$" or text[end : end + 1] in ("(", "["):
                return None  # structures, variables, code: password = get_password()
        value = text[start:end]
        if not value or value.startswith("-----BEGIN") or _is_placeholder(value):
            return None
        if normalized.endswith("pwd") and value[:1] in ("/", "~", "."):
            return None  # the shell's working directory
        if not quoted and not _looks_secret(value, loose=op != ":"):
            return None
        return start, end

    @staticmethod
    def _url_passwords(text: str) -> Iterator[tuple[int, int]]:
        pos = text.find("://")
        while pos != -1:
            if _SCHEME_BEFORE.search(text, max(0, pos - 21), pos):
                match = _URL_USERINFO.match(text, pos + 3)
                if match is not None:
                    start, end = match.span(1)
                    if not _is_placeholder(text[start:end]):
                        yield start, end
            pos = text.find("://", pos + 3)


def _looks_secret(value: str, *, loose: bool) -> bool:
    """An unquoted value: after `=` anything but a bare number or a keyword; after `:` (YAML,
    headers, prose) it must look generated: a digit, a symbol or an inner capital."""
    if value.isdigit():
        return len(value) >= 6
    if value.lower() in ("true", "false", "yes", "no", "on", "off", "required", "optional"):
        return False
    if loose:
        return not _ATTRIBUTE_ACCESS.match(value)  # code: password = self.password
    has_digit = any(c.isdigit() for c in value)
    has_symbol = any(not c.isalnum() for c in value)
    inner_capital = any(c.isupper() for c in value[1:])
    return has_digit or has_symbol or inner_capital


# ---------------------------------------------------------------------------------------
# registry and scan

BUILTIN_DETECTORS: dict[str, Detector] = {
    "email": EmailDetector(),
    "phone": PhoneDetector(),
    "payment_card": PaymentCardDetector(),
    "iban": IbanDetector(),
    "us_ssn": UsSsnDetector(),
    "ip_address": IpAddressDetector(),
    "aws_access_key": PrefixedTokenDetector(
        "aws_access_key",
        "AWS_ACCESS_KEY",
        (r"A(?:KIA|SIA|BIA|CCA)",),
        r"(?P<body>[A-Z0-9]{16})",
        trigger="aws_key_id",
        token_chars=_ALNUM,
    ),
    "aws_secret_key": AwsSecretKeyDetector(),
    "github_token": PrefixedTokenDetector(
        "github_token",
        "GITHUB_TOKEN",
        (r"g(?:h[pousr]|ithub_pat)_",),
        r"(?P<body>[A-Za-z0-9_]{36,251})",
        trigger="github",
    ),
    "gitlab_token": PrefixedTokenDetector(
        "gitlab_token",
        "GITLAB_TOKEN",
        (r"gl(?:pat|dt|rt|ptt|ft|imt|cbt|soat|oas|agent|wt|ffct)-", r"GR1348941"),
        r"(?P<body>[A-Za-z0-9_\-]{20,255})(?:\.[0-9a-z]{2}\.[0-9a-z]{7,10})?",
        trigger="gitlab",
        token_chars=_WORD | {"-"},
    ),
    "slack_token": PrefixedTokenDetector(
        "slack_token",
        "SLACK_TOKEN",
        (r"x(?:ox[abposre]|app)-",),
        r"(?P<body>[0-9]{1,16}-[A-Za-z0-9\-]{8,250})",
        trigger="slack",
        token_chars=_ALNUM | {"-"},
        strip="-",
    ),
    "stripe_key": PrefixedTokenDetector(
        "stripe_key",
        "STRIPE_KEY",
        ((r"_(?:live|test)_(?<=[sr]k_live_|[sr]k_test_)", 2), r"whsec_"),
        r"(?P<body>[A-Za-z0-9]{16,247})",
        trigger="stripe",
    ),
    "jwt": JwtDetector(),
    "private_key": PrivateKeyDetector(),
    "bearer_token": BearerTokenDetector(),
    "secret_assignment": SecretAssignmentDetector(),
}

ENTITIES: dict[str, str] = {name: d.entity for name, d in BUILTIN_DETECTORS.items()}

_BUILTIN_TYPES = frozenset(type(d) for d in BUILTIN_DETECTORS.values())
# Everything any built-in detector needs at least one of; text without any of these holds
# no built-in finding. Kept in step with the detectors above (a test checks a sample).
_SUSPICIOUS = re.compile(
    r"[0-9@=:]|[Aa][Ww][Ss]|[Ss][Ee][Cc][Rr][Ee][Tt]|A(?:KI|SI|BI|CC)A|gh[pousr]_|github_pat_"
    r"|gl[a-z]{1,6}-|xox|xapp-|[sr]k_(?:live|test)_|whsec_|eyJ|-----BEGIN|</"
)
_SHORTEST_FINDING = 3


def scan(text: str, detectors: Iterable[Detector]) -> list[Finding]:
    """All findings in `text`, sorted by start, overlaps resolved: the longer span wins, and
    on a tie the detector earlier in `detectors`.

    Text in which no built-in detector could find anything (no digit, `@`, `=`, `:`, token
    prefix...) returns at once when every detector is a built-in. The detectors share derived
    forms of the text and the positions of common anchors through a one-entry memo keyed by
    the text object (`_views`), which keeps the last text scanned alive until the next scan.
    When the detectors would search for several of the `_TRIGGERS`, one pass finds which
    occur first.
    """
    return Scanner(detectors).scan(text)


class Scanner:
    """`scan` with one list of detectors, for many texts: what it works out from the
    detectors alone (whether all are built-ins, whether the trigger set is worth a pass) is
    worked out once. A masker scans every string of a result, often hundreds of short ones."""

    __slots__ = ("builtin_only", "detectors", "use_trigger_set")

    def __init__(self, detectors: Iterable[Detector]) -> None:
        self.detectors = tuple(detectors)
        self.builtin_only = all(type(d) in _BUILTIN_TYPES for d in self.detectors)
        self.use_trigger_set = (
            sum(len(getattr(d, "triggers", ())) for d in self.detectors) >= _SET_WORTH_IT
        )

    def scan(self, text: str) -> list[Finding]:
        if len(text) < _SHORTEST_FINDING:
            return []
        if self.builtin_only and not _SUSPICIOUS.search(text):
            return []
        if self.use_trigger_set:
            _views(text).find_triggers()
        lists = [list(detector.find(text)) for detector in self.detectors]
        return _native.resolve(lists) if _native is not None else self.merge_python(lists)

    @staticmethod
    def merge_python(lists: list[list[Finding]]) -> list[Finding]:
        """The specification of `masking_native.resolve`, which gives the same: the findings
        of each detector's list (in the detectors' order), empty ones left out, sorted by
        start, overlaps resolved."""
        found = [(f, index) for index, findings in enumerate(lists) for f in findings]
        found = [(f, index) for f, index in found if f.end > f.start]
        if len(found) < 2:
            return [f for f, _ in found]
        return _resolve_overlaps(found)


_START = itemgetter(0)  # a finding's start


def _resolve_overlaps(found: list[tuple[Finding, int]]) -> list[Finding]:
    # Most texts have no overlapping findings: then every finding is kept, in text order.
    by_start = [finding for finding, _ in found]
    by_start.sort(key=_START)
    end = -1
    for finding in by_start:
        if finding.start < end:
            break
        end = finding.end
    else:
        return by_start
    found.sort(key=lambda item: (item[0].start - item[0].end, item[1], item[0].start))
    starts: list[int] = []
    kept: list[Finding] = []
    for finding, _ in found:
        i = bisect_left(starts, finding.start)
        if i > 0 and kept[i - 1].end > finding.start:
            continue
        if i < len(kept) and kept[i].start < finding.end:
            continue
        starts.insert(i, finding.start)
        kept.insert(i, finding)
    return kept
