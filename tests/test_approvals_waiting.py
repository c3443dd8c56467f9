"""A held call waits for its decision: woken through the channel layer (Redis), or by the
database check when the channel layer is gone; and it never goes through on its own."""

import asyncio
import time
from typing import Any

import pytest
import redis
from django.conf import settings

from approvals import actions, waiting
from approvals.models import Approval
from tests.conftest import free_port
from tests.test_approvals_helpers import (
    end_stray_connections,  # noqa: F401 (fixture)
    fast_passwords,  # noqa: F401 (autouse)
    hold,
    make_bob,
    make_connection,
    make_token,
    make_user,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]


@pytest.fixture
def held(alice: Any) -> tuple[Approval, Any]:
    approval = hold(make_connection(), make_token(make_user("dora")))
    return approval, make_bob()


def poll_every(settings: Any, seconds: float) -> None:
    settings.APPROVALS = {**settings.APPROVALS, "FALLBACK_POLL_SECONDS": seconds}


def redis_layer_config() -> dict[str, Any]:
    layer = settings.CHANNEL_LAYERS["default"]
    if not layer["BACKEND"].startswith("channels_redis"):
        pytest.skip("needs REDIS_URL (the Redis channel layer)")
    return layer


async def until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s")
        await asyncio.sleep(0.01)


def decide_in_thread(approval: Approval, approver: Any, approve: bool = True) -> float:
    """Decide on another thread (as another process would); returns when it committed."""
    actions.decide(approval, approve=approve, actor=approver, reason="checked")
    return time.monotonic()


async def test_decision_on_another_thread_wakes_the_waiter_through_redis(settings, held):
    config = redis_layer_config()
    approval, bob = held
    poll_every(settings, 30.0)  # a wake-up this test sees can only be the signal
    members = redis.Redis.from_url(settings.REDIS_URL)
    group_key = f"{config['CONFIG']['prefix']}:group:approval-{approval.pk}"
    waiter = asyncio.ensure_future(waiting.wait_for_decision(approval.pk, timeout=60))
    # The waiter has looked at the database and joined the group: decide now.
    await until(lambda: members.zcard(group_key) == 1)
    committed = await asyncio.to_thread(decide_in_thread, approval, bob)
    assert await asyncio.wait_for(waiter, 10) == "approved"
    latency = time.monotonic() - committed
    print(f"decision-to-wake latency through Redis: {latency * 1000:.1f} ms")
    assert latency < 1.0, f"woken {latency:.3f} s after the decision"
    # The waiter left its group.
    await until(lambda: members.zcard(group_key) == 0)


async def test_denial_wakes_the_waiter(settings, held):
    approval, bob = held
    poll_every(settings, 30.0)
    waiter = asyncio.ensure_future(waiting.wait_for_decision(approval.pk, timeout=60))
    await asyncio.sleep(0)  # let it start; a decision before it looks is seen by the look
    await asyncio.to_thread(decide_in_thread, approval, bob, False)
    assert await asyncio.wait_for(waiter, 10) == "denied"


async def test_without_the_channel_layer_the_database_check_wakes_the_waiter(settings, held):
    approval, bob = held
    # Redis "down": nothing listens on this port.
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/5"]},
        }
    }
    poll_every(settings, 0.2)
    waiter = asyncio.ensure_future(waiting.wait_for_decision(approval.pk, timeout=60))
    # Still held while nobody decided.
    done, _ = await asyncio.wait({waiter}, timeout=0.6)
    assert not done
    started = time.monotonic()
    committed = await asyncio.to_thread(decide_in_thread, approval, bob)
    # The decision itself went through the database, its signal cut short.
    assert committed - started < 5
    assert await asyncio.wait_for(waiter, 10) == "approved"
    assert time.monotonic() - committed < 1.5


async def test_with_redis_down_an_undecided_call_stays_pending(settings, held):
    approval, _bob = held
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [f"redis://127.0.0.1:{free_port()}/5"]},
        }
    }
    poll_every(settings, 0.1)
    assert await waiting.wait_for_decision(approval.pk, timeout=0.5) == "pending"
    assert (await Approval.objects.aget(pk=approval.pk)).status == "pending"


async def test_the_hold_time_running_out_answers_pending(settings, held):
    approval, _bob = held
    poll_every(settings, 0.1)
    started = time.monotonic()
    assert await waiting.wait_for_decision(approval.pk, timeout=0.3) == "pending"
    assert 0.3 <= time.monotonic() - started < 2


async def test_a_request_past_its_expiry_answers_expired(settings, held):
    approval, _bob = held
    await Approval.objects.filter(pk=approval.pk).aupdate(
        created_at=approval.created_at.replace(year=2000),
        expires_at=approval.created_at.replace(year=2001),
    )
    assert await waiting.wait_for_decision(approval.pk, timeout=5) == "expired"
    assert (await Approval.objects.aget(pk=approval.pk)).status == "expired"


async def test_an_already_decided_request_answers_at_once(settings, held):
    approval, bob = held
    await asyncio.to_thread(decide_in_thread, approval, bob)
    started = time.monotonic()
    assert await waiting.wait_for_decision(approval.pk, timeout=30) == "approved"
    assert time.monotonic() - started < 1
