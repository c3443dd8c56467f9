"""Shared set-up for the approvals tests (no tests here): people, connections, held calls.

alice (the conftest fixture) is an admin, bob an approver, charlie has no role.
"""

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from approvals import actions
from approvals.models import Approval, digest_arguments
from gateway.actions import issue_token
from gateway.models import AgentToken, Connection


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """Imported by each approvals test module: hashing is not what these tests are about."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session")
def end_stray_connections(django_db_setup: None, django_db_blocker: Any) -> Any:
    """Used by modules whose code reaches the database from worker threads (as the data
    path does): those threads keep their connections, which would stop the test database
    from being dropped. Ended once, after the last test and before the drop."""
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


def make_user(name: str, *groups: str) -> Any:
    user = get_user_model().objects.create_user(name, f"{name}@example.com", f"pw-{name}-1")
    for group in groups:
        Group.objects.get_or_create(name=group)[0].user_set.add(user)
    return user


def make_bob() -> Any:
    return make_user("bob", "approver")


def make_charlie() -> Any:
    return make_user("charlie")


def make_connection(slug: str = "crm") -> Connection:
    return Connection.objects.create(slug=slug, name=slug, url="http://127.0.0.1:9/mcp")


def make_token(user: Any, run: str = "nightly", scopes: tuple[str, ...] = ("mcp",)) -> AgentToken:
    token, _secret = issue_token(user=user, run_label=run, scopes=list(scopes))
    return token


def api_token(user: Any) -> str:
    _token, secret = issue_token(user=user, run_label="api", scopes=["api"])
    return secret


def hold(
    connection: Connection,
    token: AgentToken,
    tool: str = "delete_customer",
    arguments: Any = None,
    **overrides: Any,
) -> Approval:
    arguments = {"customer_id": 42, "email": "[EMAIL]"} if arguments is None else arguments
    return actions.request_approval(
        connection_id=connection.pk,
        tool=tool,
        arguments=arguments,
        arguments_digest=digest_arguments(arguments),
        user_id=token.user_id,
        token_id=token.pk,
        run_label=token.run_label,
        call_id="5b0b2f4e-0000-4000-8000-000000000001",
        **overrides,
    )


def eventually(check: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until check() is truthy (and return it), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {check}")
        time.sleep(interval)
