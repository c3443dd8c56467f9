"""Password login (embedded default, break-glass): rate limits, audit, headers, settings.

The failure counters live in the configured cache (Redis when REDIS_URL is set), shared
by every process; each test uses its own usernames and client addresses so that runs
never see each other's counters.
"""

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client

from audit.models import AuditRecord

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def unique_address() -> str:
    n = uuid.uuid4().int
    return f"10.{n % 250}.{(n >> 8) % 250}.{(n >> 16) % 250 + 1}"


def make_user(username: str, password: str, *roles: str) -> Any:
    user = get_user_model().objects.create_user(username, password=password)
    for role in roles:
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


def attempt(username: str, password: str, address: str, client: Client | None = None) -> Any:
    client = client or Client(REMOTE_ADDR=address)
    return client.post("/login/", {"username": username, "password": password})


def test_failed_logins_are_limited_per_username(settings: Any):
    limit = settings.LOGIN_THROTTLE["PER_USERNAME"]
    name = unique("dana")
    make_user(name, "right-password-1", "viewer")
    for _ in range(limit):
        response = attempt(name, "wrong", unique_address())
        assert response.status_code == 200 and "didn't match" in response.content.decode()

    # Locked for everyone, from anywhere, even with the right password.
    response = attempt(name, "right-password-1", unique_address())
    assert response.status_code == 429
    assert "Too many failed logins" in response.content.decode()
    assert int(response["Retry-After"]) == settings.LOGIN_THROTTLE["WINDOW_SECONDS"]
    assert "_auth_user_id" not in response.wsgi_request.session

    failures = AuditRecord.objects.filter(event="auth.login_failed", details__username=name)
    assert failures.count() == limit
    locked = AuditRecord.objects.get(event="auth.login_locked", details__username=name)
    assert locked.details["scope"] == "username" and locked.details["failures"] == limit

    # Other people are not affected.
    other = unique("erin")
    make_user(other, "right-password-2", "viewer")
    assert attempt(other, "right-password-2", unique_address()).status_code == 302


def test_failed_logins_are_limited_per_client_address(settings: Any):
    settings.LOGIN_THROTTLE = {**settings.LOGIN_THROTTLE, "PER_ADDRESS": 3}
    address = unique_address()
    for _ in range(3):
        assert attempt(unique("guess"), "wrong", address).status_code == 200
    victim = unique("fred")
    make_user(victim, "right-password-3", "viewer")
    assert attempt(victim, "right-password-3", address).status_code == 429
    assert attempt(victim, "right-password-3", unique_address()).status_code == 302
    locked = AuditRecord.objects.get(event="auth.login_locked", client_address=address)
    assert locked.details["scope"] == "address"


def test_successful_login_below_the_limit(settings: Any):
    name = unique("gail")
    make_user(name, "right-password-4", "approver")
    address = unique_address()
    for _ in range(settings.LOGIN_THROTTLE["PER_USERNAME"] - 1):
        attempt(name, "wrong", address)
    client = Client(REMOTE_ADDR=address)
    response = attempt(name, "right-password-4", address, client)
    assert response.status_code == 302
    assert client.get("/").status_code == 200


def test_account_without_a_role_gets_no_access_and_no_session():
    name = unique("charlie")
    make_user(name, "right-password-5")
    client = Client(REMOTE_ADDR=unique_address())
    response = attempt(name, "right-password-5", "", client)
    assert response.status_code == 403 and "No access" in response.content.decode()
    assert client.get("/")["Location"].startswith("/login/")


def test_break_glass_login_works_while_the_cache_is_down(settings: Any):
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": "redis://127.0.0.1:9/0",  # nothing listens there
        }
    }
    from django.core.cache import cache

    with pytest.raises(Exception, match="refused"):
        cache.get("anything")
    name = unique("otto")
    make_user(name, "right-password-9", "admin")
    assert attempt(name, "wrong", unique_address()).status_code == 200
    assert attempt(name, "right-password-9", unique_address()).status_code == 302


def test_password_login_can_be_switched_off(settings: Any):
    settings.PASSWORD_LOGIN = False
    settings.OIDC_ENABLED = True
    settings.OIDC_PROVIDER_NAME = "Example SSO"
    name = unique("hank")
    make_user(name, "right-password-6", "admin")
    client = Client(REMOTE_ADDR=unique_address())
    page = client.get("/login/").content.decode()
    assert "Log in with Example SSO" in page and 'name="password"' not in page
    response = attempt(name, "right-password-6", "", client)
    assert response.status_code == 403
    assert client.get("/")["Location"].startswith("/login/")


def test_admin_site_logs_in_through_the_console_login(client: Client):
    response = client.get("/admin/login/?next=/admin/")
    assert response.status_code == 302
    assert response["Location"] == "/login/?next=%2Fadmin%2F"


def test_security_headers_and_cookies():
    name = unique("ivy")
    make_user(name, "right-password-7", "viewer")
    client = Client(REMOTE_ADDR=unique_address())
    page = client.get("/login/")
    policy = page["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ):
        assert directive in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert page["X-Frame-Options"] == "DENY"
    assert page["X-Content-Type-Options"] == "nosniff"

    logged_in = attempt(name, "right-password-7", "", client)
    session = logged_in.cookies["sessionid"]
    assert session["httponly"] and session["samesite"] == "Lax"


def test_over_tls_plain_http_is_redirected_and_hsts_sent(settings: Any):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 3600
    client = Client()
    redirected = client.get("/login/")
    assert redirected.status_code == 301
    assert redirected["Location"] == "https://testserver/login/"
    assert "Strict-Transport-Security" not in redirected
    secure = client.get("/login/", secure=True)
    assert secure["Strict-Transport-Security"] == "max-age=3600; includeSubDomains; preload"
    assert client.get("/healthz").status_code == 200  # the container health check


def test_login_and_logout_need_the_csrf_token():
    name = unique("jack")
    make_user(name, "right-password-8", "viewer")
    client = Client(enforce_csrf_checks=True, REMOTE_ADDR=unique_address())
    assert attempt(name, "right-password-8", "", client).status_code == 403
    client.force_login(get_user_model().objects.get(username=name))
    assert client.post("/logout/").status_code == 403
    assert client.get("/").status_code == 200  # still logged in


def test_templates_have_no_inline_scripts_or_event_handlers():
    """The CSP allows scripts from this origin only: an inline script would not run."""
    import re

    offenders = []
    for path in (ROOT / "templates").rglob("*.html"):
        text = path.read_text()
        if re.search(r"<script(?![^>]*\ssrc=)[^>]*>", text):
            offenders.append(f"{path.relative_to(ROOT)}: inline <script>")
        if re.search(r"\son[a-z]+\s*=", text) or "javascript:" in text or "hx-on" in text:
            offenders.append(f"{path.relative_to(ROOT)}: inline event handler")
    assert offenders == []


def _run_settings(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OIDC_", "PASSWORD_"))}
    return subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "mcpgw.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _settings_error(**env: str) -> str:
    result = _run_settings("", **env)
    assert result.returncode != 0
    return result.stderr


def test_settings_refuse_to_start_without_any_way_to_log_in():
    assert "PASSWORD_LOGIN=false needs OpenID Connect" in _settings_error(PASSWORD_LOGIN="false")


def test_settings_refuse_half_configured_oidc():
    assert "OIDC_RP_CLIENT_ID" in _settings_error(OIDC_DISCOVERY_URL="https://idp.example.com")
    assert "OIDC_ROLE_MAP" in _settings_error(
        OIDC_DISCOVERY_URL="https://idp.example.com", OIDC_RP_CLIENT_ID="gw"
    )
    assert "is not role=group" in _settings_error(
        OIDC_DISCOVERY_URL="https://idp.example.com",
        OIDC_RP_CLIENT_ID="gw",
        OIDC_ROLE_MAP="owner=gw-owners",
    )
    assert "OIDC_ISSUER" in _settings_error(OIDC_OP_TOKEN_ENDPOINT="https://idp.example.com/t")


def test_role_map_takes_several_groups_per_role_and_ldap_names():
    result = _run_settings(
        "from django.conf import settings; print(sorted(settings.OIDC_ROLE_MAP.items()))",
        OIDC_DISCOVERY_URL="https://idp.example.com",
        OIDC_RP_CLIENT_ID="gw",
        OIDC_ROLE_MAP="admin=gw-admins, admin=cn=platform,ou=groups,dc=example,viewer=everyone",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(
        [("admin", ("gw-admins", "cn=platform,ou=groups,dc=example")), ("viewer", ("everyone",))]
    )
