"""Agents' JWT access tokens from the organisation's provider (gateway.jwt).

oidc-provider-mock issues opaque access tokens, so the claim-by-claim cases sign their
own tokens with keys served by a tiny provider started here (discovery + JWKS on
127.0.0.1, counting how often its keys are fetched). Tokens signed by the real mock
provider are verified too: its ID tokens are JWTs signed with its published keys, and it
lets the test choose the client id, which becomes the token's audience.
"""

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import jwt
import oidc_provider_mock
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.jwt import verify_access_token
from tests.conftest import add_connection

RESOURCE = "https://gw.example.com/mcp/github"
BASE_RESOURCE = "https://gw.example.com"


class SigningKey:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    @property
    def jwk(self) -> dict[str, Any]:
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        return {**data, "kid": self.kid, "use": "sig", "alg": "RS256"}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm="RS256", headers={"kid": self.kid, **headers}
        )


class LocalProvider:
    """Discovery and a JWKS endpoint whose keys the test can rotate."""

    def __init__(self) -> None:
        self.keys = [SigningKey("key-1")]
        self.jwks_fetches = 0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/openid-configuration":
                    body = {
                        "issuer": provider.issuer,
                        "authorization_endpoint": f"{provider.issuer}/authorize",
                        "token_endpoint": f"{provider.issuer}/token",
                        "userinfo_endpoint": f"{provider.issuer}/userinfo",
                        "jwks_uri": f"{provider.issuer}/jwks",
                    }
                elif self.path == "/jwks":
                    provider.jwks_fetches += 1
                    body = {"keys": [key.jwk for key in provider.keys]}
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        return {
            "iss": self.issuer,
            "sub": "agent-7f3a",
            "aud": RESOURCE,
            "iat": now,
            "exp": now + 300,
            "run": "nightly-2024-06-01",
            "groups": ["gw-agents"],
            "email": "build-bot@example.com",
            "scope": "mcp tools",
            "jti": "token-1",
            **overrides,
        }

    def token(self, **overrides: Any) -> str:
        return self.keys[0].sign(self.claims(**overrides))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def local_provider(settings: Any) -> Iterator[LocalProvider]:
    provider = LocalProvider()
    settings.OIDC_ENABLED = True
    settings.OIDC_DISCOVERY_URL = provider.issuer
    settings.OIDC_ISSUER = ""
    settings.OIDC_RP_CLIENT_ID = "mcp-gateway-console"
    settings.OIDC_ROLE_MAP = {"admin": ("gw-admins",)}
    settings.OIDC_AUDIENCE = BASE_RESOURCE
    settings.OIDC_RUN_CLAIM = "run"
    settings.OIDC_TIMEOUT = 2.0
    yield provider
    provider.stop()


def test_valid_token_gives_subject_run_groups_and_email(local_provider: LocalProvider):
    claims = verify_access_token(local_provider.token(), RESOURCE)
    assert claims is not None
    assert claims.subject == "agent-7f3a"
    assert claims.run == "nightly-2024-06-01"
    assert claims.groups == ("gw-agents",)
    assert claims.email == "build-bot@example.com"
    assert claims.issuer == local_provider.issuer
    assert claims.scopes == ("mcp", "tools")
    assert claims.matched_audience == RESOURCE


def test_run_claim_is_configurable_and_optional(local_provider: LocalProvider, settings: Any):
    settings.OIDC_RUN_CLAIM = "agent_run"
    claims = verify_access_token(local_provider.token(agent_run="run-42"), RESOURCE)
    assert claims is not None and claims.run == "run-42"
    claims = verify_access_token(local_provider.token(run=None), RESOURCE)
    assert claims is not None and claims.run == ""


@pytest.mark.parametrize("claim", ["sub", "email", "run"])
@pytest.mark.parametrize("value", ["agent\x00x", "agent\nx", "agent\x7f"])
def test_control_characters_in_identity_claims_are_refused(
    local_provider: LocalProvider, claim: str, value: str
):
    """The subject, e-mail and run go into the user's name and every audit record; a NUL
    there would fail the database write, so such a token is refused like an invalid one."""
    assert verify_access_token(local_provider.token(**{claim: value}), RESOURCE) is None
    assert verify_access_token(local_provider.token(**{claim: "agent x ü"}), RESOURCE)


def test_token_for_the_gateway_base_resource_is_accepted(local_provider: LocalProvider):
    claims = verify_access_token(local_provider.token(aud=[BASE_RESOURCE + "/"]), RESOURCE)
    assert claims is not None and claims.matched_audience == BASE_RESOURCE + "/"


def test_token_meant_for_something_else_is_refused(local_provider: LocalProvider):
    assert (
        verify_access_token(local_provider.token(aud="https://crm.example.com"), RESOURCE) is None
    )
    other_connection = "https://gw.example.com/mcp/slack"
    assert verify_access_token(local_provider.token(aud=other_connection), RESOURCE) is None
    assert verify_access_token(local_provider.token(aud="mcp-gateway-console"), RESOURCE) is None
    no_audience = local_provider.claims()
    del no_audience["aud"]
    assert verify_access_token(local_provider.keys[0].sign(no_audience), RESOURCE) is None


def test_expired_token_is_refused_beyond_a_small_leeway(local_provider: LocalProvider):
    now = int(time.time())
    assert verify_access_token(local_provider.token(exp=now - 10), RESOURCE) is not None
    assert verify_access_token(local_provider.token(exp=now - 120), RESOURCE) is None
    assert verify_access_token(local_provider.token(nbf=now + 600), RESOURCE) is None
    no_expiry = local_provider.claims()
    del no_expiry["exp"]
    assert verify_access_token(local_provider.keys[0].sign(no_expiry), RESOURCE) is None


def test_token_from_another_issuer_is_refused(local_provider: LocalProvider):
    forged = local_provider.token(iss="https://idp.attacker.example")
    assert verify_access_token(forged, RESOURCE) is None


def test_token_signed_with_an_unpublished_key_is_refused(local_provider: LocalProvider):
    impostor = SigningKey("key-1")  # the published key id, another key
    assert verify_access_token(impostor.sign(local_provider.claims()), RESOURCE) is None


def test_unsigned_and_shared_secret_tokens_are_refused(local_provider: LocalProvider):
    claims = local_provider.claims()
    unsigned = jwt.encode(claims, key=None, algorithm="none", headers={"kid": "key-1"})
    assert verify_access_token(unsigned, RESOURCE) is None
    # The classic confusion: HMAC "signed" with the provider's public key as the secret.
    public_pem = (
        local_provider.keys[0]
        .private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = jwt.utils.base64url_encode(
        json.dumps({"alg": "HS256", "typ": "JWT", "kid": "key-1"}).encode()
    )
    payload = jwt.utils.base64url_encode(json.dumps(claims).encode())
    import hashlib
    import hmac

    signature = hmac.new(public_pem, header + b"." + payload, hashlib.sha256).digest()
    confused = b".".join([header, payload, jwt.utils.base64url_encode(signature)]).decode()
    assert verify_access_token(confused, RESOURCE) is None
    assert verify_access_token("not-a-jwt", RESOURCE) is None


def test_unknown_key_id_refreshes_the_key_set_once(local_provider: LocalProvider):
    assert verify_access_token(local_provider.token(), RESOURCE) is not None
    assert verify_access_token(local_provider.token(jti="again"), RESOURCE) is not None
    assert local_provider.jwks_fetches == 1  # cached

    rotated = SigningKey("key-2")
    local_provider.keys = [rotated, *local_provider.keys]
    claims = verify_access_token(rotated.sign(local_provider.claims()), RESOURCE)
    assert claims is not None
    assert local_provider.jwks_fetches == 2

    # Made-up key ids cannot make the gateway hammer the provider.
    for n in range(5):
        stranger = SigningKey(f"made-up-{n}")
        assert verify_access_token(stranger.sign(local_provider.claims()), RESOURCE) is None
    assert local_provider.jwks_fetches == 2


def test_unreachable_provider_fails_closed_and_fast(settings: Any):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        port = closed.server_port
    settings.OIDC_ENABLED = True
    settings.OIDC_DISCOVERY_URL = f"http://127.0.0.1:{port}"
    settings.OIDC_ISSUER = ""
    settings.OIDC_TIMEOUT = 1.0
    settings.OIDC_AUDIENCE = BASE_RESOURCE
    started = time.monotonic()
    token = SigningKey("k").sign({"sub": "x", "aud": RESOURCE, "exp": time.time() + 60})
    assert verify_access_token(token, RESOURCE) is None
    assert verify_access_token(token, RESOURCE) is None
    assert time.monotonic() - started < 3


def test_nothing_is_accepted_without_oidc(settings: Any):
    settings.OIDC_ENABLED = False
    token = SigningKey("k").sign({"sub": "x", "aud": RESOURCE, "exp": time.time() + 60})
    assert verify_access_token(token, RESOURCE) is None


@pytest.fixture(scope="module")
def mock_provider() -> Iterator[str]:
    with oidc_provider_mock.run_server_in_thread() as server:
        yield f"http://127.0.0.1:{server.server_port}"


def _id_token_from(provider: str, *, client_id: str, sub: str) -> str:
    """Run the authorization-code flow against the mock provider as client `client_id`."""
    redirect_uri = "http://127.0.0.1/callback"
    authorize = httpx.post(
        f"{provider}/oauth2/authorize?"
        + "&".join(
            f"{name}={quote(value, safe='')}"
            for name, value in {
                "response_type": "code",
                "client_id": client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email",
                "state": "s",
            }.items()
        ),
        data={"sub": sub},
    )
    assert authorize.status_code == 302, authorize.text
    code = parse_qs(urlsplit(authorize.headers["location"]).query)["code"][0]
    tokens = httpx.post(
        f"{provider}/oauth2/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "client_secret": "any",
        },
    )
    assert tokens.status_code == 200, tokens.text
    return tokens.json()["id_token"]


def test_tokens_signed_by_a_real_provider_are_verified_against_its_keys(
    mock_provider: str, settings: Any
):
    settings.OIDC_ENABLED = True
    settings.OIDC_DISCOVERY_URL = mock_provider
    settings.OIDC_ISSUER = ""
    settings.OIDC_AUDIENCE = ""
    httpx.put(
        f"{mock_provider}/users/{quote('ci-agent')}",
        json={"email": "ci@example.com", "groups": ["gw-agents"], "run": "build-981"},
    ).raise_for_status()

    token = _id_token_from(mock_provider, client_id=RESOURCE, sub="ci-agent")
    claims = verify_access_token(token, RESOURCE)
    assert claims is not None
    assert claims.subject == "ci-agent" and claims.issuer == mock_provider

    meant_for_another_app = _id_token_from(mock_provider, client_id="wiki", sub="ci-agent")
    assert verify_access_token(meant_for_another_app, RESOURCE) is None


@pytest.mark.django_db
def test_protected_resource_metadata_names_the_provider(
    client: Any, settings: Any, local_provider: LocalProvider
):
    add_connection("github", "http://127.0.0.1:9/mcp")
    url = "/.well-known/oauth-protected-resource/mcp/github"
    assert client.get(url).json()["authorization_servers"] == [local_provider.issuer]
    settings.OIDC_ENABLED = False
    assert client.get(url).json()["authorization_servers"] == []
