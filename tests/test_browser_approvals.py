"""The live approval queue in a real browser: Debian's Chromium driven by Playwright.

An approver logs in through the login form and keeps /approvals/ open; an agent's held
call appears there without a reload; the approver approves it, the agent gets its result,
and a second approver's open page drops the row. Screenshots go to test-artifacts/screenshots/.
"""

import asyncio
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth.models import Group, User
from django.test import Client
from playwright.async_api import Browser, Page, async_playwright, expect

from approvals.models import Approval
from tests.conftest import ROOT, Server, add_connection, issue_token
from tests.support.clients import mcp_client
from tests.test_approvals_helpers import end_stray_connections  # noqa: F401 (fixture)
from tests.test_held_calls import policy

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]

# Playwright's own browser download does not work here: Debian's package does.
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
# Auto-waiting limit for each expectation; a held call shows up in well under a second.
EXPECT_TIMEOUT_MS = 15_000
# Longer than the Redis client's default read timeout (5 s in redis-py 8), which is also
# how long the channel layer blocks on Redis for a message before asking again.
IDLE_SECONDS = 7
# Counts the page's WebSocket connections: a queue that stays live opens one.
COUNT_SOCKETS = """
window.socketsOpened = 0;
const PageWebSocket = window.WebSocket;
window.WebSocket = class extends PageWebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener("open", () => { window.socketsOpened += 1; });
  }
};
"""


def approver(name: str) -> User:
    # The gateway process checks this password, with its own (default) hashers.
    user = User.objects.create_user(name, f"{name}@example.com", f"pw-{name}-1")
    user.groups.add(Group.objects.get_or_create(name="approver")[0])
    return user


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set CHROMIUM)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def held_add(alice: User, shared_upstream: Server) -> str:
    """Connection `ops` holds `add`; returns alice's agent token."""
    add_connection("ops", shared_upstream.url)
    policy("ops", ("add", "hold"))
    return issue_token("alice", "--run", "browser-run")


async def new_page(browser: Browser) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    await context.add_init_script(COUNT_SOCKETS)
    return await context.new_page()


async def queue_page_of(browser: Browser, gateway: Server, name: str) -> Page:
    """An approver who logs in through the login form and lands on the live queue."""
    page = await new_page(browser)
    await page.goto(f"{gateway.url}/login/?next=/approvals/")
    await page.get_by_label("Username").fill(name)
    await page.get_by_label("Password").fill(f"pw-{name}-1")
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{gateway.url}/approvals/", timeout=EXPECT_TIMEOUT_MS)
    return await until_live(page)


async def queue_page_logged_in(browser: Browser, gateway: Server, user: User) -> Page:
    """An approver already logged in (a session made here): the queue opens at once."""
    client = Client()
    client.force_login(user)
    page = await new_page(browser)
    await page.context.add_cookies(
        [
            {
                "name": settings.SESSION_COOKIE_NAME,
                "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                "url": gateway.url,
            }
        ]
    )
    await page.goto(f"{gateway.url}/approvals/")
    return await until_live(page)


async def until_live(page: Page) -> Page:
    await expect(
        page.get_by_role("heading", name="Held calls waiting for a decision")
    ).to_be_visible()
    # Only once the socket is up can the page hear of requests made from now on.
    await expect(page.locator("#approvals-live")).to_have_text("live", timeout=EXPECT_TIMEOUT_MS)
    # Survives only as long as the page is not reloaded.
    await page.evaluate("window.loadedOnce = true")
    return page


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def start_agent(
    gateway: Server, token: str, go: asyncio.Event | None = None
) -> "asyncio.Task[Any]":
    """The agent connects at once and makes its held call when `go` is set."""

    async def agent() -> Any:
        async with mcp_client(f"{gateway.url}/mcp/ops", token, "auto") as client:
            if go is not None:
                await go.wait()
            return await client.call_tool("add", {"a": 2, "b": 3})

    return asyncio.create_task(agent())


async def expect_arrived_live(page: Page) -> Any:
    """The held call's row, put on the open page by its script as the request arrived
    over the socket: no reload, no reconnect-and-refresh."""
    row = page.locator(".approval-row")
    await expect(row).to_have_count(1)
    await expect(row).to_be_visible()
    await expect(row).to_have_class(re.compile(r"\barrived\b"))
    assert await page.evaluate("window.loadedOnce") is True
    opened = await page.evaluate("window.socketsOpened")
    assert opened == 1, f"the queue's socket was dropped and reopened ({opened} opens)"
    await expect(page.get_by_text("Nothing is waiting.")).to_be_hidden()
    return row


async def approve(page: Page, row: Any, agent: "asyncio.Task[Any]", reason: str) -> Any:
    """Click Approve on the row; returns the agent's result."""
    await row.get_by_label("Reason (optional)").fill(reason)
    await row.get_by_role("button", name="Approve").click()
    return await asyncio.wait_for(agent, EXPECT_TIMEOUT_MS / 1000)


async def test_approver_sees_a_held_call_arrive_live_and_approves_it(
    gateway: Server, held_add: str, browser: Browser
) -> None:
    approver("bob")
    bob = await queue_page_of(browser, gateway, "bob")
    await expect(bob.get_by_text("Nothing is waiting.")).to_be_visible()
    await screenshot(bob, "approvals-queue-empty")
    go = asyncio.Event()
    agent = start_agent(gateway, held_add, go)
    try:
        # A second approver watching the same queue, logged in without the (slow) form so
        # that neither page sits quiet for long: test_a_queue_page_left_open_stays_live
        # is about that.
        erin = await queue_page_logged_in(browser, gateway, approver("erin"))
        go.set()
        row = await expect_arrived_live(bob)
        await expect(row).to_contain_text("alice")
        await expect(row).to_contain_text("browser-run")
        await expect(row).to_contain_text("add")
        await expect(row).to_contain_text("agent is waiting")
        await expect(row.locator("pre")).to_contain_text('"a": 2')
        await expect_arrived_live(erin)
        approval = await asyncio.to_thread(lambda: Approval.objects.get(status="pending"))
        await expect(row).to_have_id(f"approval-{approval.pk}")
        await screenshot(bob, "approvals-queue-pending")

        result = await approve(bob, row, agent, "checked in the browser")
    finally:
        agent.cancel()
    assert result.structured_content == {"result": 5}

    # bob's page came back from his decision with a confirmation and an empty queue.
    await expect(bob.get_by_text(f"Request {approval.pk} (add) approved.")).to_be_visible()
    await expect(bob.locator(".approval-row")).to_have_count(0)
    await expect(bob.get_by_text("Nothing is waiting.")).to_be_visible()
    await screenshot(bob, "approvals-queue-after")
    # erin's open page heard of it, and dropped the row, without a reload.
    await expect(erin.locator("#approvals-note")).to_have_text(
        f"Request {approval.pk} (add) approved by bob."
    )
    await expect(erin.locator(".approval-row")).to_have_count(0)
    assert await erin.evaluate("window.loadedOnce") is True
    await screenshot(erin, "approvals-queue-after-seen-by-another-approver")

    decided = await asyncio.to_thread(lambda: Approval.objects.get(pk=approval.pk))
    assert (decided.status, decided.decider, decided.reason) == (
        "approved",
        "bob",
        "checked in the browser",
    )
    assert decided.used_at is not None


async def test_a_queue_page_left_open_stays_live(
    gateway: Server, held_add: str, browser: Browser
) -> None:
    approver("bob")
    bob = await queue_page_of(browser, gateway, "bob")
    # Nothing happens for a while, as on an approver's screen most of the day.
    await bob.wait_for_timeout(IDLE_SECONDS * 1000)
    await expect(bob.locator("#approvals-live")).to_have_text("live")

    agent = start_agent(gateway, held_add)
    try:
        row = await expect_arrived_live(bob)
        result = await approve(bob, row, agent, "")
    finally:
        agent.cancel()
    assert result.structured_content == {"result": 5}
