#!/usr/bin/env bash
# The TypeScript SDK's checks: a clean install of its pinned dev dependencies (npm ci), the
# build (tsc: ESM + declarations), then its tests against a real server (started by the
# tests from target/debug/faas).
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "${0##*/}: SKIPPED: needs root (the tests start a real server: namespaces, cgroups)"; exit 0; }
cd "$(dirname "${BASH_SOURCE[0]}")/../sdk/typescript"
command -v npm >/dev/null 2>&1 || { echo "test-typescript-sdk: error: node and npm are needed (Node 20)" >&2; exit 1; }
# The browser test's headless Chromium (Debian's), installed once, quietly.
if [[ ! -x /usr/bin/chromium ]]; then
  echo "test-typescript-sdk: installing chromium (for the browser test)" >&2
  export DEBIAN_FRONTEND=noninteractive
  log=$(mktemp)
  { apt-get install -y -qq --no-install-recommends chromium ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; }; } >"$log" 2>&1 ||
    { cat "$log" >&2; echo "test-typescript-sdk: error: apt-get failed" >&2; exit 1; }
  rm -f "$log"
fi
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
export FAAS_BIN=$PWD/../../target/debug/faas
export FAAS_AGENT=${FAAS_AGENT:-$PWD/../../target/debug/faas-agent}
# Bounded: the suite takes seconds; a hang must not stall CI.
timeout -k 10 600 npm test --silent
