"""The MCP Inspector CLI (npm @modelcontextprotocol/inspector) against the gateway.

The reference server (@modelcontextprotocol/server-everything) sits behind the gateway
once as a Streamable HTTP upstream and once as a stdio command; the Inspector reaches the
gateway over Streamable HTTP (/mcp/<slug>) and over the legacy HTTP+SSE transport
(/mcp/<slug>/sse), with the agent's token in an Authorization header. Every run is a
fresh process and a fresh MCP session, as a person at a terminal would use it.
"""

import json
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command

from audit.models import AuditRecord, Kind
from tests.conftest import (
    EVERYTHING,
    NODE,
    NODE_MODULES,
    Server,
    add_connection,
    issue_token,
    start_gateway,
    stop,
)

pytestmark = pytest.mark.django_db(transaction=True)

INSPECTOR = NODE_MODULES / "@modelcontextprotocol" / "inspector"

STATIC_DOCUMENT = "demo://resource/static/document/architecture.md"


def inspector_entry() -> Path:
    """The `mcp-inspector` bin of the installed package (its launcher takes --cli)."""
    if not (INSPECTOR / "package.json").exists():
        pytest.fail("Node tools missing: run `bash tests/support/install_node_tools.sh`")
    package = json.loads((INSPECTOR / "package.json").read_text())
    return INSPECTOR / package["bin"]["mcp-inspector"]


@pytest.fixture(scope="module")
def inspector_gateway(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Server]:  # type: ignore[no-untyped-def]
    """A gateway that ends a stdio server process after 3 s without calls: the CLI
    leaves Streamable HTTP sessions without a DELETE, and their processes must not
    outlive the tests. Node servers get 20 s to answer on a busy machine."""
    server = start_gateway(
        tmp_path_factory.mktemp("inspector"),
        GATEWAY_STDIO_IDLE_SECONDS="3",
        GATEWAY_UPSTREAM_TIMEOUT="20",
    )
    yield server
    stop(server.process)


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def describe(self) -> str:
        return (
            f"inspector {' '.join(self.args)}\nexit code {self.returncode}\n"
            f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"
        )

    def result(self) -> dict[str, Any]:
        """The parsed result the CLI printed, or a failure that shows how it ended."""
        assert self.returncode == 0, self.describe()
        try:
            printed = json.loads(self.stdout)
        except ValueError:
            pytest.fail(f"the CLI printed no JSON\n{self.describe()}")
        assert isinstance(printed, dict) and "result" in printed, self.describe()
        return printed["result"]


def inspector(home: Path, url: str, transport: str, token: str, *args: str) -> Run:
    command = [
        str(NODE),
        str(inspector_entry()),
        "--cli",
        "--server-url",
        url,
        "--transport",
        transport,
        "--format",
        "json",
        "--quiet",
        "--connect-timeout",
        "30000",
        *args,
        # Last, since --header takes every value up to the next option.
        "--header",
        f"Authorization: Bearer {token}",
    ]
    # HOME points at a temporary folder so the CLI reads no catalog or stored login.
    env = {
        "PATH": f"{NODE.parent}:{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "NO_COLOR": "1",
    }
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=home, timeout=120
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"inspector --method {args[1]} did not end within 120 s: {exc.stderr!r}")
    shown = [arg.replace(token, "<token>") for arg in command[2:]]
    return Run(shown, done.returncode, done.stdout, done.stderr)


# The CLI runs of each test, by name; check_results looks at what each one printed.
CALLS: dict[str, list[str]] = {
    "tools/list": ["--method", "tools/list"],
    "echo": [
        "--method",
        "tools/call",
        "--tool-name",
        "echo",
        "--tool-arg",
        "message=through the gateway",
    ],
    "get-sum": ["--method", "tools/call", "--tool-name", "get-sum", "--tool-arg", "a=19", "b=23"],
    "resources/list": ["--method", "resources/list"],
    "resources/read": ["--method", "resources/read", "--uri", STATIC_DOCUMENT],
    "prompts/list": ["--method", "prompts/list"],
    "prompts/get": [
        "--method",
        "prompts/get",
        "--prompt-name",
        "args-prompt",
        "--prompt-args",
        "city=Oslo",
        "state=Viken",
    ],
}


def check_results(runs: dict[str, Run]) -> None:
    tools = {tool["name"] for tool in runs["tools/list"].result()["tools"]}
    assert {"echo", "get-sum", "get-structured-content"} <= tools, tools

    echo = runs["echo"].result()
    assert echo["content"] == [{"type": "text", "text": "Echo: through the gateway"}]
    assert not echo.get("isError")

    total = runs["get-sum"].result()
    assert total["content"][0]["text"] == "The sum of 19 and 23 is 42."

    uris = {resource["uri"] for resource in runs["resources/list"].result()["resources"]}
    assert STATIC_DOCUMENT in uris, uris

    contents = runs["resources/read"].result()["contents"]
    assert contents[0]["uri"] == STATIC_DOCUMENT
    assert contents[0]["text"].startswith("# Everything Server")

    prompts = {prompt["name"] for prompt in runs["prompts/list"].result()["prompts"]}
    assert {"simple-prompt", "args-prompt"} <= prompts, prompts

    messages = runs["prompts/get"].result()["messages"]
    assert messages[0]["content"]["text"] == "What's weather in Oslo, Viken?"


def recorded_outcomes(run_label: str, count: int) -> list[AuditRecord]:
    """Outcome records are written just after the agent got its answer: wait for them."""
    records: list[AuditRecord] = []
    for _ in range(200):
        records = list(
            AuditRecord.objects.filter(kind=Kind.CALL_OUTCOME, run_label=run_label).order_by("seq")
        )
        if len(records) >= count:
            break
        time.sleep(0.05)
    return records


def check_audit_trail(run_label: str, slug: str) -> None:
    requests = list(
        AuditRecord.objects.filter(kind=Kind.CALL_REQUEST, run_label=run_label).order_by("seq")
    )
    by_method: dict[str, list[AuditRecord]] = {}
    for record in requests:
        by_method.setdefault(record.method, []).append(record)
    assert {r.connection for r in requests} == {slug}
    assert {r.username for r in requests} == {"alice"}

    tool_calls = {r.target: r for r in by_method.get("tools/call", [])}
    assert set(tool_calls) == {"echo", "get-sum"}, by_method.keys()
    assert tool_calls["echo"].arguments == {"message": "through the gateway"}
    # The CLI turns numeric key=value arguments into numbers.
    assert tool_calls["get-sum"].arguments == {"a": 19, "b": 23}
    assert [r.target for r in by_method.get("resources/read", [])] == [STATIC_DOCUMENT]
    assert [r.target for r in by_method.get("prompts/get", [])] == ["args-prompt"]
    # The CLI lists tools itself before a call (to type the arguments), so lists are
    # recorded at least once each.
    for method in ("tools/list", "resources/list", "prompts/list"):
        assert by_method.get(method), (method, by_method.keys())
    # Every CLI run opened its own legacy-era session.
    assert len(by_method.get("initialize", [])) == len(CALLS)

    outcomes = {o.call_id: o for o in recorded_outcomes(run_label, len(requests))}
    for record in requests:
        outcome = outcomes.get(record.call_id)
        assert outcome is not None, f"no outcome recorded for {record.method} {record.target}"
        assert outcome.outcome == "ok", (record.method, record.target, outcome.outcome)
    assert outcomes[tool_calls["get-sum"].call_id].result["content"][0]["text"].endswith("42.")


def everything_processes(parent: int) -> list[int]:
    """Children of `parent` running the everything server."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and str(EVERYTHING).encode() in command:
            found.append(int(entry))
    return found


def wait_until(check, timeout: float = 15.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


def register(kind: str, slug: str, everything: Server) -> None:
    if kind == "http":
        add_connection(slug, everything.url)
        return
    if kind == "sse":
        call_command(
            "add_connection", "--slug", slug, "--transport", "sse", "--url", everything.url
        )
        return
    call_command(
        "add_connection",
        "--slug",
        slug,
        "--transport",
        "stdio",
        "--command",
        str(NODE),
        f"--arg={EVERYTHING}",
        "--arg=stdio",
        # Room for every CLI run of a test at once (each is its own session and process).
        "--max-processes",
        str(len(CALLS) + 2),
    )


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("upstream", ["http", "sse", "stdio"])
def test_inspector_cli_through_the_gateway(
    alice, inspector_gateway, everything, tmp_path, upstream, transport, request
):
    slug = f"everything-{upstream}"
    server = request.getfixturevalue("everything_sse") if upstream == "sse" else everything
    register(upstream, slug, server)
    run_label = f"inspector-{upstream}-{transport}"
    token = issue_token("alice", "--run", run_label)
    url = f"{inspector_gateway.url}/mcp/{slug}" + ("/sse" if transport == "sse" else "")
    earlier = set(everything_processes(inspector_gateway.process.pid))

    with ThreadPoolExecutor(max_workers=len(CALLS)) as pool:
        futures = {
            name: pool.submit(inspector, tmp_path, url, transport, token, *args)
            for name, args in CALLS.items()
        }
        runs = {name: future.result() for name, future in futures.items()}

    check_results(runs)
    check_audit_trail(run_label, slug)
    # The agent's token never reaches the audit trail.
    assert token not in repr(list(AuditRecord.objects.values()))
    if upstream == "stdio":
        # Each run had its own session and server process. Over SSE the session ends
        # when the run closes its stream; over Streamable HTTP the CLI leaves without a
        # DELETE, and the process ends after GATEWAY_STDIO_IDLE_SECONDS without calls.
        pid = inspector_gateway.process.pid
        started = set(everything_processes(pid)) - earlier
        assert wait_until(lambda: not started & set(everything_processes(pid)), timeout=60), (
            started & set(everything_processes(pid))
        )


def test_inspector_cli_sees_a_tool_error_as_a_tool_error(
    alice, inspector_gateway, everything, tmp_path
):
    add_connection("everything-http", everything.url)
    token = issue_token("alice", "--run", "inspector-error")
    run = inspector(
        tmp_path,
        f"{inspector_gateway.url}/mcp/everything-http",
        "http",
        token,
        "--method",
        "tools/call",
        "--tool-name",
        "get-sum",
        "--tool-arg",
        "a=not-a-number",
        "b=1",
    )
    # Exit code 5 is the CLI's answer to a result with isError: true; a transport or
    # protocol failure would end differently.
    assert run.returncode == 5, run.describe()
    assert json.loads(run.stdout)["result"]["isError"] is True, run.describe()


def test_inspector_cli_without_a_token_is_refused(alice, inspector_gateway, everything, tmp_path):
    add_connection("everything-http", everything.url)
    run = inspector(
        tmp_path,
        f"{inspector_gateway.url}/mcp/everything-http",
        "http",
        "mgw_000000000000_not-a-token",
        "--stored-auth-only",
        "--method",
        "tools/list",
    )
    # The gateway's 401 reaches the CLI, which (never starting a login) says so.
    assert run.returncode != 0, run.describe()
    assert "auth_required" in run.stderr and "gateway token" in run.stderr, run.describe()
    assert not AuditRecord.objects.calls().exists()
