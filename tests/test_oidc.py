"""People log in through a real OpenID Connect provider (oidc-provider-mock, run here).

The full authorization-code flow: the console sends the browser to the provider, the
test "authorizes" there as a subject whose claims it set, and follows the redirect back
to the console's callback, which exchanges the code over HTTP with the provider.
"""

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import oidc_provider_mock
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from audit.models import AuditRecord
from console.roles import user_roles

pytestmark = pytest.mark.django_db

ROLE_MAP = {
    "admin": ("gw-admins",),
    "approver": ("gw-approvers",),
    "auditor": ("gw-auditors",),
    "viewer": ("gw-viewers",),
}


@pytest.fixture(scope="module")
def provider_url() -> Iterator[str]:
    with oidc_provider_mock.run_server_in_thread(require_nonce=True) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def provider(provider_url: str, settings: Any) -> str:
    settings.OIDC_ENABLED = True
    settings.OIDC_DISCOVERY_URL = provider_url
    settings.OIDC_ISSUER = ""
    settings.OIDC_RP_CLIENT_ID = "mcp-gateway"
    settings.OIDC_RP_CLIENT_SECRET = "client-secret"
    settings.OIDC_ROLE_MAP = ROLE_MAP
    settings.OIDC_PROVIDER_NAME = "Example SSO"
    return provider_url


def set_claims(provider: str, email: str, groups: list[str], **claims: Any) -> None:
    httpx.put(
        f"{provider}/users/{quote(email)}",
        json={"email": email, "groups": groups, **claims},
    ).raise_for_status()


def log_in(client: Client, email: str, *, next_url: str = "") -> Any:
    """Start at the console, authorize at the provider, come back with the code."""
    start = client.get("/oidc/authenticate/" + (f"?next={quote(next_url)}" if next_url else ""))
    assert start.status_code == 302
    query = parse_qs(urlsplit(start["Location"]).query)
    assert query["client_id"] == ["mcp-gateway"]
    assert "nonce" in query and "state" in query and "code_challenge" in query
    authorized = httpx.post(start["Location"], data={"sub": email})
    assert authorized.status_code == 302, authorized.text
    callback = authorized.headers["location"]
    assert callback.startswith("http://testserver/oidc/callback/?")
    return client.get(callback)


def roles_of(email: str) -> set[str]:
    return user_roles(get_user_model().objects.get(username=email))


def test_login_page_offers_the_provider(client: Client, provider: str):
    page = client.get("/login/").content.decode()
    assert "Log in with Example SSO" in page
    assert 'name="password"' in page  # break-glass stays available by default


def test_login_page_without_oidc_has_only_the_password_form(client: Client, settings: Any):
    settings.OIDC_ENABLED = False
    page = client.get("/login/").content.decode()
    assert "Log in with" not in page and 'name="password"' in page
    assert client.get("/oidc/authenticate/").status_code == 404


def test_first_login_creates_the_user_with_the_role_from_the_group_claim(
    client: Client, provider: str
):
    set_claims(provider, "jane@example.com", ["gw-approvers", "unrelated"], given_name="Jane")
    response = log_in(client, "jane@example.com", next_url="/approvals/")
    assert response.status_code == 302 and response["Location"] == "/approvals/"

    jane = get_user_model().objects.get(username="jane@example.com")
    assert jane.email == "jane@example.com" and jane.first_name == "Jane"
    assert not jane.has_usable_password()  # only the IdP lets her in
    assert user_roles(jane) == {"approver"}
    assert client.get("/").status_code == 200

    events = list(AuditRecord.objects.filter(event__startswith="auth.").order_by("seq"))
    assert [e.event for e in events] == ["auth.roles_changed", "auth.login"]
    assert events[0].details["added"] == ["approver"]
    assert events[0].details["idp_groups"] == ["gw-approvers"]


def test_later_login_sets_roles_exactly_from_the_claim(client: Client, provider: str):
    set_claims(provider, "sam@example.com", ["gw-admins", "gw-auditors"])
    assert log_in(client, "sam@example.com").status_code == 302
    assert roles_of("sam@example.com") == {"admin", "auditor"}

    # A role given locally does not survive the next login: the IdP is the source.
    sam = get_user_model().objects.get(username="sam@example.com")
    sam.groups.add(Group.objects.get_or_create(name="viewer")[0])

    set_claims(provider, "sam@example.com", ["gw-auditors"])
    assert log_in(Client(), "sam@example.com").status_code == 302
    assert roles_of("sam@example.com") == {"auditor"}
    removed = AuditRecord.objects.filter(event="auth.roles_changed").order_by("-seq").first()
    assert removed is not None and removed.details["removed"] == ["admin", "viewer"]

    set_claims(provider, "sam@example.com", [])
    browser = Client()
    response = log_in(browser, "sam@example.com")
    assert response.status_code == 403 and "No access" in response.content.decode()
    assert roles_of("sam@example.com") == set()
    assert browser.get("/")["Location"].startswith("/login/")  # no session


def test_user_without_a_mapped_group_sees_no_access(client: Client, provider: str):
    set_claims(provider, "eve@example.com", ["marketing"])
    response = log_in(client, "eve@example.com")
    assert response.status_code == 403
    page = response.content.decode()
    assert "No access" in page and "eve@example.com" in page and "Example SSO" in page
    assert client.get("/").status_code == 302
    assert AuditRecord.objects.filter(event="auth.no_access").exists()
    assert not AuditRecord.objects.filter(event="auth.login").exists()


def test_logout_ends_the_session_and_the_provider_session(client: Client, provider: str):
    set_claims(provider, "max@example.com", ["gw-viewers"])
    log_in(client, "max@example.com")
    assert client.get("/").status_code == 200

    response = client.post("/logout/")
    assert response.status_code == 302
    end_session = urlsplit(response["Location"])
    assert f"{end_session.scheme}://{end_session.netloc}{end_session.path}" == (
        f"{provider}/oauth2/end_session"
    )
    query = parse_qs(end_session.query)
    assert query["post_logout_redirect_uri"] == ["http://testserver/login/"]
    assert query["id_token_hint"][0].count(".") == 2
    assert httpx.get(response["Location"]).status_code == 200  # the provider's logout page

    assert client.get("/")["Location"].startswith("/login/")
    assert AuditRecord.objects.filter(event="auth.logout", username="max@example.com").exists()
    assert client.get("/logout/").status_code == 405  # logging out takes a POST (CSRF)


def test_idp_login_cannot_take_over_a_local_account(client: Client, provider: str):
    local = get_user_model().objects.create_superuser("ops@example.com", "ops@example.com", "pw")
    set_claims(provider, "ops@example.com", ["gw-viewers"])
    response = log_in(client, "ops@example.com")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert "did not complete" in client.get("/login/").content.decode()
    local.refresh_from_db()
    assert local.is_superuser and local.has_usable_password()
    assert client.get("/")["Location"].startswith("/login/")
    refused = AuditRecord.objects.get(event="auth.oidc_refused")
    assert "local account" in refused.details["reason"]


def test_superuser_status_does_not_outlive_an_idp_login(client: Client, provider: str):
    set_claims(provider, "kim@example.com", ["gw-viewers"])
    log_in(client, "kim@example.com")
    get_user_model().objects.filter(username="kim@example.com").update(is_superuser=True)
    log_in(Client(), "kim@example.com")
    assert roles_of("kim@example.com") == {"viewer"}


def test_denied_authorization_returns_to_the_login_page(client: Client, provider: str):
    start = client.get("/oidc/authenticate/")
    denied = httpx.post(start["Location"], data={"action": "deny"})
    response = client.get(denied.headers["location"])
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert client.get("/")["Location"].startswith("/login/")


def test_unreachable_provider_gives_a_clear_message(client: Client, settings: Any):
    settings.OIDC_ENABLED = True
    settings.OIDC_DISCOVERY_URL = "http://127.0.0.1:9/"  # discard port: nothing listens
    settings.OIDC_ISSUER = ""
    settings.OIDC_PROVIDER_NAME = "Example SSO"
    settings.OIDC_TIMEOUT = 1.0
    response = client.get("/oidc/authenticate/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert "Example SSO cannot be reached" in client.get("/login/").content.decode()


def test_users_page_shows_roles_and_where_they_come_from(client: Client, provider: str):
    set_claims(provider, "lee@example.com", ["gw-approvers"])
    log_in(Client(), "lee@example.com")
    local = get_user_model().objects.create_user("break-glass", password="pw-1")
    local.groups.add(Group.objects.get_or_create(name="auditor")[0])
    get_user_model().objects.create_user("nobody", password="pw-2")
    admin = get_user_model().objects.create_superuser("root", "root@example.com", "pw-3")

    client.force_login(admin)
    page = client.get("/users/").content.decode()
    assert "lee@example.com" in page and "IdP group gw-approvers" in page
    assert "break-glass" in page and "assigned locally" in page
    assert "no role: no access" in page and "superuser" in page
    assert "gw-admins" in page  # the role map
    filtered = client.get("/users/?role=approver").content.decode()
    assert "lee@example.com" in filtered and "break-glass" not in filtered

    viewer = get_user_model().objects.get(username="lee@example.com")
    client.force_login(viewer)
    assert client.get("/users/").status_code == 403


def test_unverified_email_is_refused(client: Client, provider: str):
    set_claims(provider, "mallory@example.com", ["gw-admins"], email_verified=False)
    response = log_in(client, "mallory@example.com")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert not get_user_model().objects.filter(username="mallory@example.com").exists()
    refused = AuditRecord.objects.get(event="auth.oidc_refused")
    assert "not verified" in refused.details["reason"]
