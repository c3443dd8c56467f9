"""Every console page and API endpoint x every role x another person's object: nobody gets
a 2xx (or a success redirect) they are not entitled to.

The endpoints are read from the URLconf, so a new one fails this test until it has a
row in ACCESS below. Each request runs in a savepoint that is rolled back, so a request
that is allowed (and changes something) does not disturb the next one.
"""

import copy
import json
import re
import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.db import transaction
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from approvals import actions as approval_actions
from approvals.models import digest_arguments
from audit import chain
from gateway.actions import issue_token, save_connection
from gateway.models import Connection
from masking.defaults import install_defaults
from masking.models import MaskingRule
from tests.conftest import person

pytestmark = pytest.mark.django_db

ROLES = ("alice", "bob", "carol", "dave", "eve", "anonymous")
ADMIN = frozenset({"alice"})
DECIDERS = frozenset({"alice", "bob"})
AUDITORS = frozenset({"alice", "carol"})
ANY_ROLE = frozenset({"alice", "bob", "carol", "dave"})
PUBLIC = frozenset(ROLES)
NOBODY: frozenset[str] = frozenset()
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def only(**methods: frozenset[str]) -> dict[str, frozenset[str]]:
    """Who may use each method; a method left out is for nobody."""
    return {method: methods.get(method, NOBODY) for method in METHODS}


def every_method(roles: frozenset[str]) -> dict[str, frozenset[str]]:
    """Views that do not restrict the method: the same people, whatever the method."""
    return dict.fromkeys(METHODS, roles)


# alice admin, bob approver, carol auditor, dave viewer, eve no role, anonymous.
ACCESS: dict[str, dict[str, frozenset[str]]] = {
    # Public: logging in and out, health, OAuth metadata.
    "login": only(GET=PUBLIC, POST=PUBLIC, PUT=PUBLIC),
    "logout": only(POST=PUBLIC),
    "oidc_authentication_init": only(GET=PUBLIC),
    "oidc_authentication_callback": only(GET=PUBLIC),
    "healthz": every_method(PUBLIC),
    "protected-resource-metadata": only(GET=PUBLIC),
    # The admin site's login: a redirect to the console's login.
    "admin/login/": every_method(PUBLIC),
    # Console pages.
    "home": only(GET=ANY_ROLE),
    "users": every_method(ADMIN),
    "connections": only(GET=ANY_ROLE),
    "connection-new": only(GET=ADMIN, POST=ADMIN),
    "connection-edit": only(GET=ADMIN, POST=ADMIN),
    "connection-toggle": only(POST=ADMIN),
    "connection-test": only(POST=ADMIN),
    "connection-tools": only(GET=ANY_ROLE),
    "connection-tools-approve": only(POST=ADMIN),
    "tokens": only(GET=ANY_ROLE, POST=ANY_ROLE),
    # Another person's token: only an admin may revoke it.
    "token-revoke": only(POST=ADMIN),
    # Audit trail and SIEM sinks.
    "audit:list": only(GET=AUDITORS),
    "audit:detail": only(GET=AUDITORS),
    "audit:session": only(GET=AUDITORS),
    "siem:sinks": every_method(AUDITORS),
    "audit-api:list": only(GET=AUDITORS),
    "audit-api:detail": only(GET=AUDITORS),
    "audit-api:export-csv": only(GET=AUDITORS),
    "audit-api:export-jsonl": only(GET=AUDITORS),
    # Masking rules.
    "masking:list": every_method(ADMIN),
    "masking:new": every_method(ADMIN),
    "masking:edit": every_method(ADMIN),
    "masking:toggle": only(POST=ADMIN),
    "masking:delete": only(POST=ADMIN),
    "masking:preview": only(POST=ADMIN),
    "masking-api:list": only(GET=ADMIN, POST=ADMIN),
    "masking-api:detail": only(GET=ADMIN, PATCH=ADMIN, DELETE=ADMIN),
    # Held calls (requested by another person's token) and policies.
    "approvals:queue": only(GET=DECIDERS),
    "approvals:history": only(GET=DECIDERS),
    "approvals:row": only(GET=DECIDERS),
    "approvals:decide": only(POST=DECIDERS),
    "approvals:policy": only(GET=ADMIN, POST=ADMIN),
    "approvals-api:list": only(GET=DECIDERS),
    "approvals-api:detail": only(GET=DECIDERS),
    "approvals-api:approve": only(POST=DECIDERS),
    "approvals-api:deny": only(POST=DECIDERS),
    "connection-policy-api": only(GET=ADMIN, PUT=ADMIN),
    # The console API.
    "console-api:connections": only(GET=ANY_ROLE, POST=ADMIN),
    "console-api:connection": only(GET=ANY_ROLE, PATCH=ADMIN, DELETE=ADMIN),
    "console-api:connection-test": only(POST=ADMIN),
    "console-api:tokens": only(GET=ANY_ROLE, POST=ANY_ROLE),
    "console-api:token-revoke": only(POST=ADMIN),
    "console-api:schema": only(GET=ANY_ROLE),
    "console-api:docs": only(GET=ANY_ROLE),
}

PARAMETER = re.compile(r"<(?:(?P<converter>\w+):)?(?P<name>\w+)>")


def endpoints() -> list[tuple[str, str]]:
    """(name, route) of every URL pattern outside the Django admin site."""
    found = []

    def walk(patterns: list[Any], prefix: str, namespace: str) -> None:
        for pattern in patterns:
            if isinstance(pattern, URLResolver):
                if pattern.app_name == "admin":
                    continue
                inner = ":".join(filter(None, (namespace, pattern.namespace or "")))
                walk(pattern.url_patterns, prefix + str(pattern.pattern), inner)
            elif isinstance(pattern, URLPattern):
                route = prefix + str(pattern.pattern)
                # Unnamed patterns go by their route.
                name = pattern.name or route
                found.append((f"{namespace}:{name}" if namespace else name, route))

    walk(get_resolver().url_patterns, "", "")
    return found


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def world() -> dict[str, Any]:
    """The people, and objects that belong to none of them (frank's)."""
    people = {
        "alice": person("alice", admin=True),
        "bob": person("bob", "approver"),
        "carol": person("carol", "auditor"),
        "dave": person("dave", "viewer"),
        "eve": person("eve"),
    }
    frank = person("frank", "viewer")
    connection, _ = save_connection(
        slug="crm", url="http://127.0.0.1:9/mcp", headers={"X-Api-Key": "sk-matrix-canary"}
    )
    token, _ = issue_token(user=frank, run_label="franks-run")
    approval = approval_actions.request_approval(
        connection_id=connection.pk,
        tool="delete_record",
        arguments={"record_id": 1},
        arguments_digest=digest_arguments({"record_id": 1}),
        user_id=frank.pk,
        token_id=token.pk,
        run_label=token.run_label,
        call_id=str(uuid.uuid4()),
    )
    session = "f" * 64
    fields = {
        "call_id": uuid.uuid4(),
        "username": "frank",
        "connection": "crm",
        "session": session,
        "method": "tools/call",
        "target": "add",
    }
    record = chain.append_many([{**fields, "kind": "call.request"}])[0]
    if not MaskingRule.objects.exists():
        install_defaults(MaskingRule)
    values = {
        "slug": "crm",
        "public_id": token.public_id,
        "seq": record.seq,
        "session": session,
        "approvals:pk": approval.pk,
        "approvals-api:pk": approval.pk,
        "masking:pk": MaskingRule.objects.order_by("pk").first().pk,
        "masking-api:pk": MaskingRule.objects.order_by("pk").first().pk,
    }
    return {"people": people, "values": values, "token": token, "approval": approval}


def url_of(name: str, route: str, values: dict[str, Any]) -> str:
    namespace = name.rpartition(":")[0]

    def fill(match: re.Match[str]) -> str:
        key = match["name"]
        for candidate in (f"{namespace}:{key}", key):
            if candidate in values:
                return str(values[candidate])
        raise AssertionError(f"{name}: give the permission matrix a value for <{key}>")

    return "/" + PARAMETER.sub(fill, route)


def refused(role: str, response: Any) -> bool:
    if response.status_code in (401, 403, 404, 405):
        return True
    location = response.get("Location", "") if response.status_code == 302 else ""
    return role == "anonymous" and location.startswith(("/login/", "/admin/login/"))


def request(client: Client, method: str, url: str) -> Any:
    """One request whose effects are rolled back afterwards."""
    with transaction.atomic():
        response = client.generic(method, url, json.dumps({}), "application/json")
        transaction.set_rollback(True)
    return response


def test_every_endpoint_is_in_the_table():
    names = {name for name, _ in endpoints()}
    assert names - set(ACCESS) == set(), "classify these endpoints in ACCESS"
    assert set(ACCESS) - names == set(), "these rows name endpoints that no longer exist"


@pytest.mark.parametrize("role", ROLES)
def test_no_unauthorized_success(role: str, world: dict[str, Any]):
    client = Client()
    if role != "anonymous":
        client.force_login(world["people"][role])
    saved = copy.deepcopy(client.cookies)
    problems = []
    for name, route in endpoints():
        url = url_of(name, route, world["values"])
        for method in METHODS:
            # Logging out (rolled back in the database) must not log the next request out.
            client.cookies = copy.deepcopy(saved)
            response = request(client, method, url)
            allowed = role in ACCESS[name][method]
            status = response.status_code
            if not allowed and not refused(role, response):
                problems.append(f"{method} {url} ({name}): {status} for {role}, who may not")
            if allowed and role in ANY_ROLE and status in (401, 403, 405):
                problems.append(f"{method} {url} ({name}): {status} for {role}, who may")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_other_peoples_objects_stay_as_they_were(role: str, world: dict[str, Any]):
    """Outside any savepoint: a refused write really changed nothing."""
    if role == "alice":
        return
    client = Client()
    if role != "anonymous":
        client.force_login(world["people"][role])
    token, approval = world["token"], world["approval"]
    client.post(reverse("token-revoke", args=[token.public_id]))
    client.post(f"/api/tokens/{token.public_id}/revoke")
    client.post(f"/api/approvals/{approval.pk}/deny")
    client.post("/connections/crm/toggle/")
    client.delete("/api/connections/crm")
    token.refresh_from_db()
    approval.refresh_from_db()
    assert token.revoked_at is None
    assert approval.status == ("denied" if role == "bob" else "pending")
    assert Connection.objects.get(slug="crm").enabled is True


@pytest.mark.parametrize("role", ROLES)
def test_admin_site_is_for_admins_only(role: str, world: dict[str, Any]):
    client = Client()
    if role != "anonymous":
        client.force_login(world["people"][role])
    urls = ["/admin/"] + [
        reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
        for model in admin.site._registry
    ]
    for url in urls:
        response = client.get(url)
        if role == "alice":
            assert response.status_code == 200, url
        else:
            assert response.status_code in (302, 403, 404), (url, response.status_code)
            if response.status_code == 302:
                assert "/login/" in response["Location"]
