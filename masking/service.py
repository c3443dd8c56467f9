"""Masking for the data path and the audit trail.

Each process keeps the rules it read as gateway/admission.py keeps what admits a call.
On Postgres an edit takes effect on every gateway process at once: the rules table
notifies the change channel that gateway/admission.py listens on, which drops the rules
read (kept at most `GATEWAY_ADMISSION_CACHE_MAX_AGE` seconds, and at most
`GATEWAY_ADMISSION_CACHE_SECONDS` while the process is not listening). On SQLite an edit
takes effect at once on the process that saved it and within
`GATEWAY_ADMISSION_CACHE_SECONDS` on the others.
"""

import hashlib
import hmac
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from gateway import admission

from .engine import (
    Masker,
    RegexDetector,
    Report,
    Rule,
    builtin_detector,
    compile_pattern,
    words_detector,
)
from .models import Kind, MaskingRule

AGENT = "agent"
AUDIT = "audit"


@dataclass(frozen=True)
class _Loaded:
    rules: list[tuple[MaskingRule, Rule]]
    loaded_at: float
    # The maskers built from these rules: a masker built from rules read earlier can never
    # be kept with rules read later.
    maskers: dict[tuple[int | None, str | None, str], Masker] = field(default_factory=dict)


_lock = threading.Lock()
_loaded: _Loaded | None = None
# The tools' output schemas, learnt from tools/list results passing through.
_output_schemas: dict[tuple[int, str], Any] = {}


def hash_key() -> bytes:
    configured = settings.MASKING["HASH_KEY"]
    if configured:
        return configured.encode()
    return hmac.new(settings.SECRET_KEY.encode(), b"mcpgw-masking-hash", hashlib.sha256).digest()


def compile_rule(rule: MaskingRule) -> Rule:
    detector = None
    keys: frozenset[str] = frozenset()
    if rule.kind == Kind.BUILTIN:
        detector = builtin_detector(rule.detector)
    elif rule.kind == Kind.REGEX:
        compiled, problem = compile_pattern(rule.pattern)
        if compiled is None:
            raise ValueError(problem)
        detector = RegexDetector(f"rule:{rule.pk}", rule.entity, compiled)
    elif rule.kind == Kind.DENYLIST:
        detector = words_detector(f"rule:{rule.pk}", rule.entity, rule.words)
    elif rule.kind == Kind.KEY_NAME:
        keys = frozenset(str(w).strip().lower() for w in rule.words)
    return Rule(
        id=rule.pk,
        name=rule.name,
        entity=rule.entity,
        style=rule.style,
        mask_for_agent=rule.mask_for_agent,
        detector=detector,
        keys=keys,
    )


def _fresh(loaded: _Loaded | None) -> bool:
    return loaded is not None and time.monotonic() - loaded.loaded_at < admission.keep_seconds()


def _load() -> _Loaded:
    global _loaded
    with _lock:
        if _fresh(_loaded):
            return _loaded  # type: ignore[return-value]
        generation = admission.generation()
        rules = list(MaskingRule.objects.enabled().in_evaluation_order())
        loaded = _Loaded([(r, compile_rule(r)) for r in rules], time.monotonic())
        # Rules read while a change came in may predate it: used, not kept.
        if generation == admission.generation():
            _loaded = loaded
        return loaded


def invalidate() -> None:
    global _loaded
    with _lock:
        _loaded = None


def masker_for(connection_id: int | None, tool: str | None, audience: str) -> Masker:
    """The masker for one connection and tool (a query only when the rules kept are due
    to be read again)."""
    loaded = _load()
    key = (connection_id, tool, audience)
    masker = loaded.maskers.get(key)
    if masker is None:
        rules = [
            compiled
            for model, compiled in loaded.rules
            if model.applies_to(connection_id, tool)
            and (audience == AUDIT or compiled.mask_for_agent)
        ]
        masker = loaded.maskers.setdefault(key, Masker(rules, hash_key()))
    return masker


def cached_masker(connection_id: int | None, tool: str | None, audience: str) -> Masker | None:
    """masker_for without a query: None when the rules are due to be read again."""
    loaded = _loaded
    if not _fresh(loaded):
        return None
    return loaded.maskers.get((connection_id, tool, audience))  # type: ignore[union-attr]


def remember_output_schemas(connection_id: int, tools_list_result: Any) -> None:
    if not isinstance(tools_list_result, dict):
        return
    for tool in tools_list_result.get("tools") or []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            _output_schemas[(connection_id, tool["name"])] = tool.get("outputSchema")


def output_schema(connection_id: int, tool: str | None) -> Any:
    return _output_schemas.get((connection_id, tool)) if tool else None


def mask_payload(
    masker: Masker, payload: dict[str, Any], report: Report, schema: Any = None
) -> dict[str, Any]:
    """An MCP message on its way to the agent, with every field that carries content masked:
    tool results (text blocks, embedded resources, structuredContent), resources/read
    contents, prompts/get messages, error messages, progress and log notifications, and
    server-to-client requests (elicitation and sampling text)."""
    if masker.empty:
        return payload
    out = dict(payload)
    if isinstance(out.get("result"), dict):
        out["result"] = _mask_result(masker, out["result"], report, schema)
    if isinstance(out.get("error"), dict):
        error = dict(out["error"])
        if isinstance(error.get("message"), str):
            error["message"] = masker.mask_text(error["message"], report)
        if "data" in error:
            error["data"] = masker.mask_json(error["data"], report)
        out["error"] = error
    if isinstance(out.get("params"), dict) and "method" in out:
        out["params"] = _mask_params(masker, out["method"], out["params"], report)
    return out


def _mask_blocks(masker: Masker, blocks: Any, report: Report) -> Any:
    if not isinstance(blocks, list):
        return blocks
    return [_mask_block(masker, block, report) for block in blocks]


def _mask_block(masker: Masker, block: Any, report: Report) -> Any:
    if not isinstance(block, dict):
        return block
    block = dict(block)
    if isinstance(block.get("text"), str):
        block["text"] = masker.mask_text(block["text"], report)
    if isinstance(block.get("resource"), dict):
        block["resource"] = _mask_block(masker, block["resource"], report)
    if isinstance(block.get("content"), dict | list):
        content = block["content"]
        block["content"] = (
            _mask_blocks(masker, content, report)
            if isinstance(content, list)
            else _mask_block(masker, content, report)
        )
    return block


def _mask_result(
    masker: Masker, result: dict[str, Any], report: Report, schema: Any
) -> dict[str, Any]:
    result = dict(result)
    if "content" in result:
        result["content"] = _mask_blocks(masker, result["content"], report)
    if "structuredContent" in result:
        result["structuredContent"] = masker.mask_json(result["structuredContent"], report, schema)
    if "contents" in result:  # resources/read
        result["contents"] = _mask_blocks(masker, result["contents"], report)
    if "messages" in result:  # prompts/get
        result["messages"] = _mask_blocks(masker, result["messages"], report)
    return result


def _mask_params(
    masker: Masker, method: str, params: dict[str, Any], report: Report
) -> dict[str, Any]:
    params = dict(params)
    if method in ("notifications/progress", "elicitation/create") and isinstance(
        params.get("message"), str
    ):
        params["message"] = masker.mask_text(params["message"], report)
    elif method == "notifications/message" and "data" in params:
        params["data"] = masker.mask_json(params["data"], report)
    elif method == "sampling/createMessage":
        params["messages"] = _mask_blocks(masker, params.get("messages"), report)
        if isinstance(params.get("systemPrompt"), str):
            params["systemPrompt"] = masker.mask_text(params["systemPrompt"], report)
    return params
