"""The console in a real browser (Debian's Chromium driven by Playwright), end to end.

An admin logs in through a real OpenID Connect provider; registers an MCP connection,
tests it and holds one of its tools; issues a run token that the official SDK client then
uses through the gateway; and finds those calls in the audit browser and its CSV export.
Screenshots of the main pages go to test-artifacts/screenshots/ (console-*.png).
"""

import asyncio
import csv
import io
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import oidc_provider_mock
import pytest
from django.contrib.auth import get_user_model
from playwright.async_api import Browser, Page, async_playwright, expect

from approvals.models import Action
from audit.models import AuditRecord
from console.roles import user_roles
from gateway.models import AgentToken, Connection
from tests.conftest import Server, add_connection, start_gateway, stop
from tests.support.clients import mcp_client
from tests.test_approvals_helpers import end_stray_connections  # noqa: F401 (fixture)
from tests.test_browser_approvals import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("end_stray_connections"),
]

EXPECT_TIMEOUT_MS = 15_000
PROVIDER_NAME = "Example SSO"
ROLE_MAP = "admin=gw-admins,approver=gw-approvers,auditor=gw-auditors,viewer=gw-viewers"


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


@pytest.fixture(scope="module")
def provider_url() -> Iterator[str]:
    """A real OpenID Connect provider, in a thread of this process."""
    with oidc_provider_mock.run_server_in_thread(require_nonce=True) as server:
        yield f"http://127.0.0.1:{server.server_port}"


@pytest.fixture(scope="module")
def oidc_gateway(
    django_db_setup: None,
    django_db_blocker: object,
    tmp_path_factory: pytest.TempPathFactory,
    provider_url: str,
) -> Iterator[Server]:
    """A gateway process whose console logs people in through that provider."""
    server = start_gateway(
        tmp_path_factory.mktemp("oidc-console"),
        OIDC_DISCOVERY_URL=provider_url,
        OIDC_RP_CLIENT_ID="mcp-gateway",
        OIDC_RP_CLIENT_SECRET="client-secret",
        OIDC_ROLE_MAP=ROLE_MAP,
        OIDC_PROVIDER_NAME=PROVIDER_NAME,
    )
    yield server
    stop(server.process)


async def new_page(browser: Browser, **context_options: object) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 800}, **context_options)
    context.set_default_timeout(EXPECT_TIMEOUT_MS)
    return await context.new_page()


async def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"console-{name}.png"), full_page=True)


async def log_in_with_password(
    browser: Browser, gateway: Server, **context_options: object
) -> Page:
    """alice (an admin) logs in through the console's login form."""
    page = await new_page(browser, **context_options)
    await page.goto(f"{gateway.url}/login/")
    await page.get_by_label("Username").fill("alice")
    await page.get_by_label("Password").fill("pw-alice-1")
    await page.get_by_role("button", name="Log in").click()
    await expect(page).to_have_url(f"{gateway.url}/")
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    return page


async def issue_token_in_ui(page: Page, gateway: Server, slug: str, run: str) -> str:
    """Issues a token on the Tokens page and reads its secret there, the one time shown."""
    await page.goto(f"{gateway.url}/tokens/")
    await expect(page.get_by_role("heading", name="Issue a run token")).to_be_visible()
    await page.get_by_label("Run label").fill(run)
    await page.get_by_label("Connection", exact=True).select_option(slug)
    await page.get_by_label("Expires after").select_option("3600")
    await expect(page.get_by_label("mcp: call tools through the gateway")).to_be_checked()
    await page.get_by_role("button", name="Issue token").click()
    issued = page.locator("#issued-token")
    await expect(issued.get_by_role("heading", name="Token issued: copy it now")).to_be_visible()
    await expect(issued).to_contain_text(f"run “{run}”")
    await expect(issued).to_contain_text(f"only {slug}")
    secret = (await page.locator("#new-token").inner_text()).strip()
    assert secret and " " not in secret
    # The snippets carry this connection's agent URL and the secret.
    await expect(page.locator("#snippet-json")).to_contain_text(f"/mcp/{slug}")
    await expect(page.locator("#snippet-json")).to_contain_text(secret)
    return secret


async def agent_calls(gateway: Server, slug: str, token: str) -> list[str]:
    """The official SDK client through the gateway: lists tools and calls weather."""
    async with mcp_client(f"{gateway.url}/mcp/{slug}", token, "auto") as client:
        listed = await client.list_tools()
        names = [tool.name for tool in listed.tools]
        result = await client.call_tool("weather", {"city": "Lisbon"})
        assert not result.is_error, result
        assert result.structured_content == {"city": "Lisbon", "temp_c": 21.5}
        result = await client.call_tool("weather", {"city": "Oslo"})
        assert result.structured_content == {"city": "Oslo", "temp_c": 21.5}
    return names


def audited(**filters: object) -> list[AuditRecord]:
    """Records the gateway wrote, waiting (briefly) for its writer to catch up."""
    deadline = time.monotonic() + 10
    while True:
        found = list(AuditRecord.objects.filter(**filters).order_by("seq"))
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


async def test_admin_logs_in_through_the_identity_provider(
    oidc_gateway: Server, provider_url: str, browser: Browser
) -> None:
    email = "dana@example.com"
    httpx.put(
        f"{provider_url}/users/{quote(email)}",
        json={"email": email, "groups": ["gw-admins", "unrelated"], "given_name": "Dana"},
    ).raise_for_status()

    page = await new_page(browser)
    await page.goto(f"{oidc_gateway.url}/")
    await expect(page).to_have_url(f"{oidc_gateway.url}/login/?next=/")
    sso = page.get_by_role("link", name=f"Log in with {PROVIDER_NAME}")
    await expect(sso).to_be_visible()
    await expect(page.get_by_text("Or with a local account (break-glass):")).to_be_visible()
    await screenshot(page, "login")

    await sso.click()
    # The provider's own login page: choose the identity whose claims were set above.
    await expect(page.get_by_role("heading", name="Authorize Client")).to_be_visible()
    assert page.url.startswith(f"{provider_url}/")
    await expect(page.locator("table.request-details")).to_contain_text("mcp-gateway")
    await page.get_by_label("Subject").fill(email)
    await screenshot(page, "oidc-provider-login")
    await page.get_by_role("button", name="Authorize", exact=True).click()

    # Back at the console, logged in, on the dashboard, as an admin.
    await expect(page).to_have_url(f"{oidc_gateway.url}/")
    await expect(page.get_by_role("heading", name="Dashboard")).to_be_visible()
    await expect(page.locator(".topbar .who")).to_have_text(email)
    links = page.locator(".page-links")
    await expect(links.get_by_role("link", name="Approvals")).to_be_visible()
    await expect(links.get_by_role("link", name="Audit trail")).to_be_visible()
    # Only admins may register connections.
    await expect(page.get_by_role("link", name="Register the first MCP server")).to_be_visible()
    await expect(page.locator("#tile-calls")).to_be_visible()  # traffic: the audit trail
    await screenshot(page, "dashboard-oidc-admin")

    user = await asyncio.to_thread(get_user_model().objects.get, username=email)
    assert user.email == email and not user.has_usable_password()
    assert await asyncio.to_thread(user_roles, user) == {"admin"}
    # The admin role works beyond the dashboard: the users page is for admins only.
    await page.goto(f"{oidc_gateway.url}/users/")
    await expect(page.get_by_text(email).first).to_be_visible()
    await expect(page.get_by_text("IdP group gw-admins")).to_be_visible()


async def test_admin_registers_tests_and_sets_the_policy_of_a_connection(
    gateway: Server, alice: object, shared_upstream: Server, browser: Browser
) -> None:
    page = await log_in_with_password(browser, gateway)
    await page.get_by_role("link", name="Register the first MCP server").click()
    await expect(page.get_by_role("heading", name="Add a connection")).to_be_visible()
    await page.get_by_label("Slug", exact=True).fill("demo")
    await page.get_by_label("Name", exact=True).fill("Demo upstream")
    await page.get_by_label("URL", exact=True).fill(shared_upstream.url)
    await screenshot(page, "connection-form")
    await page.get_by_role("button", name="Add connection").click()

    await expect(page).to_have_url(f"{gateway.url}/connections/demo/edit/")
    await expect(page.get_by_text("Created connection demo.")).to_be_visible()
    await page.get_by_role("button", name="Test connection").click()
    result = page.locator("#test-result-demo")
    await expect(result.get_by_role("heading", name="✓ demo answered")).to_be_visible()
    for name in ("add", "weather", "delete_record"):
        await expect(result.locator(f'tr.test-tool[data-tool="{name}"]')).to_be_visible()
    await expect(result.locator('tr[data-tool="delete_record"]')).to_contain_text("destructive")
    await screenshot(page, "connection-test")

    await result.get_by_role("link", name="Set their policy").click()
    await expect(page.get_by_role("heading", name="Policy of demo")).to_be_visible()
    await page.locator('input[name="rule-0-tool"]').fill("add")
    await page.locator('select[name="rule-0-action"]').select_option(Action.HOLD.value)
    await page.get_by_role("button", name="Save policy").click()

    await expect(page.get_by_role("heading", name="Policy of demo")).to_be_visible()
    await expect(page.locator('input[name="rule-0-tool"]')).to_have_value("add")
    await expect(page.locator('select[name="rule-0-action"]')).to_have_value("hold")
    await screenshot(page, "policy")

    connection = await asyncio.to_thread(Connection.objects.get, slug="demo")
    assert connection.url == shared_upstream.url and connection.enabled
    rules = await asyncio.to_thread(
        lambda: list(connection.policy_rules.values_list("tool", "action"))
    )
    assert rules == [("add", "hold")]


async def test_token_issued_in_the_ui_works_with_the_sdk_client(
    gateway: Server, alice: object, shared_upstream: Server, browser: Browser
) -> None:
    add_connection("demo", shared_upstream.url)
    page = await log_in_with_password(browser, gateway)
    await page.get_by_role("link", name="Tokens").first.click()
    secret = await issue_token_in_ui(page, gateway, "demo", "browser-run")
    await screenshot(page, "token-issued")

    names = await agent_calls(gateway, "demo", secret)
    assert {"add", "weather"} <= set(names)

    # Shown once: the page reloaded shows only the token's public part, now used.
    await page.goto(f"{gateway.url}/tokens/")
    await expect(page.locator("#issued-token")).to_have_count(0)
    assert secret not in await page.content()
    token = await asyncio.to_thread(AgentToken.objects.get, run_label="browser-run")
    row = page.locator(f"#token-{token.public_id}")
    await expect(row).to_contain_text("browser-run")
    await expect(row).to_contain_text("active")
    await expect(row.locator('td[data-label="Last used"]')).not_to_have_text("never")


async def test_audit_browser_filters_and_exports_the_calls_as_csv(
    gateway: Server, alice: object, shared_upstream: Server, browser: Browser
) -> None:
    add_connection("demo", shared_upstream.url)
    page = await log_in_with_password(browser, gateway, accept_downloads=True)
    secret = await issue_token_in_ui(page, gateway, "demo", "audit-run")
    await agent_calls(gateway, "demo", secret)
    calls = await asyncio.to_thread(
        audited, run_label="audit-run", target="weather", kind="call.outcome"
    )
    assert len(calls) == 2, [(c.kind, c.target) for c in calls]

    await page.get_by_role("link", name="Audit", exact=True).click()
    await expect(page.get_by_role("heading", name="Audit trail")).to_be_visible()
    await page.get_by_label("Tool", exact=True).fill("weather")
    await page.get_by_label("Run", exact=True).fill("audit-run")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"[?&]tool=weather(&|$)"))
    table = page.locator("table.audit-table")
    await expect(table).to_be_visible()
    rows = table.locator("tbody tr")
    await expect(rows.first).to_contain_text("weather")
    count = await rows.count()
    assert count >= 2
    for i in range(count):
        await expect(rows.nth(i)).to_contain_text("weather")
    await screenshot(page, "audit-filtered")

    export = page.get_by_role("link", name="Export CSV")
    assert "tool=weather" in (await export.get_attribute("href") or "")
    async with page.expect_download() as info:
        await export.click()
    download = await info.value
    path = await download.path()
    assert download.suggested_filename.endswith(".csv")
    text = Path(path).read_text(encoding="utf-8")
    rows_out = list(csv.DictReader(io.StringIO(text)))
    assert rows_out, text
    assert all(r["target"] == "weather" for r in rows_out), rows_out
    assert all(r["run_label"] == "audit-run" for r in rows_out), rows_out
    outcomes = [r for r in rows_out if r["kind"] == "call.outcome"]
    assert [int(r["seq"]) for r in outcomes] == [c.seq for c in calls]
    assert all(r["username"] == "alice" and r["connection"] == "demo" for r in outcomes)
    assert {r["hash"] for r in outcomes} == {c.hash for c in calls}


async def test_api_docs_render_under_the_content_security_policy(
    gateway: Server, alice: object, browser: Browser
) -> None:
    page = await log_in_with_password(browser, gateway)
    refused: list[str] = []
    page.on(
        "console",
        lambda message: (
            refused.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    await page.goto(f"{gateway.url}/api/docs/")
    await expect(page.get_by_role("heading", name=re.compile("MCP Gateway API"))).to_be_visible()
    await expect(page.locator(".opblock-tag-section").first).to_be_visible()
    # Our stylesheet stands in for the template's inline style block.
    margin = await page.evaluate("getComputedStyle(document.body).margin")
    assert margin == "0px"
    await screenshot(page, "api-docs")
    assert refused == []
