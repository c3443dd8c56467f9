"""The organisation's OpenID Connect provider: its metadata, its signing keys, and the
JWT access tokens it issues to agents.

Everything here is read lazily and cached per process: the provider's metadata on first
use (kept until the process ends), its key set for an hour and refetched early when a
token names a key id we do not know (at most once every UNKNOWN_KID_REFRESH_SECONDS, so
tokens with made-up key ids cannot turn the gateway into a load generator for the IdP).
Every HTTP call to the provider has the finite OIDC_TIMEOUT.
"""

import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
from django.conf import settings

logger = logging.getLogger(__name__)
# C0 controls and DEL, which no subject, e-mail address or run label holds.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

DISCOVERY_SUFFIX = "/.well-known/openid-configuration"
# Clock skew tolerated on exp, nbf and iat.
LEEWAY_SECONDS = 30
# The key set is refetched at least this often, so that rotated keys are picked up.
KEYS_MAX_AGE_SECONDS = 3600.0
# A token signed with an unknown key id may force a refetch at most this often.
UNKNOWN_KID_REFRESH_SECONDS = 30.0
# After the provider could not be reached, callers fail fast for this long.
RETRY_AFTER_FAILURE_SECONDS = 10.0
# Longest bearer credential we try to parse.
MAX_TOKEN_LENGTH = 16 * 1024
# Asymmetric algorithms only: a shared-secret (HS*) or unsigned (none) token is never
# accepted, whatever its header says.
ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class ProviderUnavailable(Exception):
    """The provider is not configured, could not be reached, or answered nonsense."""


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    userinfo_endpoint: str
    jwks_uri: str
    end_session_endpoint: str


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified agent access token says about its bearer."""

    subject: str
    issuer: str
    # The value of the OIDC_RUN_CLAIM claim ("" when absent): one run of an agent.
    run: str
    groups: tuple[str, ...]
    email: str
    scopes: tuple[str, ...]
    # Every audience of the token, and the one of ours it matched.
    audience: tuple[str, ...]
    matched_audience: str
    expires_at: datetime
    token_id: str


def enabled() -> bool:
    return bool(getattr(settings, "OIDC_ENABLED", False))


def discovery_url() -> str:
    url = settings.OIDC_DISCOVERY_URL
    if not url or url.endswith(DISCOVERY_SUFFIX):
        return url
    return url.rstrip("/") + DISCOVERY_SUFFIX


def configured_issuer() -> str:
    """The issuer as configured, known without asking the provider (OIDC_ISSUER, or the
    discovery URL without its well-known suffix)."""
    if settings.OIDC_ISSUER:
        return settings.OIDC_ISSUER
    url = discovery_url()
    return url.removesuffix(DISCOVERY_SUFFIX) if url else ""


_lock = threading.Lock()
_providers: dict[tuple[str, str], Provider] = {}
_failed_at: dict[str, float] = {}


def _get_json(url: str) -> dict[str, Any]:
    """GET a JSON object from the provider, failing fast after a recent failure."""
    if time.monotonic() - _failed_at.get(url, -math.inf) < RETRY_AFTER_FAILURE_SECONDS:
        raise ProviderUnavailable(f"{url} failed moments ago; not retrying yet")
    try:
        response = httpx.get(url, timeout=settings.OIDC_TIMEOUT, follow_redirects=False)
        response.raise_for_status()
        data = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        _failed_at[url] = time.monotonic()
        raise ProviderUnavailable(f"{url}: {exc}") from exc
    if not isinstance(data, dict):
        _failed_at[url] = time.monotonic()
        raise ProviderUnavailable(f"{url}: not a JSON object")
    _failed_at.pop(url, None)
    return data


def provider() -> Provider:
    """The provider's metadata: from discovery (fetched once, then cached) or from the
    explicitly configured endpoints. Raises ProviderUnavailable."""
    if not enabled():
        raise ProviderUnavailable("OpenID Connect is not configured")
    url = discovery_url()
    if not url:
        return Provider(
            issuer=settings.OIDC_ISSUER,
            authorization_endpoint=settings.OIDC_OP_AUTHORIZATION_ENDPOINT,
            token_endpoint=settings.OIDC_OP_TOKEN_ENDPOINT,
            userinfo_endpoint=settings.OIDC_OP_USER_ENDPOINT,
            jwks_uri=settings.OIDC_OP_JWKS_ENDPOINT,
            end_session_endpoint=settings.OIDC_OP_END_SESSION_ENDPOINT,
        )
    key = (url, settings.OIDC_ISSUER)
    with _lock:
        found = _providers.get(key)
        if found is None:
            found = _providers[key] = _discover(url)
    return found


def _discover(url: str) -> Provider:
    data = _get_json(url)
    issuer = data.get("issuer")
    expected = configured_issuer()
    # OpenID Connect Discovery 1.0, section 4.3: the issuer must be the one the document
    # was looked up for, or a provider could vouch for another provider's tokens.
    matches = (
        issuer == expected
        if settings.OIDC_ISSUER
        else isinstance(issuer, str) and issuer.rstrip("/") == expected.rstrip("/")
    )
    if not matches:
        raise ProviderUnavailable(f"{url}: issuer {issuer!r} is not {expected!r}")
    try:
        found = Provider(
            issuer=issuer,
            authorization_endpoint=str(data["authorization_endpoint"]),
            token_endpoint=str(data["token_endpoint"]),
            userinfo_endpoint=str(data.get("userinfo_endpoint", "")),
            jwks_uri=str(data["jwks_uri"]),
            end_session_endpoint=str(data.get("end_session_endpoint", "")),
        )
    except KeyError as exc:
        raise ProviderUnavailable(f"{url}: no {exc.args[0]}") from None
    logger.info("OpenID Connect provider %s discovered", issuer)
    return found


class _KeySet:
    """The provider's public keys by key id, refetched hourly and on unknown key ids."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.lock = threading.Lock()
        # key id -> (key, the algorithm the provider declared for it or "")
        self.keys: dict[str, tuple[jwt.PyJWK, str]] = {}
        self.fetched_at = -math.inf
        self.forced_at = -math.inf
        self.fetches = 0

    def _fetch(self) -> None:
        data = _get_json(self.uri)
        self.fetches += 1
        keys: dict[str, tuple[jwt.PyJWK, str]] = {}
        for entry in data.get("keys") or []:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            if entry.get("kty") == "oct":
                continue  # a shared secret is never a provider's signing key
            try:
                keys[str(entry.get("kid", ""))] = (jwt.PyJWK(entry), str(entry.get("alg", "")))
            except jwt.PyJWTError:
                continue  # a key type we cannot use; others may do
        self.keys = keys
        self.fetched_at = time.monotonic()
        logger.info("fetched %d signing key(s) from %s", len(keys), self.uri)

    def get(self, kid: str) -> tuple[jwt.PyJWK, str] | None:
        with self.lock:
            fetched = False
            if time.monotonic() - self.fetched_at > KEYS_MAX_AGE_SECONDS:
                try:
                    self._fetch()
                    fetched = True
                except ProviderUnavailable:
                    if not self.keys:
                        raise
                    logger.warning("keeping cached signing keys of %s", self.uri)
            key = self._pick(kid)
            if key is None and not fetched:
                now = time.monotonic()
                if now - self.forced_at >= UNKNOWN_KID_REFRESH_SECONDS:
                    self.forced_at = now
                    self._fetch()
                    key = self._pick(kid)
            return key

    def _pick(self, kid: str) -> tuple[jwt.PyJWK, str] | None:
        if kid:
            return self.keys.get(kid)
        # A token without a key id is acceptable only from a provider with one key.
        return next(iter(self.keys.values())) if len(self.keys) == 1 else None


_key_sets: dict[str, _KeySet] = {}


def key_set(uri: str) -> _KeySet:
    with _lock:
        found = _key_sets.get(uri)
        if found is None:
            found = _key_sets[uri] = _KeySet(uri)
    return found


def decode(token: str, *, audience: Iterable[str]) -> dict[str, Any]:
    """The verified claims of a JWT signed by the provider for one of `audience`.

    Checks the signature against the provider's keys, the issuer, exp/nbf/iat (with
    LEEWAY_SECONDS) and the audience. Raises jwt.InvalidTokenError or ProviderUnavailable.
    """
    if len(token) > MAX_TOKEN_LENGTH:
        raise jwt.InvalidTokenError("token too long")
    header = jwt.get_unverified_header(token)
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise jwt.InvalidAlgorithmError(f"algorithm {algorithm!r} is not accepted")
    found = provider()
    found_key = key_set(found.jwks_uri).get(str(header.get("kid") or ""))
    if found_key is None:
        raise jwt.InvalidTokenError("signed with a key the provider does not publish")
    key, declared = found_key
    if declared and declared != algorithm:
        raise jwt.InvalidAlgorithmError(f"key is for {declared}, token says {algorithm}")
    return jwt.decode(
        token,
        key.key,
        algorithms=[algorithm],
        audience=list(audience),
        issuer=found.issuer,
        leeway=LEEWAY_SECONDS,
        options={"require": ["exp", "iss", "aud", "sub"]},
    )


def claim_groups(claims: Mapping[str, Any]) -> tuple[str, ...]:
    """The groups in OIDC_GROUPS_CLAIM: a list of names, or one name as a string."""
    value = claims.get(settings.OIDC_GROUPS_CLAIM)
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list | tuple):
        return tuple(str(group) for group in value if isinstance(group, str | int))
    return ()


def _audiences(resource: str) -> list[str]:
    """`resource` and the gateway's base resource URI, with or without a trailing slash."""
    accepted: list[str] = []
    for uri in (resource, settings.OIDC_AUDIENCE):
        if uri:
            bare = uri.rstrip("/")
            accepted += [bare, bare + "/"]
    return accepted


def verify_access_token(token: str, audience: str) -> Claims | None:
    """The claims of an agent's access token issued by the provider, or None.

    `audience` is the resource URI of the connection being called (as in its protected
    resource metadata, e.g. https://gw.example.com/mcp/github); a token is accepted only
    if its `aud` holds that URI or the gateway's base resource URI (OIDC_AUDIENCE), never
    for anything else. Blocking (HTTP to the provider on a cold cache): call it from a
    thread, e.g. through sync_to_async(thread_sensitive=False).
    """
    if not enabled() or not token:
        return None
    accepted = _audiences(audience)
    try:
        payload = decode(token, audience=accepted)
    except ProviderUnavailable as exc:
        logger.warning("agent access token not verified, provider unavailable: %s", exc)
        return None
    except (jwt.InvalidTokenError, jwt.PyJWKError) as exc:
        logger.info("agent access token refused: %s", exc)
        return None
    subject = payload.get("sub")
    if not isinstance(subject, str) or not subject:
        return None
    audiences = payload["aud"] if isinstance(payload["aud"], list) else [payload["aud"]]
    scope = payload.get("scope", payload.get("scp", ""))
    scopes = scope.split() if isinstance(scope, str) else [str(s) for s in scope or []]
    run = payload.get(settings.OIDC_RUN_CLAIM, "")
    run = str(run) if isinstance(run, str | int) else ""
    email = payload.get("email", "")
    email = email if isinstance(email, str) else ""
    if any(_CONTROL.search(value) for value in (subject, run, email)):
        # The user's name and every audit record hold these; the database refuses NUL.
        logger.info("agent access token refused: a control character in sub, email or run")
        return None
    return Claims(
        subject=subject,
        issuer=str(payload["iss"]),
        run=run,
        groups=claim_groups(payload),
        email=email,
        scopes=tuple(scopes),
        audience=tuple(str(a) for a in audiences),
        matched_audience=next(a for a in audiences if a in accepted),
        expires_at=datetime.fromtimestamp(int(payload["exp"]), tz=UTC),
        token_id=str(payload.get("jti", "")),
    )
