"""Run the official MCP conformance suite's server scenarios against a URL.

Uses the Node 22 and ``@modelcontextprotocol/conformance`` that
``tests/support/install_node_tools.sh`` puts in ``.tools/node``, with
``loopback.cjs`` preloaded so nothing the suite starts listens beyond 127.0.0.1,
and ``auth_fetch.cjs`` preloaded when a bearer token is given.

Command line::

    python tests/support/conformance.py http://127.0.0.1:3001/mcp --spec-version 2026-07-28
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
SUPPORT_DIR = Path(__file__).resolve().parent
TOOLS_DIR = REPO_ROOT / ".tools" / "node"
NODE = TOOLS_DIR / "node_modules" / "node" / "bin" / "node"
CONFORMANCE_CLI = (
    TOOLS_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"
)
LOOPBACK_PRELOAD = SUPPORT_DIR / "loopback.cjs"
AUTH_PRELOAD = SUPPORT_DIR / "auth_fetch.cjs"

SPEC_VERSIONS = ("2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28")

# The CLI writes each scenario's checks to <out>/server-<scenario>-<timestamp>/checks.json, the
# timestamp being ISO 8601 with ':' and '.' replaced by '-'.
_RESULT_DIR = re.compile(
    r"^server-(?P<scenario>.+)-(?P<stamp>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}-\d{3}Z)$"
)
_RUNNING = re.compile(r"^=== Running scenario: (?P<scenario>\S+) ===$", re.MULTILINE)


class ConformanceError(RuntimeError):
    """The suite could not be run, as opposed to scenarios failing."""


def scenario_status(checks: list[dict[str, Any]]) -> str:
    """Verdict for one scenario from its checks.

    - ``"fail"``: at least one check is ``FAILURE``.
    - ``"pass"``: no ``FAILURE`` and at least one ``SUCCESS``. ``WARNING`` (unmet SHOULDs),
      ``SKIPPED`` and ``INFO`` checks do not prevent a pass.
    - ``"skipped"``: no ``FAILURE`` and no ``SUCCESS``: nothing was actually verified.
    """
    statuses = {check.get("status") for check in checks}
    if "FAILURE" in statuses:
        return "fail"
    if "SUCCESS" in statuses:
        return "pass"
    return "skipped"


def load_checks(out_dir: Path) -> dict[str, list[dict[str, Any]] | None]:
    """Checks per scenario found under ``out_dir``; ``None`` where a scenario left no checks.json.

    When a scenario was run more than once into the same directory, the latest run wins.
    """
    latest: dict[str, tuple[str, Path]] = {}
    for entry in out_dir.iterdir():
        match = _RESULT_DIR.match(entry.name)
        if not entry.is_dir() or match is None:
            continue
        scenario, stamp = match["scenario"], match["stamp"]
        if scenario not in latest or stamp > latest[scenario][0]:
            latest[scenario] = (stamp, entry)
    results: dict[str, list[dict[str, Any]] | None] = {}
    for scenario, (_, entry) in sorted(latest.items()):
        checks_file = entry / "checks.json"
        results[scenario] = json.loads(checks_file.read_text()) if checks_file.is_file() else None
    return results


def conformance_env(url: str, token: str | None = None) -> dict[str, str]:
    """Environment for a Node process of the suite: Node 22 first on PATH and the preloads."""
    env = dict(os.environ)
    env["PATH"] = f"{NODE.parent}{os.pathsep}{env.get('PATH', '')}"
    preloads = [LOOPBACK_PRELOAD]
    if token is not None:
        preloads.append(AUTH_PRELOAD)
        env["MCP_AUTH_URL_PREFIX"] = url
        env["MCP_AUTH_TOKEN"] = token
    else:
        env.pop("MCP_AUTH_TOKEN", None)
        env.pop("MCP_AUTH_URL_PREFIX", None)
    # NODE_OPTIONS is split like a shell word list, so quote paths that may contain spaces.
    requires = " ".join(f"--require {shlex.quote(str(path))}" for path in preloads)
    env["NODE_OPTIONS"] = f"{env.get('NODE_OPTIONS', '')} {requires}".strip()
    env["NO_COLOR"] = "1"
    return env


def run_conformance(
    url: str,
    spec_version: str,
    out_dir: Path,
    token: str | None = None,
    *,
    timeout: float = 1200.0,
) -> dict[str, str]:
    """Run every server scenario applicable at ``spec_version`` against ``url``.

    Equivalent to ``npx conformance server --url URL --suite all --spec-version V -o DIR``
    with Node 22 from ``.tools/node``. ``--spec-version`` also picks the wire: the stateful
    initialize handshake for dated versions up to 2025-11-25, the stateless per-request
    ``_meta`` wire for 2026-07-28. Extension scenarios (``tasks-*``) are never selected by a
    spec version. When ``token`` is given every request to ``url`` carries
    ``Authorization: Bearer <token>``.

    Returns ``{scenario: status}`` for every scenario the suite started, where status is
    ``"pass"``, ``"fail"`` or ``"skipped"`` as defined by :func:`scenario_status`, or
    ``"error"`` when the scenario crashed before writing its checks (the suite then
    reports it as failed too). ``out_dir`` keeps the raw ``checks.json`` files and the
    suite's console output (``conformance.log``).

    Raises:
        ConformanceError: The tools are not installed, the run timed out, or the CLI
            exited without running any scenario.
    """
    if spec_version not in SPEC_VERSIONS and spec_version != "draft":
        raise ValueError(f"unknown spec version {spec_version!r}; expected one of {SPEC_VERSIONS}")
    if not NODE.is_file() or not CONFORMANCE_CLI.is_file():
        raise ConformanceError(
            f"Node tools missing in {TOOLS_DIR}; run tests/support/install_node_tools.sh"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(NODE),
        str(CONFORMANCE_CLI),
        "server",
        "--url",
        url,
        "--suite",
        "all",
        "--spec-version",
        spec_version,
        "-o",
        str(out_dir),
    ]
    try:
        completed = subprocess.run(
            command,
            env=conformance_env(url, token),
            cwd=out_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ConformanceError(
            f"conformance run against {url} timed out after {timeout:.0f}s"
        ) from exc
    (out_dir / "conformance.log").write_text(completed.stdout + completed.stderr)

    started = _RUNNING.findall(completed.stdout)
    if not started:
        tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-30:])
        raise ConformanceError(
            f"conformance CLI ran no scenario (exit {completed.returncode}):\n{tail}"
        )
    checks = load_checks(out_dir)
    results: dict[str, str] = {}
    for scenario in started:
        scenario_checks = checks.get(scenario)
        results[scenario] = "error" if scenario_checks is None else scenario_status(scenario_checks)
    return results


def failed_checks(out_dir: Path, scenario: str) -> list[tuple[str, str]]:
    """``(check id, error message)`` for each failing check of ``scenario`` under ``out_dir``."""
    checks = load_checks(out_dir).get(scenario) or []
    return [
        (str(check.get("id")), str(check.get("errorMessage") or check.get("description") or ""))
        for check in checks
        if check.get("status") == "FAILURE"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the MCP conformance server suite against a URL."
    )
    parser.add_argument("url", help="Streamable HTTP endpoint, e.g. http://127.0.0.1:3001/mcp")
    parser.add_argument("--spec-version", required=True, choices=[*SPEC_VERSIONS, "draft"])
    parser.add_argument(
        "--out", type=Path, help="directory for results (default: a new temporary one)"
    )
    parser.add_argument(
        "--token", default=os.environ.get("MCP_AUTH_TOKEN"), help="bearer token to send"
    )
    args = parser.parse_args(argv)

    out_dir: Path = args.out or Path(tempfile.mkdtemp(prefix=f"conformance-{args.spec_version}-"))
    results = run_conformance(args.url, args.spec_version, out_dir, args.token)

    width = max(len(name) for name in results)
    for scenario, status in results.items():
        print(f"{scenario:<{width}}  {status}")
        if status == "fail":
            for check_id, message in failed_checks(out_dir, scenario):
                print(f"{'':<{width}}    - {check_id}: {message[:160]}")
    counts = Counter(results.values())
    summary = ", ".join(
        f"{counts[s]} {s}" for s in ("pass", "fail", "error", "skipped") if counts[s]
    )
    print(f"\n{args.spec_version}: {len(results)} scenarios: {summary}  (results in {out_dir})")
    return 0 if counts["fail"] == counts["error"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
