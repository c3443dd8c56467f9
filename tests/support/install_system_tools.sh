#!/usr/bin/env bash
# Debian packages the tests need: Chromium for the browser tests, wrk for the benchmark's
# smoke runs (and valgrind for its instruction counts), nginx for the load balancer test
# (deploy/nginx.conf). Installed only when missing; needs root (as CI runs) or sudo.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v callgrind_control >/dev/null 2>&1 || missing+=(valgrind)
command -v pg_dump >/dev/null 2>&1 || missing+=(postgresql-client)
command -v git >/dev/null 2>&1 || missing+=(git)
[ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
echo "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
