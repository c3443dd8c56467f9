"""What the gateway knows about the two MCP protocol eras.

Legacy (2024-11-05 .. 2025-11-25): `initialize`, `Mcp-Session-Id`, a GET stream and
server-to-client requests. Modern (2026-07-28): stateless; every request carries the
protocol version and client capabilities in `params._meta`, and `Mcp-Method`/`Mcp-Name`
headers; `server/discover` replaces `initialize`.
"""

from typing import Any

MODERN_VERSION = "2026-07-28"
MODERN_VERSIONS = (MODERN_VERSION,)
LEGACY_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
LATEST_LEGACY_VERSION = LEGACY_VERSIONS[-1]

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
MODERN_META_KEYS = (META_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES, META_CLIENT_INFO)

# Methods whose name is mirrored in the Mcp-Name header, and the params key it comes from.
NAME_BEARING_METHODS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}

GATEWAY_CLIENT_INFO = {"name": "mcp-gateway", "version": "0.1.0"}

# Headers of a modern request that the gateway passes upstream unchanged.
MODERN_FORWARDED_HEADERS = ("mcp-method", "mcp-name")
MCP_PARAM_PREFIX = "mcp-param-"


def is_modern_version(version: str | None) -> bool:
    return version is not None and version in MODERN_VERSIONS


def request_version(headers: dict[str, str], params: dict[str, Any]) -> str | None:
    """The protocol version a request claims, from its header or its `_meta`."""
    meta = params.get("_meta")
    if isinstance(meta, dict) and isinstance(meta.get(META_PROTOCOL_VERSION), str):
        return meta[META_PROTOCOL_VERSION]
    return headers.get("mcp-protocol-version")


def modern_headers(method: str, params: dict[str, Any] | None) -> dict[str, str]:
    headers = {"mcp-method": method}
    key = NAME_BEARING_METHODS.get(method)
    if key and params and isinstance(params.get(key), str):
        name = params[key]
        if name.isascii() and name.isprintable() and name == name.strip():
            headers["mcp-name"] = name
    return headers


def discover_request(id: str | int, capabilities: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": id,
        "method": "server/discover",
        "params": {
            "_meta": {
                META_PROTOCOL_VERSION: MODERN_VERSION,
                META_CLIENT_CAPABILITIES: capabilities or {},
                META_CLIENT_INFO: GATEWAY_CLIENT_INFO,
            }
        },
    }


def gateway_initialize_params() -> dict[str, Any]:
    """initialize params for the session the gateway opens on behalf of stateless agents.

    It declares no client capabilities: a stateless agent has no channel for
    server-to-client requests, so the upstream must not send any.
    """
    return {
        "protocolVersion": LATEST_LEGACY_VERSION,
        "capabilities": {},
        "clientInfo": GATEWAY_CLIENT_INFO,
    }


def legacy_params(params: dict[str, Any]) -> dict[str, Any]:
    """A modern request's params made fit for a legacy upstream: without the envelope keys."""
    meta = params.get("_meta")
    if not isinstance(meta, dict) or not any(key in meta for key in MODERN_META_KEYS):
        return params
    trimmed = {k: v for k, v in meta.items() if k not in MODERN_META_KEYS}
    out = {k: v for k, v in params.items() if k != "_meta"}
    if trimmed:
        out["_meta"] = trimmed
    return out


def modern_params(params: dict[str, Any], initialize_params: dict[str, Any]) -> dict[str, Any]:
    """A legacy request's params made fit for a modern upstream: with the envelope keys."""
    meta = dict(params.get("_meta") or {})
    meta[META_PROTOCOL_VERSION] = MODERN_VERSION
    meta[META_CLIENT_CAPABILITIES] = initialize_params.get("capabilities") or {}
    if isinstance(initialize_params.get("clientInfo"), dict):
        meta[META_CLIENT_INFO] = initialize_params["clientInfo"]
    return {**params, "_meta": meta}


def initialize_from_discover(result: dict[str, Any], requested_version: str) -> dict[str, Any]:
    """An initialize result built from a modern-only upstream's server/discover result."""
    version = requested_version if requested_version in LEGACY_VERSIONS else LATEST_LEGACY_VERSION
    meta = result.get("_meta") if isinstance(result.get("_meta"), dict) else {}
    server_info = meta.get(META_SERVER_INFO) if meta else None
    initialize: dict[str, Any] = {
        "protocolVersion": version,
        "capabilities": result.get("capabilities") or {},
        "serverInfo": server_info
        if isinstance(server_info, dict)
        else {"name": "upstream", "version": "unknown"},
    }
    if result.get("instructions"):
        initialize["instructions"] = result["instructions"]
    return initialize


def legacy_result(result: dict[str, Any]) -> dict[str, Any]:
    """A modern result made fit for a legacy agent (drops the modern-only envelope fields)."""
    return {k: v for k, v in result.items() if k not in ("resultType", "cacheScope", "ttlMs")}


# Results that 2026-07-28 marks cacheable; they must say for whom and how long.
CACHEABLE_METHODS = ("tools/list", "prompts/list", "resources/list", "resources/templates/list")


def modern_result(method: str, result: dict[str, Any]) -> dict[str, Any]:
    """A legacy upstream's result made fit for a 2026-07-28 agent."""
    result = {"resultType": "complete", **result}
    if method in CACHEABLE_METHODS:
        # Later policy filters lists per caller, so they are never shared across callers.
        result.setdefault("cacheScope", "private")
        result.setdefault("ttlMs", 0)
    return result
