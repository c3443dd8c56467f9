"""Held calls across gateway processes, with real servers: two gateways (daphne) share
Postgres and Redis; an agent's call waits on one, an approver decides through the other's
REST API. The wake-up crosses processes through the Redis channel layer, or, with Redis
gone, through the database check every APPROVALS_FALLBACK_POLL_SECONDS.

Latencies are printed (see them with `pytest -rP` or `-s`); the bounds asserted are loose.
"""

import asyncio
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from django.conf import settings
from mcp.shared.exceptions import MCPError

from approvals.models import Approval
from audit.models import AuditRecord, Kind
from tests.conftest import (
    Server,
    add_connection,
    free_port,
    issue_token,
    start_gateway,
    stop,
    wait_for_port,
)
from tests.support.clients import mcp_client
from tests.test_approvals_helpers import (
    end_stray_connections,  # noqa: F401 (fixture)
    fast_passwords,  # noqa: F401 (autouse)
    make_user,
)
from tests.test_held_calls import policy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]

# Generous: a wake-up through Redis takes milliseconds, one through the database check
# at most a poll interval (1 s where Redis is stopped).
WAKE_BOUND_SECONDS = 10.0
CONCURRENT_DECISIONS = 50
# Longer than the Redis client's default read timeout (5 s in redis-py 8), which is also
# how long the channel layer blocks on Redis for a message before asking again.
QUIET_SECONDS = 7


@dataclass
class Pair:
    """Two gateway processes sharing the test database and one Redis."""

    a: Server
    b: Server
    redis_url: str
    prefix: str

    def group_members(self, approval_id: int) -> int:
        """How many waiters listen for this request on the channel layer."""
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            return int(client.zcard(f"{self.prefix}:group:approval-{approval_id}"))
        finally:
            client.close()


def start_pair(tmp_path: Path, redis_url: str, **env: str) -> Pair:
    # A prefix of their own keeps other test runs on the same Redis from waking them.
    prefix = f"mcpgw-mp-{uuid.uuid4().hex[:8]}"
    common = {"REDIS_URL": redis_url, "CHANNEL_PREFIX": prefix, **env}
    servers = []
    for name in ("a", "b"):
        data_dir = tmp_path / name
        data_dir.mkdir(parents=True, exist_ok=True)
        servers.append(start_gateway(data_dir, **common))
    return Pair(servers[0], servers[1], redis_url, prefix)


def stop_pair(pair: Pair) -> None:
    stop(pair.a.process)
    stop(pair.b.process)


@pytest.fixture(scope="module")
def redis_pair(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    """Two gateways on the shared Redis. Their database check runs only every 30 s, so a
    call woken sooner than that was woken by the channel layer."""
    if not settings.REDIS_URL:
        pytest.skip("needs REDIS_URL (the Redis channel layer)")
    pair = start_pair(
        tmp_path_factory.mktemp("pair"),
        settings.REDIS_URL,
        APPROVALS_FALLBACK_POLL_SECONDS="30",
    )
    yield pair
    stop_pair(pair)


@dataclass
class RedisServer:
    url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """Redis dies at once, as in a crash: its clients' sockets are reset."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, so the test can stop it."""
    port = free_port()
    log = open(tmp_path / "redis.log", "wb")
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, process)
    server = RedisServer(f"redis://127.0.0.1:{port}/0", process)
    yield server
    server.kill()
    log.close()


@pytest.fixture
def pair_on_own_redis(
    own_redis: RedisServer, django_db_setup: None, tmp_path: Path
) -> Iterator[tuple[Pair, RedisServer]]:
    """Two gateways on `own_redis`, checking the database every second."""
    pair = start_pair(tmp_path, own_redis.url, APPROVALS_FALLBACK_POLL_SECONDS="1")
    yield pair, own_redis
    stop_pair(pair)


@dataclass
class Setup:
    upstream: Server
    agent_token: str
    # api-scope tokens of approvers, by username.
    approver_tokens: dict[str, str]

    def tool_calls_upstream(self) -> int:
        return sum(1 for r in self.upstream.seen() if r["rpc_method"] == "tools/call")


@pytest.fixture
def setup(alice: Any, demo_upstream: Server) -> Setup:
    """Connection `ops` holds `add`; alice's agent calls it; bob and erin approve."""
    make_user("bob", "approver")
    make_user("erin", "approver")
    add_connection("ops", demo_upstream.url)
    policy("ops", ("add", "hold"))
    return Setup(
        upstream=demo_upstream,
        agent_token=issue_token("alice", "--run", "multiprocess"),
        approver_tokens={
            name: issue_token(name, "--scope", "api", "--run", "approver-api")
            for name in ("bob", "erin")
        },
    )


async def timed_call(url: str, token: str, mode: str, arguments: dict[str, Any]) -> Any:
    """The agent: one tools/call through the official SDK client. Returns (result or the
    MCPError raised, monotonic time it arrived)."""
    async with mcp_client(url, token, mode) as client:
        try:
            result: Any = await client.call_tool("add", arguments)
        except MCPError as exc:
            result = exc
        return result, time.monotonic()


async def eventually(check: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.02)


async def pending_approval() -> int:
    return await eventually(
        lambda: Approval.objects.filter(status="pending").values_list("pk", flat=True).first(),
        "no approval request appeared",
    )


async def decide(
    http: httpx.AsyncClient, base: str, approval_id: int, verb: str, token: str, reason: str = ""
) -> httpx.Response:
    return await http.post(
        f"{base}/api/approvals/{approval_id}/{verb}",
        json={"reason": reason},
        headers={"Authorization": f"Bearer {token}"},
    )


def decision_events(approval_id: int) -> list[AuditRecord]:
    return list(
        AuditRecord.objects.filter(
            kind=Kind.EVENT,
            event__in=["approval.approved", "approval.denied"],
            details__approval_id=approval_id,
        )
    )


def report(label: str, approval_id: int, posted: float, returned: float, result_at: float) -> None:
    """Client-side times, and the server-side one from the decision's commit on one process
    to the approval's use (the woken call going upstream) on the other."""
    approval = Approval.objects.get(pk=approval_id)
    assert approval.decided_at is not None and approval.used_at is not None
    woken = (approval.used_at - approval.decided_at).total_seconds()
    print(
        f"\n{label}: result {1000 * (result_at - returned):.1f} ms after the approve POST "
        f"returned ({1000 * (result_at - posted):.1f} ms after it was sent; "
        f"the POST took {1000 * (returned - posted):.1f} ms); "
        f"decided -> used upstream {1000 * woken:.1f} ms"
    )


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_approval_on_one_process_wakes_the_call_held_on_another(
    redis_pair: Pair, setup: Setup, mode: str
) -> None:
    pair = redis_pair
    agent = asyncio.create_task(
        timed_call(f"{pair.a.url}/mcp/ops", setup.agent_token, mode, {"a": 2, "b": 3})
    )
    approval_id = await pending_approval()
    # A's waiter has read the database and listens on Redis: from here only the signal
    # (or the 30 s database check) can wake it.
    await eventually(lambda: pair.group_members(approval_id) == 1, "A never joined the group")
    assert setup.tool_calls_upstream() == 0

    async with httpx.AsyncClient(timeout=30) as http:
        posted = time.monotonic()
        response = await decide(
            http, pair.b.url, approval_id, "approve", setup.approver_tokens["bob"], "looks fine"
        )
        returned = time.monotonic()
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "approved"
    result, result_at = await asyncio.wait_for(agent, WAKE_BOUND_SECONDS + 5)

    assert not isinstance(result, MCPError), result
    assert result.structured_content == {"result": 5}
    report(f"Redis wake-up across processes ({mode})", approval_id, posted, returned, result_at)
    assert result_at - posted < WAKE_BOUND_SECONDS
    approval = Approval.objects.get(pk=approval_id)
    assert (approval.status, approval.decider, approval.reason) == ("approved", "bob", "looks fine")
    assert approval.used_at is not None
    assert setup.tool_calls_upstream() == 1
    # The waiter left its group.
    await eventually(lambda: pair.group_members(approval_id) == 0, "A stayed in the group")


async def test_call_held_past_the_redis_read_timeout_is_still_woken_by_the_signal(
    redis_pair: Pair, setup: Setup
) -> None:
    """Approvers seldom answer within seconds: the wake-up must work after a quiet spell
    longer than the Redis client's read timeout (5 s by default in redis-py 8)."""
    pair = redis_pair
    agent = asyncio.create_task(
        timed_call(f"{pair.a.url}/mcp/ops", setup.agent_token, "legacy", {"a": 6, "b": 7})
    )
    approval_id = await pending_approval()
    await eventually(lambda: pair.group_members(approval_id) == 1, "A never joined the group")
    # The approver takes a while; the call keeps waiting.
    await asyncio.sleep(QUIET_SECONDS)
    assert not agent.done()

    async with httpx.AsyncClient(timeout=30) as http:
        posted = time.monotonic()
        response = await decide(
            http, pair.b.url, approval_id, "approve", setup.approver_tokens["bob"], "took a while"
        )
        returned = time.monotonic()
    assert response.status_code == 200, response.text
    # Up to the 30 s database check, so that a late wake-up is measured, not cut short.
    result, result_at = await asyncio.wait_for(agent, 45)
    assert not isinstance(result, MCPError), result
    assert result.structured_content == {"result": 13}
    report("Redis wake-up after a quiet spell", approval_id, posted, returned, result_at)
    assert result_at - posted < WAKE_BOUND_SECONDS, (
        f"woken {result_at - posted:.1f} s after the decision: by the database check, "
        "not by the channel layer"
    )


async def test_held_calls_complete_by_the_database_check_when_redis_is_gone(
    pair_on_own_redis: tuple[Pair, RedisServer], setup: Setup
) -> None:
    pair, own_redis = pair_on_own_redis
    bob = setup.approver_tokens["bob"]

    # 1. Redis dies while the call waits on A; bob approves through B.
    agent = asyncio.create_task(
        timed_call(f"{pair.a.url}/mcp/ops", setup.agent_token, "legacy", {"a": 20, "b": 22})
    )
    approval_id = await pending_approval()
    await eventually(lambda: pair.group_members(approval_id) == 1, "A never joined the group")
    own_redis.kill()
    async with httpx.AsyncClient(timeout=30) as http:
        posted = time.monotonic()
        response = await decide(http, pair.b.url, approval_id, "approve", bob, "redis is down")
        returned = time.monotonic()
    assert response.status_code == 200, (response.status_code, response.text)
    result, result_at = await asyncio.wait_for(agent, WAKE_BOUND_SECONDS + 5)
    assert not isinstance(result, MCPError), result
    assert result.structured_content == {"result": 42}
    report(
        "database fallback, Redis stopped during the wait", approval_id, posted, returned, result_at
    )
    assert result_at - posted < WAKE_BOUND_SECONDS
    assert setup.tool_calls_upstream() == 1

    # 2. With Redis still down, a new call is held on B (not let through) and decided on A.
    agent = asyncio.create_task(
        timed_call(f"{pair.b.url}/mcp/ops", setup.agent_token, "2026-07-28", {"a": 1, "b": 2})
    )
    approval_id = await pending_approval()
    assert setup.tool_calls_upstream() == 1  # held, not let through
    async with httpx.AsyncClient(timeout=30) as http:
        posted = time.monotonic()
        response = await decide(http, pair.a.url, approval_id, "approve", bob, "still down")
        returned = time.monotonic()
    assert response.status_code == 200, (response.status_code, response.text)
    result, result_at = await asyncio.wait_for(agent, WAKE_BOUND_SECONDS + 5)
    assert not isinstance(result, MCPError), result
    assert result.structured_content == {"result": 3}
    report(
        "database fallback, call held after Redis stopped", approval_id, posted, returned, result_at
    )
    assert result_at - posted < WAKE_BOUND_SECONDS
    assert setup.tool_calls_upstream() == 2
    approvals = Approval.objects.order_by("pk")
    assert [(a.status, a.decider, a.used_at is not None) for a in approvals] == [
        ("approved", "bob", True),
        ("approved", "bob", True),
    ]


async def test_fifty_concurrent_decisions_on_one_call_leave_exactly_one(
    redis_pair: Pair, setup: Setup
) -> None:
    pair = redis_pair
    agent = asyncio.create_task(
        timed_call(f"{pair.a.url}/mcp/ops", setup.agent_token, "legacy", {"a": 4, "b": 5})
    )
    approval_id = await pending_approval()
    tokens = list(setup.approver_tokens.items())
    # Approve and deny, by bob and erin, through A and B, all at once.
    attempts = [
        (
            (pair.a, pair.b)[i % 2].url,
            ("approve", "deny")[(i // 2) % 2],
            tokens[(i // 4) % len(tokens)],
        )
        for i in range(CONCURRENT_DECISIONS)
    ]
    limits = httpx.Limits(max_connections=CONCURRENT_DECISIONS)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        responses = await asyncio.gather(
            *(
                decide(http, base, approval_id, verb, token, f"{verb} by {name}")
                for base, verb, (name, token) in attempts
            )
        )
    statuses = Counter(r.status_code for r in responses)
    print(f"\n{CONCURRENT_DECISIONS} concurrent decisions: HTTP statuses {dict(statuses)}")
    assert statuses == {200: 1, 409: CONCURRENT_DECISIONS - 1}, [
        (r.status_code, r.text[:200]) for r in responses if r.status_code != 409
    ]
    ((winner, (base, verb, (name, _token))),) = [
        (r, attempt) for r, attempt in zip(responses, attempts, strict=True) if r.is_success
    ]
    status = "approved" if verb == "approve" else "denied"
    print(f"the one that counted: {verb} by {name} through {'A' if base == pair.a.url else 'B'}")
    assert (winner.json()["status"], winner.json()["decided_by"]) == (status, name)
    for loser in responses:
        if loser is not winner:
            assert f"already {status} by {name}" in loser.json()["detail"], loser.text

    result, _ = await asyncio.wait_for(agent, WAKE_BOUND_SECONDS + 5)
    approval = Approval.objects.get(pk=approval_id)
    assert (approval.status, approval.decider, approval.reason) == (
        status,
        name,
        f"{verb} by {name}",
    )
    assert len(decision_events(approval_id)) == 1
    outcomes = await eventually(
        lambda: list(AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, target="add")),
        "the call's outcome was not recorded",
    )
    if status == "approved":
        assert not isinstance(result, MCPError), result
        assert result.structured_content == {"result": 9}
        assert setup.tool_calls_upstream() == 1
        assert [o.outcome for o in outcomes] == ["ok"]
    else:
        assert isinstance(result, MCPError)
        assert f"Denied by {name}: deny by {name}" in str(result)
        assert setup.tool_calls_upstream() == 0
        assert [o.outcome for o in outcomes] == ["denied"]
