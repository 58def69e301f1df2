#!/usr/bin/env bash
# The Python SDK's checks: mypy --strict, then its tests against a real server (started by
# the tests from target/debug/faas). Its tools live in a virtualenv of their own, pinned,
# from PyPI; the SDK itself is installed from this checkout (not editable) for each run.
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "${0##*/}: SKIPPED: needs root (the tests start a real server: namespaces, cgroups)"; exit 0; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${FAAS_SDK_VENV:-/usr/local/share/faas/sdk-python-venv}
PINS=(httpx==0.28.1 pytest==8.4.2 pytest-asyncio==0.26.0 mypy==1.20.2 setuptools==75.8.0)
STAMP="$VENV/faas-pins"
if [[ $(cat "$STAMP" 2>/dev/null || true) != "${PINS[*]}" ]]; then
  echo "test-python-sdk: installing ${PINS[*]} into $VENV" >&2
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PINS[@]}"
  echo "${PINS[*]}" >"$STAMP"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --force-reinstall ./sdk/python
(cd sdk/python && "$VENV/bin/mypy" --strict src tests)
export FAAS_BIN=$PWD/target/debug/faas
export FAAS_AGENT=${FAAS_AGENT:-$PWD/target/debug/faas-agent}
# Bounded: the suite takes seconds; a hang must not stall CI.
(cd sdk/python && timeout -k 10 600 "$VENV/bin/pytest" -q -p no:cacheprovider tests)
