#!/usr/bin/env bash
# Runs examples/ (the user's documents' examples, on the real SDKs) against a real server
# and checks what they print. Needs the SDKs set up by test-python-sdk.sh and
# test-typescript-sdk.sh (scripts/test runs those first) and target/debug/faas.
set -euo pipefail
[[ $EUID -eq 0 ]] || { echo "${0##*/}: SKIPPED: needs root (the tests start a real server: namespaces, cgroups)"; exit 0; }
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PY=${FAAS_SDK_VENV:-/usr/local/share/faas/sdk-python-venv}/bin/python
work=$(mktemp -d)
key=faas_examples_admin_key_0123456789abcdef
cat >"$work/config.toml" <<TOML
listen = "127.0.0.1:0"
data_dir = "$work/data"
run_dir = "$work/run"
cgroup_parent = "faas-examples-$$"
agent_path = "${FAAS_AGENT:-$ROOT/target/debug/faas-agent}"
[ssh]
enabled = false
TOML
FAAS_API_KEY=$key target/debug/faas serve --config "$work/config.toml" >"$work/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 300); do
  url=$(sed -n 's/^faas listening on //p' "$work/server.log")
  [[ -n $url ]] && break
  sleep 0.1
done
[[ -n ${url:-} ]] || { cat "$work/server.log" >&2; echo "examples: the server did not start" >&2; exit 1; }
export FAAS_URL=$url FAAS_API_KEY=$key

failed=0
# check NAME EXPECTED COMMAND...: runs an example (bounded) and compares its output.
check() {
  local name=$1 expected=$2 out
  shift 2
  if ! out=$(timeout -k 10 120 "$@" 2>&1); then
    echo "examples: $name failed:"$'\n'"$out" >&2
    failed=1
  elif [[ $out != "$expected" ]]; then
    echo "examples: $name printed:"$'\n'"$out"$'\n'"expected:"$'\n'"$expected" >&2
    failed=1
  else
    echo "examples: $name ok"
  fi
}
ticks=$'tick 0\ntick 1\ntick 2'
check python/hello.py 'Hello!' "$PY" examples/python/hello.py
check python/cached_python.py $'Hello World\n'"$ticks" "$PY" examples/python/cached_python.py
check python/snapshot_and_branch.py $'state ready\nbranch sees 42\nbranch sees 42\nbranch sees 42' \
  "$PY" examples/python/snapshot_and_branch.py

(cd examples/typescript && npm ci --no-audit --no-fund --loglevel=error >/dev/null &&
  ../../sdk/typescript/node_modules/.bin/tsc -p tsconfig.json)
check typescript/hello.ts 'Hello!' node examples/typescript/dist/hello.js
check typescript/cached.ts $'Hello World\n'"$ticks" node examples/typescript/dist/cached.js
check typescript/snapshot-branch.ts $'state ready\nHello from Branch 1\nHello from Branch 1' \
  node examples/typescript/dist/snapshot-branch.js
exit $failed
