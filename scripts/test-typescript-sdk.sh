#!/usr/bin/env bash
# The TypeScript SDK's checks: a clean install of its pinned dev dependencies (npm ci), the
# build (tsc: ESM + declarations), then its tests against a real server (started by the
# tests from target/debug/faas).
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "${0##*/}: SKIPPED: needs root (the tests start a real server: namespaces, cgroups)"; exit 0; }
cd "$(dirname "${BASH_SOURCE[0]}")/../sdk/typescript"
command -v npm >/dev/null 2>&1 || { echo "test-typescript-sdk: error: node and npm are needed (Node 20)" >&2; exit 1; }
npm ci --no-audit --no-fund --loglevel=error
npm run --silent build
export FAAS_BIN=$PWD/../../target/debug/faas
export FAAS_AGENT=${FAAS_AGENT:-$PWD/../../target/debug/faas-agent}
# Bounded: the suite takes seconds; a hang must not stall CI.
timeout -k 10 600 npm test --silent
