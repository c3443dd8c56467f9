"""Bursts of connections and requests are served, not dropped or failed.

Connections opened at once (agents reconnecting after a restart, each opening its GET
stream) are all accepted: the gateway listens with a queue of 2048, not a short one (daphne's
Twisted had 50), where the kernel drops the connections that do not fit and the clients retry them
after 1, 3, 7, 15... seconds. Console requests arriving at once (here /healthz, which
queries the database) wait their turn for one of CONSOLE_MAX_CONCURRENT_REQUESTS, each
with a database connection it closes when it ends, instead of opening connections past
Postgres's max_connections."""

import asyncio
import json
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from django.db import connection

from mcpgw import serve

from .conftest import LISTEN_BACKLOG, ROOT, Server

BURST = 1000


def listen_overflows() -> int:
    """The kernel's count of connections that found a full listen queue (all sockets)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names.startswith("TcpExt:"):
            row = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(row["ListenOverflows"])
    raise AssertionError("no TcpExt counters in /proc/net/netstat")


def listen_queue_size(port: int) -> int:
    """The backlog of the socket listening on `port` (`ss` shows it as Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return int(out.split()[2])


async def health_check(port: int, began: float) -> tuple[int, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        return int(head.split()[1]), time.monotonic() - began
    finally:
        writer.close()


@pytest.mark.django_db(transaction=True)
def test_a_burst_of_connections_is_accepted_without_drops(gateway: Server) -> None:
    assert listen_queue_size(gateway.port) == LISTEN_BACKLOG

    async def burst() -> list[tuple[int, float]]:
        began = time.monotonic()
        async with asyncio.timeout(60):
            return await asyncio.gather(*(health_check(gateway.port, began) for _ in range(BURST)))

    connections_before = database_connections()
    before = listen_overflows()
    answers = asyncio.run(burst())
    assert listen_overflows() == before
    assert [status for status, _ in answers] == [200] * BURST
    # Each request closed its database connection when it ended.
    assert database_connections() <= connections_before + 1


def database_connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = ''"
        )
        return cursor.fetchone()[0]


def test_every_way_of_serving_the_gateway_sets_the_listen_queue() -> None:
    make_run = re.search(r"run python -m mcpgw.serve (.+)", (ROOT / "Makefile").read_text())
    assert make_run is not None
    dockerfile_cmd = re.search(r"^CMD (\[.+\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert dockerfile_cmd is not None
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    commands = {
        "make run": ["python", "-m", "mcpgw.serve", *shlex.split(make_run.group(1))],
        "Dockerfile": json.loads(dockerfile_cmd.group(1)),
        "docker-compose.yml": compose["services"]["web"]["command"],
    }
    for where, command in commands.items():
        # uvicorn on uvloop's event loop (mcpgw/serve.py), as the tests serve it, with the
        # launcher's listen queue: the last --backlog is the one uvicorn takes.
        assert command[:3] == ["python", "-m", "mcpgw.serve"], where
        assert last_value(serve.arguments(command[3:]), "--backlog") == str(LISTEN_BACKLOG), where


def last_value(command: list[str], option: str) -> str:
    """The value of the last `option` in `command`: the one uvicorn's command line takes."""
    return command[len(command) - command[::-1].index(option)]
