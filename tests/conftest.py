"""Shared fixtures: real upstream MCP servers and a real gateway process (uvicorn on uvloop,
started as `make run` starts it: `python -m mcpgw.serve`).

The gateway runs as its own process against the test database, so tests that talk to it
use `transactional_db`: what they write is committed and visible to the gateway.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command

# Async tests set up data with the ordinary (sync) ORM and management commands.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# The listen queue every way of serving the gateway has (`mcpgw.serve`'s default, which
# Makefile, Dockerfile and docker-compose.yml keep): a short one drops connections opened
# in a burst.
LISTEN_BACKLOG = 2048


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on {port} within {timeout} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]

    def seen(self) -> list[dict]:
        return httpx.get(f"http://127.0.0.1:{self.port}/_seen").json()


def start_demo(*flags: str) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(FIXTURES / "demo_server.py"), "--port", str(port), *flags]
    )
    wait_for_port(port, process)
    return Server(f"http://127.0.0.1:{port}/mcp", port, process)


@pytest.fixture
def demo_upstream() -> Iterator[Server]:
    """A fresh upstream per test, so its request log belongs to that test."""
    server = start_demo()
    yield server
    stop(server.process)


@pytest.fixture(scope="session")
def shared_upstream() -> Iterator[Server]:
    """One upstream for the tests that do not look at what it received."""
    server = start_demo()
    yield server
    stop(server.process)


@pytest.fixture
def legacy_upstream() -> Iterator[Server]:
    server = start_demo("--legacy-only")
    yield server
    stop(server.process)


@pytest.fixture
def json_upstream() -> Iterator[Server]:
    server = start_demo("--json")
    yield server
    stop(server.process)


NODE_MODULES = ROOT / ".tools" / "node" / "node_modules"
NODE = NODE_MODULES / "node" / "bin" / "node"
# The reference server from npm (@modelcontextprotocol/server-everything).
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"


def start_everything(transport: str, path: str) -> Server:
    if not NODE.exists() or not EVERYTHING.exists():
        pytest.fail("Node tools missing: run `bash tests/support/install_node_tools.sh`")
    port = free_port()
    process = subprocess.Popen(
        [
            str(NODE),
            "--require",
            str(ROOT / "tests" / "support" / "loopback.cjs"),
            str(EVERYTHING),
            transport,
        ],
        env={**os.environ, "PORT": str(port)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    return Server(f"http://127.0.0.1:{port}{path}", port, process)


@pytest.fixture(scope="module")
def everything() -> Iterator[Server]:
    server = start_everything("streamableHttp", "/mcp")
    yield server
    stop(server.process)


@pytest.fixture(scope="module")
def everything_sse() -> Iterator[Server]:
    server = start_everything("sse", "/sse")
    yield server
    stop(server.process)


def _database_url() -> str:
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return ""
    user = db.get("USER") or "postgres"
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return (
        f"postgres://{user}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    )


def start_gateway(tmp_path: Path, *serve_args: str, **env_overrides: str) -> Server:
    """A gateway process started as `make run` starts it, with `serve_args` added to its
    command line."""
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "SECRET_KEY": settings.SECRET_KEY,
        "GATEWAY_ENCRYPTION_KEY": ",".join(settings.GATEWAY_ENCRYPTION_KEYS),
        "DATA_DIR": str(tmp_path),
        "GATEWAY_UPSTREAM_TIMEOUT": "5",
        "GATEWAY_UPSTREAM_CONNECT_TIMEOUT": "2",
        "GATEWAY_MAX_BODY_BYTES": "65536",
        **env_overrides,
    }
    if not env["DATABASE_URL"]:
        raise RuntimeError("gateway process tests need Postgres (set DATABASE_URL)")
    log = open(tmp_path / f"gateway-{port}.log", "wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcpgw.serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *serve_args,
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, process)
    return Server(f"http://127.0.0.1:{port}", port, process)


@pytest.fixture(scope="session")
def gateway_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("gateway")


@pytest.fixture(scope="session")
def gateway(
    django_db_setup: None, django_db_blocker: object, gateway_data_dir: Path
) -> Iterator[Server]:
    """One gateway process for the whole run, on the test database."""
    server = start_gateway(gateway_data_dir)
    yield server
    stop(server.process)


@pytest.fixture(scope="session", autouse=True)
def _end_leftover_connections(django_db_setup: None, django_db_blocker: object) -> Iterator[None]:
    """Async tests touch the ORM from their own task context, whose connections Django
    never closes; end them (after every gateway process stopped) so that the test
    database can be dropped."""
    yield
    from django.db import DatabaseError, connection

    if connection.vendor != "postgresql" or not connection.settings_dict["NAME"].startswith(
        "test_"
    ):
        return
    try:
        with django_db_blocker.unblock(), connection.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
    except DatabaseError:
        pass


@pytest.fixture(scope="session", autouse=True)
def _audit_keys_outside_the_checkout(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Checkpoints and the signing key of the test process go to a temporary directory,
    never into the checkout's var/."""
    from audit import checkpoints

    directory = tmp_path_factory.mktemp("audit")
    settings.AUDIT["CHECKPOINT_DIR"] = str(directory / "checkpoints")
    settings.AUDIT["SIGNING_KEY_FILE"] = str(directory / "signing.pem")
    checkpoints.signing_key.cache_clear()


@pytest.fixture(autouse=True)
def _fresh_cache(settings: object, request: pytest.FixtureRequest) -> None:
    """Each test gets its own cache, so login rate limits never leak between tests."""
    settings.CACHES = {  # type: ignore[attr-defined]
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": request.node.nodeid,
        }
    }


@pytest.fixture(autouse=True)
def _allow_flushing_the_audit_trail(request: pytest.FixtureRequest) -> Iterator[None]:
    """Transactional tests end with a TRUNCATE of every table, which the audit trail's
    triggers refuse unless the session says it is archiving."""
    marker = request.node.get_closest_marker("django_db")
    transactional = "transactional_db" in request.fixturenames or bool(
        marker and marker.kwargs.get("transaction")
    )
    if transactional:
        # Requested here so that this fixture's teardown runs before the flush.
        request.getfixturevalue("transactional_db")
    yield
    if transactional:
        from django.db import DatabaseError, connection

        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SET mcpgw.audit_archive = 'on'")
            # A gateway process may still be writing (an outcome record, a session's
            # last touch) while the tables are emptied; Postgres then picks the flush as
            # a deadlock victim. Empty them here, retrying, before Django's own flush.
            from django.core.management import call_command

            for attempt in range(5):
                try:
                    call_command("flush", verbosity=0, interactive=False, reset_sequences=False)
                    break
                except (DatabaseError, CommandError):
                    if attempt == 4:
                        raise
                    time.sleep(0.5)


@contextlib.contextmanager
def database_default(setting: str, value: str) -> Iterator[None]:
    """The test database's default for a setting, as a DBA may set it with ALTER DATABASE
    (or ALTER ROLE): every connection opened meanwhile starts with it unless it sets its
    own. (Connections that other threads opened before keep what they started with.)"""
    import psycopg
    from django.db import connection, connections
    from psycopg import sql

    from mcpgw import pg

    if connection.vendor != "postgresql":
        pytest.skip("a database default of Postgres's")
    name = sql.Identifier(setting)
    database = sql.Identifier(connection.settings_dict["NAME"])

    def alter(clause: sql.Composable) -> None:
        with psycopg.connect(pg.conninfo("test-admin"), autocommit=True) as admin:
            admin.execute(sql.SQL("ALTER DATABASE {} {}").format(database, clause))

    alter(sql.SQL("SET {} = {}").format(name, sql.Literal(value)))
    try:
        connections.close_all()
        with psycopg.connect(pg.conninfo("test-probe"), autocommit=True) as probe:
            shown = probe.execute(sql.SQL("SHOW {}").format(name)).fetchone()
        assert shown == (value,), "the database's default did not take"
        yield
    finally:
        alter(sql.SQL("RESET {}").format(name))
        connections.close_all()


@pytest.fixture(params=["server default", "repeatable read", "serializable"])
def default_isolation(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test database's default transaction isolation level (Postgres's own default is
    READ COMMITTED)."""
    level = request.param
    if level == "server default":
        yield level
        return
    with database_default("default_transaction_isolation", level):
        yield level


@pytest.fixture
def masking_defaults(db: None) -> None:
    """The default masking rules (a migration creates them; transactional tests flush them)."""
    from masking.defaults import install_defaults
    from masking.models import MaskingRule
    from masking.service import invalidate

    install_defaults(MaskingRule)
    invalidate()


@pytest.fixture
def alice(transactional_db: None):  # type: ignore[no-untyped-def]
    """alice: an admin."""
    return get_user_model().objects.create_superuser("alice", "alice@example.com", "pw-alice-1")


def person(name: str, *groups: str, admin: bool = False) -> Any:
    """A user (password pw-<name>-1) in the given groups, or a superuser."""
    users = get_user_model().objects
    if admin:
        return users.create_superuser(name, f"{name}@example.com", f"pw-{name}-1")
    user = users.create_user(name, f"{name}@example.com", f"pw-{name}-1")
    for group in groups:
        user.groups.add(Group.objects.get_or_create(name=group)[0])
    return user


def add_connection(slug: str, url: str, *headers: str) -> None:
    args = ["--slug", slug, "--url", url]
    for header in headers:
        args += ["--header", header]
    call_command("add_connection", *args)


def issue_token(user: str, *args: str) -> str:
    from io import StringIO

    out = StringIO()
    call_command("issue_token", "--user", user, *args, stdout=out, stderr=StringIO())
    return out.getvalue().strip()
