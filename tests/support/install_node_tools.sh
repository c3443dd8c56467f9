#!/usr/bin/env bash
# Install the Node tools the tests use into .tools/node at the repository root:
# Node 22 plus the MCP conformance suite, the everything server and the inspector,
# at the versions pinned by tests/support/node/package-lock.json.
#
# Idempotent: does nothing when the installed tree matches the pinned lockfile.
# Needs only a working `npm` (any Node >= 18) on PATH. Quiet on success; on failure
# prints the tail of the npm log and exits non-zero.
set -euo pipefail

support_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${support_dir}/../.." && pwd)"
pins_dir="${support_dir}/node"
tools_dir="${repo_root}/.tools/node"
stamp="${tools_dir}/.pins.sha256"
node22="${tools_dir}/node_modules/node/bin/node"

pins_hash="$(cat "${pins_dir}/package.json" "${pins_dir}/package-lock.json" | sha256sum | cut -d' ' -f1)"

if [[ -x "${node22}" && -f "${stamp}" && "$(cat "${stamp}")" == "${pins_hash}" ]] \
    && "${node22}" --version >/dev/null 2>&1; then
    exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install_node_tools: npm is not on PATH" >&2
    exit 1
fi

mkdir -p "${tools_dir}"
rm -f "${stamp}"
cp "${pins_dir}/package.json" "${pins_dir}/package-lock.json" "${tools_dir}/"

log="${tools_dir}/install.log"
# The `node` package's preinstall runs a nested `npm install` of the platform binary with
# inherited stdio, so all output goes to the log rather than the terminal.
if ! (
    cd "${tools_dir}"
    npm_config_update_notifier=false npm ci --no-audit --no-fund --loglevel=error
) >"${log}" 2>&1; then
    echo "install_node_tools: npm ci failed; last lines of ${log}:" >&2
    tail -n 40 "${log}" >&2
    exit 1
fi

if ! "${node22}" --version >/dev/null 2>&1; then
    echo "install_node_tools: ${node22} is missing or does not run; see ${log}" >&2
    exit 1
fi

echo "${pins_hash}" >"${stamp}"
echo "install_node_tools: Node $("${node22}" --version) and MCP tools installed in ${tools_dir}"
