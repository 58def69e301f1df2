#!/usr/bin/env bash
# Idempotent machine setup for faas (Debian 12), run by `serve` and `test`.
# Quiet and fast when everything is present; prints what it installs otherwise.
#  - Debian packages, installed only if missing (one `apt-get update`, only
#    when something must be installed);
#  - CRIU >= 4.2 with faas's patches (scripts/criu-patches), built from Debian
#    sid's source package by build-criu.sh into /usr/local/sbin/criu.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_CRIU=$ROOT/scripts/build-criu.sh
CRIU_MIN=4.2

PACKAGES=(
  bubblewrap      # reference sandbox for benchmarks
  iproute2
  iptables        # CRIU's network locking
  util-linux      # unshare, nsenter, flock
  ca-certificates
  pkg-config
  build-essential # gcc, make
  openssh-client  # ssh, scp, sftp: the SSH server's tests
  openssh-sftp-server # sftp-server, run inside instances for sftp and scp
  procps          # ps, used by tests inside sandboxes
  python3         # the host image's python (/usr/bin/python3)
  nodejs          # the host image's node
  e2fsprogs       # mkfs.ext4: each persistent instance's disk image
)

log() { printf 'setup: %s\n' "$*"; }

criu_version() {
  "$1" --version 2>/dev/null | sed -n 's/^Version:[[:space:]]*\([0-9][0-9.]*\).*/\1/p' | head -n1
}
version_ge() { [[ -n $1 && $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

# Prints "path version" when /usr/local/sbin/criu is >= CRIU_MIN and built with
# this checkout's patches (build-criu.sh's stamp).
criu_ok() {
  local c=/usr/local/sbin/criu v
  [[ -x $c ]] || return 1
  [[ $(cat /usr/local/share/faas/criu.stamp 2>/dev/null || true) == "$("$BUILD_CRIU" --stamp)" ]] || return 1
  v=$(criu_version "$c")
  version_ge "$v" "$CRIU_MIN" && { printf '%s %s\n' "$c" "$v"; return 0; }
  return 1
}

# Prints the packages of "$@" that are not installed (one dpkg-query call).
missing_packages() {
  local -A ok=()
  local line p
  while IFS= read -r line; do
    [[ $line == *" install ok installed" ]] && ok[${line%% *}]=1
  done < <(dpkg-query -W -f='${Package} ${Status}\n' "$@" 2>/dev/null || true)
  for p in "$@"; do [[ -n ${ok[$p]:-} ]] || printf '%s\n' "$p"; done
}

check() {
  need_criu=0
  criu_ok >/dev/null || need_criu=1
  local want=("${PACKAGES[@]}")
  ((need_criu)) && mapfile -t -O "${#want[@]}" want < <("$BUILD_CRIU" --print-deps)
  mapfile -t missing < <(missing_packages "${want[@]}")
}

# The Rust toolchain comes with the machine (rustup); it cannot be fetched here.
if ! command -v cargo >/dev/null 2>&1 && [[ -f $HOME/.cargo/env ]]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null 2>&1 || { echo "setup: error: cargo not found: install a Rust toolchain (rustup) first" >&2; exit 1; }

check
if ((${#missing[@]} == 0 && need_criu == 0)); then
  echo "setup: ok"
  exit 0
fi

# Something must be done: become root, serialise with concurrent runs, re-check.
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "setup: error: must run as root" >&2; exit 1; }
  exec sudo -- "$BASH" "${BASH_SOURCE[0]}" "$@"
fi
if command -v flock >/dev/null 2>&1; then
  mkdir -p /run/lock
  exec 9>/run/lock/faas-setup.lock
  flock 9
  export FAAS_SETUP_LOCKED=1
  check
fi

if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_log=$(mktemp)
  trap 'rm -f "$apt_log"' EXIT
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1 ||
    { cat "$apt_log" >&2; echo "setup: error: apt-get failed" >&2; exit 1; }
  mapfile -t still < <(missing_packages "${missing[@]}")
  ((${#still[@]} == 0)) || { echo "setup: error: still missing after install: ${still[*]}" >&2; exit 1; }
fi

if ((need_criu)); then
  log "CRIU >= $CRIU_MIN not found: building it from Debian sid's source package"
  "$BUILD_CRIU"
  criu_ok >/dev/null || { echo "setup: error: CRIU >= $CRIU_MIN still not available" >&2; exit 1; }
fi
log "ok (criu $(criu_ok))"
