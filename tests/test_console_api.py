"""/api/connections/ and /api/tokens/: the console's operations for scripts, with session
or api-token authentication, field-level validation errors, write-only credentials, and
the OpenAPI schema and docs."""

import json
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils.timezone import now

from audit.models import AuditRecord
from gateway.actions import issue_token, revoke_token
from gateway.models import AgentToken, Connection
from tests.conftest import Server, person

pytestmark = pytest.mark.django_db

SECRET = "sk-api-canary-0a1b2c"


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class Api:
    """A JSON client, logged in with a session or carrying a bearer token."""

    def __init__(self, user: Any = None, token: str | None = None, csrf: bool = False) -> None:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
        self.client = Client(enforce_csrf_checks=csrf, **headers)
        if user is not None:
            self.client.force_login(user)

    def get(self, url: str, **params: Any) -> Any:
        return self.client.get(url, params)

    def post(self, url: str, body: Any = None) -> Any:
        return self.client.post(url, json.dumps(body or {}), "application/json")

    def patch(self, url: str, body: Any) -> Any:
        return self.client.patch(url, json.dumps(body), "application/json")

    def delete(self, url: str) -> Any:
        return self.client.delete(url)


def api_token(user: Any, **kwargs: Any) -> str:
    return issue_token(user=user, scopes=["api"], run_label="script", **kwargs)[1]


@pytest.fixture
def alice() -> Any:
    return person("alice", admin=True)


@pytest.fixture
def as_alice(alice: Any) -> Api:
    return Api(alice)


def create(api: Api, **fields: Any) -> Any:
    body = {"slug": "crm", "url": "http://127.0.0.1:9/mcp", "headers": {"X-Api-Key": SECRET}}
    return api.post("/api/connections/", {**body, **fields})


# -- connections -------------------------------------------------------------------


def test_admin_creates_a_connection_and_credentials_are_write_only(as_alice: Api):
    response = create(as_alice, name="CRM")

    assert response.status_code == 201
    body = response.json()
    assert body["slug"] == "crm" and body["name"] == "CRM" and body["enabled"] is True
    assert body["transport"] == "streamable_http" and body["header_names"] == ["X-Api-Key"]
    assert body["agent_url"] == "http://testserver/mcp/crm"
    assert "headers" not in body
    for url in ("/api/connections/", "/api/connections/crm"):
        assert SECRET not in as_alice.get(url).content.decode()
    assert Connection.objects.get().get_headers() == {"X-Api-Key": SECRET}
    event = AuditRecord.objects.get(event="connection.created")
    assert event.username == "alice" and SECRET not in json.dumps(event.details)


def test_everyone_with_a_role_lists_and_reads_connections(as_alice: Api):
    create(as_alice)
    dave = Api(person("dave", "viewer"))
    listed = dave.get("/api/connections/").json()
    assert [c["slug"] for c in listed] == ["crm"]
    assert listed[0]["last_outcome"] is None
    assert dave.get("/api/connections/crm").json()["header_names"] == ["X-Api-Key"]
    assert dave.get("/api/connections/nope").status_code == 404


def test_validation_errors_name_their_fields(as_alice: Api):
    response = as_alice.post(
        "/api/connections/",
        {"slug": "Bad Slug", "url": "ftp://x", "headers": {"Host": "x", "Good": "a\nb"}},
    )
    assert response.status_code == 400
    errors = response.json()
    assert "lowercase letters" in errors["slug"][0]
    assert errors["url"] == ["Enter a valid URL."]
    assert "set by the gateway itself" in errors["headers"]["Host"][0]
    assert "line breaks" in errors["headers"]["Good"][0]

    missing = as_alice.post("/api/connections/", {"slug": "crm"}).json()
    assert "needs it" in missing["url"][0]
    stdio = as_alice.post("/api/connections/", {"slug": "local", "transport": "stdio"}).json()
    assert "needs it" in stdio["command"][0]
    sse = as_alice.post("/api/connections/", {"slug": "old", "transport": "sse"}).json()
    assert "needs it" in sse["url"][0]
    assert not Connection.objects.exists()


def test_a_slug_is_registered_once(as_alice: Api):
    create(as_alice)
    again = create(as_alice, url="http://127.0.0.1:10/mcp")
    assert again.status_code == 400
    assert again.json() == {"slug": ["A connection with this slug already exists."]}
    assert Connection.objects.get().url == "http://127.0.0.1:9/mcp"


def test_patch_changes_only_what_it_names(as_alice: Api):
    create(as_alice, name="CRM")
    Connection.objects.update(era="modern")

    response = as_alice.patch("/api/connections/crm", {"enabled": False})
    assert response.status_code == 200 and response.json()["enabled"] is False
    connection = Connection.objects.get()
    assert connection.get_headers() == {"X-Api-Key": SECRET} and connection.name == "CRM"
    assert connection.era == "modern"

    response = as_alice.patch(
        "/api/connections/crm",
        {"url": "http://127.0.0.1:10/mcp", "headers": {"Authorization": "Bearer new"}},
    )
    body = response.json()
    assert body["url"] == "http://127.0.0.1:10/mcp" and body["header_names"] == ["Authorization"]
    assert body["era"] == ""  # a new upstream may speak another era
    assert Connection.objects.get().get_headers() == {"Authorization": "Bearer new"}

    bad = as_alice.patch("/api/connections/crm", {"url": "not a url", "max_processes": 0})
    assert bad.status_code == 400 and set(bad.json()) == {"url", "max_processes"}
    emptied = as_alice.patch("/api/connections/crm", {"url": ""})
    assert emptied.status_code == 400 and "url" in emptied.json()


def test_only_admins_change_connections(as_alice: Api):
    create(as_alice)
    bob = Api(person("bob", "approver"))
    assert create(bob, slug="erp").status_code == 403
    assert bob.patch("/api/connections/crm", {"enabled": False}).status_code == 403
    assert bob.delete("/api/connections/crm").status_code == 403
    assert bob.post("/api/connections/crm/test").status_code == 403
    assert Connection.objects.get().enabled is True


def test_delete_removes_the_connection_and_is_audited(as_alice: Api, alice: Any):
    create(as_alice)
    token, _ = issue_token(user=alice, connection=Connection.objects.get())
    assert as_alice.delete("/api/connections/crm").status_code == 204
    assert not Connection.objects.exists() and not AgentToken.objects.exists()
    event = AuditRecord.objects.get(event="connection.deleted")
    assert event.details["tokens_deleted"] == [token.display]
    assert as_alice.delete("/api/connections/crm").status_code == 404


def test_test_endpoint_contacts_the_upstream(as_alice: Api, shared_upstream: Server):
    create(as_alice, url=shared_upstream.url, headers={})
    response = as_alice.post("/api/connections/crm/test")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["era"] == "modern" and body["error"] == ""
    assert body["server_info"]["name"] == "demo" and "tools" in body["capabilities"]
    tools = {t["name"]: t for t in body["tools"]}
    assert tools["delete_record"]["annotations"]["destructiveHint"] is True
    assert tools["add"]["state"] == "new"
    assert as_alice.get("/api/connections/crm").json()["era"] == "modern"


def test_test_endpoint_reports_failure_in_the_body(as_alice: Api):
    create(as_alice, url="http://127.0.0.1:1/mcp")
    body = as_alice.post("/api/connections/crm/test").json()
    assert body["ok"] is False and "unreachable" in body["error"] and body["tools"] == []


# -- tokens --------------------------------------------------------------------------


def test_create_returns_the_token_once(as_alice: Api):
    create(as_alice)
    response = as_alice.post(
        "/api/tokens/",
        {"connection": "crm", "ttl_seconds": 3600, "run_label": "nightly", "scopes": ["mcp"]},
    )
    assert response.status_code == 201
    assert "no-store" in response["Cache-Control"]
    body = response.json()
    secret = body["token"]
    assert secret.startswith(f"mgw_{body['public_id']}_")
    assert body["owner"] == "alice" and body["connection"] == "crm" and body["active"] is True
    assert body["scopes"] == ["mcp"] and body["run_label"] == "nightly"
    listed = as_alice.get("/api/tokens/")
    assert secret not in listed.content.decode()
    assert [t["public_id"] for t in listed.json()] == [body["public_id"]]
    assert "token" not in listed.json()[0]
    token = AgentToken.objects.get()
    assert timedelta(minutes=59) < token.expires_at - now() <= timedelta(hours=1)


def test_token_defaults_and_never_expiring_tokens(as_alice: Api):
    body = as_alice.post("/api/tokens/", {}).json()
    assert body["scopes"] == ["mcp"] and body["connection"] is None
    first = AgentToken.objects.get(public_id=body["public_id"])
    assert timedelta(hours=23) < first.expires_at - now() <= timedelta(hours=24)
    forever = as_alice.post("/api/tokens/", {"ttl_seconds": None}).json()
    assert forever["expires_at"] is None


def test_token_input_errors_name_their_fields(as_alice: Api):
    response = as_alice.post(
        "/api/tokens/",
        {"ttl_seconds": 5, "scopes": ["root"], "connection": "nope", "run_label": "x" * 201},
    )
    assert response.status_code == 400
    errors = response.json()
    assert set(errors) == {"ttl_seconds", "scopes", "run_label"}
    assert "greater than or equal to 60" in errors["ttl_seconds"][0]
    assert "not a valid choice" in str(errors["scopes"])
    unknown = as_alice.post("/api/tokens/", {"connection": "nope"})
    assert unknown.status_code == 400 and unknown.json() == {"connection": ["No such connection."]}
    assert as_alice.post("/api/tokens/", {"scopes": []}).status_code == 400
    assert not AgentToken.objects.exists()


def test_admins_issue_for_others_and_nobody_else_does(as_alice: Api):
    dave = person("dave", "viewer")
    made = as_alice.post("/api/tokens/", {"owner": "dave"}).json()
    assert made["owner"] == "dave"
    assert as_alice.post("/api/tokens/", {"owner": "ghost"}).json() == {
        "owner": ["No active user of that name."]
    }
    as_dave = Api(dave)
    refused = as_dave.post("/api/tokens/", {"owner": "alice"})
    assert refused.status_code == 403
    assert as_dave.post("/api/tokens/", {"owner": "dave"}).status_code == 201


def test_lists_are_own_for_people_and_everyone_for_admins(alice: Any):
    bob = person("bob", "approver")
    issue_token(user=alice, run_label="alices")
    issue_token(user=bob, run_label="bobs")
    old, _ = issue_token(user=bob, run_label="old")
    revoke_token(old)

    as_bob = Api(bob)
    assert {t["run_label"] for t in as_bob.get("/api/tokens/").json()} == {"bobs", "old"}
    assert [t["run_label"] for t in as_bob.get("/api/tokens/", active="true").json()] == ["bobs"]
    assert [t["run_label"] for t in as_bob.get("/api/tokens/", active="false").json()] == ["old"]
    everyone = Api(alice).get("/api/tokens/", limit=10).json()
    assert {t["owner"] for t in everyone} == {"alice", "bob"}
    assert as_bob.get("/api/tokens/", limit=0).status_code == 400


def test_revoke_own_or_as_admin_and_never_anothers(alice: Any):
    bob = person("bob", "approver")
    dave = person("dave", "viewer")
    bobs, _ = issue_token(user=bob)
    daves, _ = issue_token(user=dave)

    as_dave = Api(dave)
    assert as_dave.post(f"/api/tokens/{bobs.public_id}/revoke").status_code == 404
    assert as_dave.post("/api/tokens/not-an-id/revoke").status_code == 404
    response = as_dave.post(f"/api/tokens/{daves.public_id}/revoke")
    assert response.status_code == 200 and response.json()["active"] is False
    assert as_dave.post(f"/api/tokens/{daves.public_id}/revoke").status_code == 200  # again
    assert Api(alice).post(f"/api/tokens/{bobs.public_id}/revoke").json()["active"] is False
    events = AuditRecord.objects.filter(event="token.revoked").order_by("seq")
    assert [(e.username, e.details["owner"]) for e in events] == [
        ("dave", "dave"),
        ("alice", "bob"),
    ]


# -- authentication --------------------------------------------------------------------


def test_scripts_use_api_tokens(alice: Any):
    api = Api(token=api_token(alice))
    assert api.get("/api/connections/").status_code == 200
    assert create(api).status_code == 201  # no CSRF with a bearer token
    made = api.post("/api/tokens/", {"ttl_seconds": 600})
    assert made.status_code == 201


def test_refused_tokens_get_401_with_a_bearer_challenge(alice: Any):
    mcp_only = issue_token(user=alice, scopes=["mcp"])[1]
    revoked_token, revoked = issue_token(user=alice, scopes=["api"])
    revoke_token(revoked_token)
    expired_token, expired = issue_token(user=alice, scopes=["api"], ttl=timedelta(seconds=60))
    AgentToken.objects.filter(pk=expired_token.pk).update(expires_at=now() - timedelta(seconds=1))
    for secret in (mcp_only, revoked, expired, "mgw_0123456789ab_wrong", None):
        response = Api(token=secret).get("/api/tokens/")
        assert response.status_code == 401, secret
        assert response["WWW-Authenticate"].startswith("Bearer")


def test_api_tokens_of_people_without_a_role_are_refused():
    eve = person("eve")
    response = Api(token=api_token(eve)).get("/api/connections/")
    assert response.status_code == 403


def test_a_token_issued_with_an_api_token_cannot_outlive_it(alice: Any):
    api = Api(token=api_token(alice, ttl=timedelta(hours=1)))
    longer = api.post("/api/tokens/", {"ttl_seconds": 7200})
    assert longer.status_code == 400 and "cannot outlive it" in longer.json()["ttl_seconds"][0]
    assert api.post("/api/tokens/", {"ttl_seconds": None}).status_code == 400
    assert api.post("/api/tokens/", {"ttl_seconds": 1800}).status_code == 201


def test_session_writes_need_the_csrf_token(as_alice: Api, alice: Any):
    strict = Api(alice, csrf=True)
    assert create(strict).status_code == 403
    assert strict.post("/api/tokens/", {}).status_code == 403
    assert strict.get("/api/connections/").status_code == 200
    assert not Connection.objects.exists() and not AgentToken.objects.exists()


# -- schema and docs -------------------------------------------------------------------


def test_openapi_schema_and_docs(alice: Any):
    api = Api(alice)
    schema = api.client.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    document = schema.json()
    paths = document["paths"]
    for path in (
        "/api/connections/",
        "/api/connections/{slug}",
        "/api/connections/{slug}/test",
        "/api/tokens/",
        "/api/tokens/{public_id}/revoke",
    ):
        assert path in paths, path
    create_body = document["components"]["schemas"]["ConnectionCreateInput"]["properties"]
    assert create_body["headers"]["writeOnly"] is True
    assert "headers" not in document["components"]["schemas"]["ConnectionOutput"]["properties"]
    assert "apiToken" in document["components"]["securitySchemes"]

    docs = api.client.get("/api/docs/")
    assert docs.status_code == 200
    page = docs.content.decode()
    assert "/static/drf_spectacular_sidecar/" in page and "cdn." not in page
    # Nothing inline that the Content Security Policy (no inline scripts or styles) refuses.
    assert "<style" not in page and "<script>" not in page
    assert "/static/css/swagger.css" in page
    assert "'unsafe-inline'" not in docs["Content-Security-Policy"]
    script = api.client.get("/api/docs/?script=")
    assert script.status_code == 200 and "/api/schema/" in script.content.decode()

    assert Client().get("/api/schema/").status_code in (401, 403)
    assert Api(person("eve")).get("/api/schema/").status_code == 403
