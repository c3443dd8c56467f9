"""The masker: finds sensitive values with the rules in scope and replaces them.

Evaluation order (documented in the README):
1. Key-name rules, on JSON objects: a key that matches (any letter case, any depth)
   masks its whole value, which is then not scanned further.
2. Pattern rules (built-in detectors, regular expressions, deny-lists) on every string,
   in rule order (`order`, then id). Where two findings overlap, the longer one wins; on
   equal length the earlier rule wins.
Replacements keep JSON types: a masked string stays a string; a sensitive number becomes
a masked string where the tool's output schema allows a string, and 0 otherwise.
"""

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import re2

from .detectors import BUILTIN_DETECTORS, Detector, Finding, Scanner, _native

MAX_DEPTH = 64
_DETECTOR = itemgetter(3)  # a finding's detector


def compile_pattern(pattern: str, *, case_sensitive: bool = True) -> tuple[Any, str | None]:
    """An RE2 regex, or the reason it is refused. RE2 runs in linear time: no expression
    can backtrack catastrophically, and constructs that would need it are refused."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = case_sensitive
    options.max_mem = 8 << 20
    try:
        compiled = re2.compile(pattern, options)
    except re2.error as exc:
        message = exc.args[0] if exc.args else str(exc)
        if isinstance(message, bytes):
            message = message.decode(errors="replace")
        return None, f"Not a valid RE2 regular expression: {message}"
    if compiled.search("") is not None and compiled.fullmatch("") is not None:
        return None, "The expression matches the empty string, so it would mask nothing useful."
    return compiled, None


@dataclass(frozen=True)
class RegexDetector:
    name: str
    entity: str
    regex: Any

    def find(self, text: str) -> Iterator[Finding]:
        for match in self.regex.finditer(text):
            if match.end() > match.start():
                yield Finding(match.start(), match.end(), self.entity, self.name)


def words_detector(name: str, entity: str, words: Iterable[str]) -> RegexDetector:
    alternatives = "|".join(
        re2.escape(w.strip()) for w in sorted(set(words), key=len, reverse=True)
    )
    compiled, problem = compile_pattern(rf"\b(?:{alternatives})\b", case_sensitive=False)
    if compiled is None:
        raise ValueError(problem)
    return RegexDetector(name, entity, compiled)


@dataclass(frozen=True)
class Rule:
    """A masking rule compiled for use on the data path."""

    id: int
    name: str
    entity: str
    style: str
    mask_for_agent: bool
    detector: Detector | None = None
    keys: frozenset[str] = frozenset()


@dataclass
class Report:
    """Which rules fired and how often (never the values)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, rule: Rule, times: int = 1) -> None:
        self.counts[rule.name] += times

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"values": self.total, "rules": dict(sorted(self.counts.items()))}


class Masker:
    def __init__(self, rules: list[Rule], hash_key: bytes) -> None:
        self.hash_key = hash_key
        self.key_rules: dict[str, Rule] = {}
        for rule in rules:
            for key in rule.keys:
                self.key_rules.setdefault(key.lower(), rule)
        self.pattern_rules = [rule for rule in rules if rule.detector is not None]
        # One detector may serve several rules in scope: the first in order wins.
        self._rule_of: dict[str, Rule] = {}
        self.detectors: list[Detector] = []
        for rule in self.pattern_rules:
            assert rule.detector is not None
            if rule.detector.name not in self._rule_of:
                self._rule_of[rule.detector.name] = rule
                self.detectors.append(rule.detector)
        self._scanner = Scanner(self.detectors)
        # The replacement of each detector whose rule replaces every value with its label.
        self._labels = {
            name: self.replacement(rule, "")
            for name, rule in self._rule_of.items()
            if rule.style not in ("partial", "hash")
        }
        # The detectors whose rule keeps the last four letters or digits (made in C).
        self._partials = {name for name, rule in self._rule_of.items() if rule.style == "partial"}

    @property
    def empty(self) -> bool:
        return not self.key_rules and not self.pattern_rules

    # -- replacements --------------------------------------------------------------

    def replacement(self, rule: Rule, value: str) -> str:
        if rule.style == "partial":
            if len(value) < 8:
                return "****"
            last = value[-4:]
            # The last four letters or digits; most values end in four of them.
            tail = last if last.isalnum() else "".join(c for c in value if c.isalnum())[-4:]
            return "****" + tail
        if rule.style == "hash":
            digest = hmac.new(
                self.hash_key, f"{rule.entity}\x00{value}".encode(), hashlib.sha256
            ).hexdigest()
            return f"[{rule.entity}:{digest[:12]}]"
        return f"[{rule.entity}]"

    # -- text and JSON ---------------------------------------------------------------

    def mask_text(self, text: str, report: Report) -> str:
        if not self.detectors or not text:
            return text
        findings = self._scanner.scan(text)
        if not findings:
            return text
        # A result may hold hundreds of values: the report is counted once per detector.
        rule_of = self._rule_of
        for detector, times in Counter(map(_DETECTOR, findings)).items():
            report.add(rule_of[detector], times)
        if _native is not None:
            return _native.splice(text, findings, self._labels, self._partials, self._replace)
        return self.splice_python(text, findings)

    def splice_python(self, text: str, findings: list[Finding]) -> str:
        """The specification of `masking_native.splice`, which gives the same: the text with
        each finding (sorted, apart) replaced."""
        rule_of, replacement, labels = self._rule_of, self.replacement, self._labels
        parts: list[str] = []
        append = parts.append
        position = 0
        for start, end, _entity, detector in findings:
            append(text[position:start])
            label = labels.get(detector)
            append(label if label is not None else replacement(rule_of[detector], text[start:end]))
            position = end
        append(text[position:])
        return "".join(parts)

    def _replace(self, detector: str, value: str) -> str:
        return self.replacement(self._rule_of[detector], value)

    def mask_json(self, value: Any, report: Report, schema: Any = None, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            return value
        if isinstance(value, str):
            return self.mask_text(value, report)
        if isinstance(value, dict):
            masked = {}
            properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
            for key, item in value.items():
                sub_schema = properties.get(key) if isinstance(properties, dict) else None
                rule = self.key_rules.get(key.lower()) if isinstance(key, str) else None
                if rule is not None:
                    masked[key] = self._mask_whole(item, rule, report, sub_schema)
                else:
                    masked[key] = self.mask_json(item, report, sub_schema, depth + 1)
            return masked
        if isinstance(value, list):
            items = schema.get("items") if isinstance(schema, dict) else None
            return [self.mask_json(item, report, items, depth + 1) for item in value]
        if isinstance(value, int | float) and not isinstance(value, bool):
            text = str(value)
            findings = self._scanner.scan(text) if self.detectors else []
            if findings and findings[0].start == 0 and findings[0].end == len(text):
                rule = self._rule_of[findings[0].detector]
                report.add(rule)
                return self._typed(self.replacement(rule, text), value, schema)
        return value

    def _mask_whole(self, value: Any, rule: Rule, report: Report, schema: Any) -> Any:
        """Everything under a sensitive key, replaced leaf by leaf."""
        if value is None:
            return None
        if isinstance(value, dict):
            return {k: self._mask_whole(v, rule, report, None) for k, v in value.items()}
        if isinstance(value, list):
            return [self._mask_whole(v, rule, report, None) for v in value]
        report.add(rule)
        replacement = self.replacement(rule, str(value))
        if isinstance(value, str):
            return replacement
        return self._typed(replacement, value, schema)

    @staticmethod
    def _typed(replacement: str, original: Any, schema: Any) -> Any:
        if _allows_string(schema):
            return replacement
        if isinstance(original, bool):
            return False
        return 0 if isinstance(original, int) else 0.0


def _allows_string(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind == "string" or (isinstance(kind, list) and "string" in kind):
        return True
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and any(_allows_string(o) for o in options):
            return True
    return False


def builtin_detector(name: str) -> Detector:
    return BUILTIN_DETECTORS[name]
