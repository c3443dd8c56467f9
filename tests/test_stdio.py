"""stdio upstreams: registered local commands, real PyPI MCP servers, and faulty ones."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from gateway.stdio import StdioUpstream
from gateway.upstream import LegacySession, UpstreamFailure
from tests.conftest import FIXTURES, issue_token, start_gateway, stop
from tests.support.clients import mcp_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def patient_gateway(django_db_setup, django_db_blocker, tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway that gives stdio servers 20 s to answer: starting Python servers on a
    busy machine takes a while."""
    server = start_gateway(tmp_path_factory.mktemp("stdio"), GATEWAY_UPSTREAM_TIMEOUT="20")
    yield server
    stop(server.process)


BIN = Path(sys.executable).parent


def stdio_connection(slug: str, command: str, *args: str) -> None:
    from django.core.management import call_command

    options = ["--slug", slug, "--transport", "stdio", "--command", command]
    for arg in args:
        options.append(f"--arg={arg}")  # the = form lets an argument start with --
    call_command("add_connection", *options)


def processes_running(fragment: str) -> int:
    count = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if fragment in cmdline and "pytest" not in cmdline:
            count += 1
    return count


def wait_until(check, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_time_server_over_stdio(alice, patient_gateway, mode):
    stdio_connection("time", str(BIN / "mcp-server-time"), "--local-timezone", "UTC")
    token = issue_token("alice")
    async with mcp_client(f"{patient_gateway.url}/mcp/time", token, mode) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        assert {"get_current_time", "convert_time"} <= tools
        result = await client.call_tool("get_current_time", {"timezone": "Europe/Oslo"})
        assert result.is_error in (False, None)
        assert json.loads(result.content[0].text)["timezone"] == "Europe/Oslo"
        converted = await client.call_tool(
            "convert_time",
            {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"},
        )
        assert json.loads(converted.content[0].text)["target"]["datetime"].endswith(
            "21:00:00+09:00"
        )


async def test_git_server_over_stdio(alice, patient_gateway, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "README").write_text("hello\n")
    subprocess.run(["git", "-C", str(repo), "add", "README"], check=True, env=env)
    subprocess.run(["git", "-C", str(repo), "commit", "-qm", "first commit"], check=True, env=env)
    stdio_connection("git", str(BIN / "mcp-server-git"), "--repository", str(repo))
    token = issue_token("alice")
    async with mcp_client(f"{patient_gateway.url}/mcp/git", token, "legacy") as client:
        log = await client.call_tool("git_log", {"repo_path": str(repo)})
    assert "first commit" in log.content[0].text


async def test_each_session_has_its_own_process_which_ends_with_it(alice, patient_gateway):
    script = str(FIXTURES / "stdio_faulty.py")
    stdio_connection("polite", sys.executable, script, "polite")
    token = issue_token("alice")
    url = f"{patient_gateway.url}/mcp/polite"
    async with (
        mcp_client(url, token, "legacy") as first,
        mcp_client(url, token, "legacy") as second,
    ):
        assert (await first.call_tool("work", {})).content[0].text == "worked"
        assert (await second.call_tool("work", {})).content[0].text == "worked"
        assert processes_running(f"{script} polite") == 2
    # Closing the client ends the session, and the session's process with it.
    assert wait_until(lambda: processes_running(f"{script} polite") == 0)


async def test_crash_gives_a_clear_error_and_the_next_call_a_fresh_process(alice, patient_gateway):
    script = str(FIXTURES / "stdio_faulty.py")
    stdio_connection("crashy", sys.executable, script, "crash")
    token = issue_token("alice")
    async with mcp_client(f"{patient_gateway.url}/mcp/crashy", token, "legacy") as client:
        with pytest.raises(MCPError, match="exited"):
            await client.call_tool("work", {})
        # The session goes on: the next call starts (and crashes) a fresh process.
        tools = await client.list_tools()
        assert [t.name for t in tools.tools] == ["work"]
    assert wait_until(lambda: processes_running(f"{script} crash") == 0)


async def test_a_shared_session_whose_process_died_is_renewed_before_it_is_used():
    """The gateway's own session on a legacy server (which carries 2026-07-28 agents' calls)
    is not handed out once its process has exited, even before anything else noticed: the
    call would find it gone, renew it, and could find the renewed one gone too."""
    upstream = StdioUpstream(
        slug="faulty",
        command=sys.executable,
        args=[str(FIXTURES / "stdio_faulty.py"), "garbage"],
        cwd="",
        env={},
        max_processes=4,
    )
    try:
        first = await upstream.shared_session()
        process = upstream.processes[first.session_id].process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        second = await upstream.shared_session()
        assert second.session_id != first.session_id
        reply = await upstream.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "work"}},
            session_id=second.session_id,
        )
        answer = await reply.first_response()
        assert answer.payload["result"]["content"] == [{"type": "text", "text": "worked"}]
        assert first.session_id not in upstream.processes
    finally:
        await upstream.aclose()


def group_members(pgid: int) -> list[int]:
    """Processes (zombies aside) in the process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def wrapped(mode: str, child: str) -> StdioUpstream:
    """The faulty server behind `sh -c`, with a child of the wrapper running beside it."""
    server = f"{sys.executable} {FIXTURES / 'stdio_faulty.py'} {mode}"
    return StdioUpstream(
        slug=f"wrapped-{mode}",
        command="/bin/sh",
        args=["-c", f"{child} & exec {server}"],
        cwd="",
        env={},
        max_processes=2,
    )


async def shared_process(
    upstream: StdioUpstream,
) -> tuple[LegacySession, asyncio.subprocess.Process]:
    session = await upstream.shared_session()
    process = upstream.processes[session.session_id].process
    assert process is not None
    return session, process


async def test_ending_a_server_ends_what_it_left_in_its_process_group():
    # The wrapper's child ignores SIGTERM and outlives the server, which ends when its
    # stdin closes: it is killed too.
    upstream = wrapped("garbage", "(trap '' TERM; exec sleep 60)")
    try:
        _session, process = await shared_process(upstream)
        assert len(group_members(process.pid)) == 2
    finally:
        await upstream.aclose()
    assert group_members(process.pid) == []


async def test_a_crash_fails_the_call_at_once_though_a_child_holds_the_servers_output():
    # The child inherited the server's stdout and keeps it open: the call fails with the
    # server's exit, not at its timeout, and the child is ended.
    upstream = wrapped("crash", "sleep 60")
    try:
        session, process = await shared_process(upstream)
        reply = await upstream.post(
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "work"}},
            session_id=session.session_id,
        )
        reply.timeout = 60
        began = time.monotonic()
        with pytest.raises(UpstreamFailure, match=r"the server process exited \(code 3\)"):
            await reply.first_response()
        assert time.monotonic() - began < 15
        assert wait_until(lambda: group_members(process.pid) == [])
    finally:
        await upstream.aclose()


async def test_garbage_on_stdout_is_skipped(alice, patient_gateway):
    stdio_connection("noisy", sys.executable, str(FIXTURES / "stdio_faulty.py"), "garbage")
    token = issue_token("alice")
    async with mcp_client(f"{patient_gateway.url}/mcp/noisy", token, "legacy") as client:
        result = await client.call_tool("work", {})
    assert result.content[0].text == "worked"


async def test_silent_server_times_out(alice, gateway):
    # The test gateway waits 5 s for an upstream (GATEWAY_UPSTREAM_TIMEOUT).
    stdio_connection("silent", sys.executable, str(FIXTURES / "stdio_faulty.py"), "silent")
    token = issue_token("alice")
    async with mcp_client(f"{gateway.url}/mcp/silent", token, "legacy") as client:
        started = time.monotonic()
        with pytest.raises(MCPError, match="stopped answering"):
            await client.call_tool("work", {})
        assert time.monotonic() - started < 15
        # The server was told the gateway gave up on the call (and the session goes on).
        report = await client.call_tool("cancelled", {})
        assert len(json.loads(report.content[0].text)) == 1


async def test_gateway_shutdown_ends_its_server_processes(alice, tmp_path):
    gateway = start_gateway(tmp_path, GATEWAY_UPSTREAM_TIMEOUT="20")
    script = str(FIXTURES / "stdio_faulty.py")
    try:
        stdio_connection("lingering", sys.executable, script, "lingering")
        token = issue_token("alice")
        async with mcp_client(f"{gateway.url}/mcp/lingering", token, "legacy") as client:
            assert (await client.call_tool("work", {})).content[0].text == "worked"
            assert processes_running(f"{script} lingering") == 1
            stop(gateway.process)
            assert wait_until(lambda: processes_running(f"{script} lingering") == 0)
    except BaseException:
        stop(gateway.process)
        raise
