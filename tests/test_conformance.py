"""The official MCP conformance suite: every scenario the upstream passes directly must
also pass through the gateway, in both protocol eras."""

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    FIXTURES,
    ROOT,
    Server,
    add_connection,
    free_port,
    issue_token,
    stop,
    wait_for_port,
)
from tests.support.conformance import failed_checks, run_conformance

pytestmark = pytest.mark.django_db(transaction=True)

ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def conformance_upstream() -> Iterator[Server]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(FIXTURES / "conformance_server.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port, process)
    yield Server(f"http://127.0.0.1:{port}/mcp", port, process)
    stop(process)


@pytest.mark.parametrize("spec_version", ["2025-11-25", "2026-07-28"])
def test_gateway_passes_what_the_upstream_passes(
    alice, gateway: Server, conformance_upstream: Server, spec_version: str, tmp_path: Path
) -> None:
    add_connection("conformance", conformance_upstream.url)
    token = issue_token("alice", "--run", "conformance")
    gateway_url = f"{gateway.url}/mcp/conformance"

    direct = run_conformance(conformance_upstream.url, spec_version, tmp_path / "direct")
    through = run_conformance(gateway_url, spec_version, tmp_path / "gateway", token=token)

    summary = {
        "spec_version": spec_version,
        "direct": {"passed": sum(v == "pass" for v in direct.values()), "total": len(direct)},
        "gateway": {"passed": sum(v == "pass" for v in through.values()), "total": len(through)},
        "scenarios": {
            name: {"direct": direct[name], "gateway": through.get(name)} for name in direct
        },
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"conformance-{spec_version}.json").write_text(json.dumps(summary, indent=2))

    assert direct, "the suite ran no scenarios"
    regressions = {
        name: failed_checks(tmp_path / "gateway", name)
        for name, verdict in direct.items()
        if verdict == "pass" and through.get(name) != "pass"
    }
    assert not regressions, json.dumps(regressions, indent=2)
