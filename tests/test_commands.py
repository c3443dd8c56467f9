"""The operator commands: add_connection, issue_token, ensure_admin."""

import hashlib
import subprocess
import sys
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection as db

from gateway.models import AgentToken, Connection
from tests.conftest import ROOT

pytestmark = pytest.mark.django_db


def run(name: str, *args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(name, *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_add_connection_creates_then_updates(alice):
    run("add_connection", "--slug", "crm", "--url", "http://127.0.0.1:9000/mcp")
    run("add_connection", "--slug", "crm", "--url", "http://127.0.0.1:9001/mcp", "--name", "CRM")
    connection = Connection.objects.get(slug="crm")
    assert (connection.url, connection.name) == ("http://127.0.0.1:9001/mcp", "CRM")


def test_credentials_are_encrypted_at_rest(alice):
    run(
        "add_connection",
        "--slug",
        "crm",
        "--url",
        "http://127.0.0.1:9000/mcp",
        "--header",
        "Authorization: Bearer canary-credential-42",
    )
    connection = Connection.objects.get(slug="crm")
    assert connection.header_names == ["Authorization"]
    assert connection.get_headers() == {"Authorization": "Bearer canary-credential-42"}
    with db.cursor() as cursor:
        cursor.execute("SELECT * FROM gateway_connection")
        dump = repr(cursor.fetchall())
    assert "canary-credential-42" not in dump


def test_updating_without_headers_keeps_the_credentials(alice):
    run(
        "add_connection",
        "--slug",
        "crm",
        "--url",
        "http://127.0.0.1:9000/mcp",
        "--header",
        "X-Key: k1",
    )
    run("add_connection", "--slug", "crm", "--url", "http://127.0.0.1:9000/mcp")
    assert Connection.objects.get(slug="crm").get_headers() == {"X-Key": "k1"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slug", "Bad Slug", "--url", "http://127.0.0.1:9000/mcp"], "slug"),
        (["--slug", "ok", "--url", "not a url"], "url"),
        (
            ["--slug", "ok", "--url", "http://127.0.0.1:9000/mcp", "--header", "no-colon"],
            "Name: value",
        ),
    ],
)
def test_add_connection_refuses_bad_input(alice, args, message):
    with pytest.raises(CommandError, match=message):
        run("add_connection", *args)
    assert not Connection.objects.exists()


def test_issue_token_prints_the_token_alone_and_stores_only_its_digest(alice):
    run("add_connection", "--slug", "crm", "--url", "http://127.0.0.1:9000/mcp")
    out, err = run(
        "issue_token",
        "--user",
        "alice",
        "--connection",
        "crm",
        "--ttl",
        "3600",
        "--run",
        "nightly-42",
    )
    token = out.strip()
    assert out == token + "\n"
    assert token.startswith("mgw_")
    stored = AgentToken.objects.get()
    assert stored.digest == hashlib.sha256(token.encode()).hexdigest()
    assert stored.run_label == "nightly-42"
    assert stored.connection.slug == "crm"
    assert stored.expires_at is not None
    with db.cursor() as cursor:
        cursor.execute("SELECT * FROM gateway_agenttoken")
        assert token not in repr(cursor.fetchall())
    assert token not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--user", "nobody"], "no active user"),
        (["--user", "alice", "--connection", "nope"], "no connection"),
        (["--user", "alice", "--ttl", "-5"], "positive"),
    ],
)
def test_issue_token_refuses_bad_input(alice, args, message):
    with pytest.raises(CommandError, match=message):
        run("issue_token", *args)


def test_ensure_admin_prints_a_one_time_password_once(transactional_db):
    out, _ = run("ensure_admin")
    password = out.split("password:")[1].split()[0]
    admin = get_user_model().objects.get(username="admin")
    assert admin.is_superuser and admin.check_password(password)
    again, _ = run("ensure_admin")
    assert again == ""


def test_commands_run_from_the_shell(tmp_path):
    """The commands as an operator runs them, in the embedded default (SQLite)."""
    env = {"DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v0"], env=env, check=True, cwd=ROOT)
    first = subprocess.run(
        [*manage, "ensure_admin"], env=env, check=True, cwd=ROOT, capture_output=True, text=True
    )
    assert "password:" in first.stdout
    subprocess.run(
        [*manage, "add_connection", "--slug", "demo", "--url", "http://127.0.0.1:9/mcp"],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    issued = subprocess.run(
        [*manage, "issue_token", "--user", "admin"],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert issued.stdout.count("\n") == 1 and issued.stdout.startswith("mgw_")
    assert (tmp_path / "encryption.key").stat().st_mode & 0o077 == 0
