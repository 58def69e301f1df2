#!/usr/bin/env bash
# Idempotent: the contract test's tools (schemathesis, openapi-spec-validator) in a
# virtualenv of their own, pinned, from PyPI. Prints the venv's bin directory.
set -euo pipefail
VENV=${FAAS_CONTRACT_VENV:-/usr/local/share/faas/contract-venv}
SCHEMATHESIS=4.32.5
VALIDATOR=0.7.2
if [[ $("$VENV/bin/st" --version 2>/dev/null) == "st, version $SCHEMATHESIS" ]] &&
  "$VENV/bin/python" -c "import importlib.metadata as m; assert m.version('openapi-spec-validator') == '$VALIDATOR'" 2>/dev/null; then
  echo "$VENV/bin"
  exit 0
fi
echo "contract-tools: installing schemathesis $SCHEMATHESIS and openapi-spec-validator $VALIDATOR into $VENV" >&2
mkdir -p "$(dirname "$VENV")"
python3 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check \
  "schemathesis==$SCHEMATHESIS" "openapi-spec-validator==$VALIDATOR" >&2
echo "$VENV/bin"
