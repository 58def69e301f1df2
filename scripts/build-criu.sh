#!/usr/bin/env bash
# Build CRIU (>= 4.2) from Debian unstable's (sid) *source* package and install
# only the binary, to /usr/local/sbin/criu.
#
# Debian 12's criu 3.17 fails on recent kernels and criu 4.1 fails on any
# process holding an inet socket (kernel >= 6.16); sid's 4.2.x works and builds
# with bookworm's build dependencies.
#
# Host-wide changes: the apt packages in BUILD_DEPS, one apt sources file
# (/etc/apt/sources.list.d/faas-sid-src.sources, "Types: deb-src" only, so no
# sid binary package can ever be installed from it) and /usr/local/sbin/criu.
# The sid entry reuses the URI of the Debian archive already configured in the
# machine's apt sources: no mirror host is hard-coded here.
#
# The package's files are fetched with apt's own downloader and checked against
# the hashes of the signed sid index. When the mirror lacks the small
# debian.tar (the build machines' mirror answers 404 for
# criu_4.2.1-1.debian.tar.xz), the pristine upstream tarball is
# built without Debian's patches (a warning says so); otherwise dpkg-source
# unpacks the full Debian source with its patches. Work files live in
# /var/tmp/faas-criu-build and are reused by the next run.
#
# faas's own patches (scripts/criu-patches/*.patch, written for this project)
# are applied on top; the installed binary's stamp (STAMP: the patches' hash)
# tells setup.sh whether the installed criu is current:
#   0001: dump rlimits from /proc/<pid>/limits when prlimit() says EPERM.
#         Sandboxed programs run as another user than CRIU, and prlimit() on
#         another user's process needs CAP_SYS_RESOURCE, which the build hosts'
#         root does not have.
#   0002: the kerndat cache (CRIU's probe of the kernel, ~35 ms a run here)
#         in the directory CRIU_KDAT_DIR names: it must be a tmpfs, and these
#         hosts' /run is not one.
#
# Usage: build-criu.sh              fetch, build, install, verify
#        build-criu.sh --print-deps  print the apt packages the build needs
set -euo pipefail

MIN_VERSION=4.2
BUILD_DIR=${FAAS_CRIU_BUILD_DIR:-/var/tmp/faas-criu-build}
DEST=/usr/local/sbin/criu
STAMP=/usr/local/share/faas/criu.stamp
PATCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/criu-patches
SRC_FILE=/etc/apt/sources.list.d/faas-sid-src.sources
DEFAULT_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

# What `make criu` needs (the subset of sid's Build-Depends that matters for
# the binary; docs, python bindings and debhelper are not built), plus the
# tools that `apt-get source` uses to fetch and unpack a 3.0 (quilt) package.
BUILD_DEPS=(
  build-essential pkg-config python3 dpkg-dev xz-utils ca-certificates patch
  libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev
  libnl-3-dev libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler
  protobuf-compiler uuid-dev
)

# The hash of faas's patches: the stamp of a build.
patches_hash() { cat "$PATCH_DIR"/*.patch 2>/dev/null | sha256sum | cut -c1-16; }

if [[ ${1:-} == --print-deps ]]; then
  printf '%s\n' "${BUILD_DEPS[@]}"
  exit 0
fi
if [[ ${1:-} == --stamp ]]; then
  # What STAMP holds after a build of this checkout.
  printf 'patches %s\n' "$(patches_hash)"
  exit 0
fi

log() { printf 'build-criu: %s\n' "$*"; }
die() { printf 'build-criu: error: %s\n' "$*" >&2; exit 1; }

if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || die "must run as root"
  exec sudo -- "$0" "$@"
fi

# Serialise with a concurrent setup.sh / build-criu.sh (setup.sh already holds
# the lock when it calls us).
if [[ -z ${FAAS_SETUP_LOCKED:-} ]] && command -v flock >/dev/null 2>&1; then
  mkdir -p /run/lock
  exec 9>/run/lock/faas-setup.lock
  flock 9
  export FAAS_SETUP_LOCKED=1
fi

# "Version: 4.2.1" -> 4.2.1 ; empty if the binary is missing or does not run.
criu_version() {
  "$1" --version 2>/dev/null | sed -n 's/^Version:[[:space:]]*\([0-9][0-9.]*\).*/\1/p' | head -n1
}
version_ge() { [[ -n $1 && $(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1) == "$2" ]]; }

export DEBIAN_FRONTEND=noninteractive

# --- 1. build dependencies ---------------------------------------------------
missing=()
for p in "${BUILD_DEPS[@]}"; do
  [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing build dependencies: ${missing[*]}"
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    >/run/faas-build-criu-apt.log 2>&1 ||
    { cat /run/faas-build-criu-apt.log >&2; die "apt-get failed"; }
fi

# --- 2. a deb-src entry for sid that reuses the configured Debian archive ----
# shellcheck source=/dev/null
codename=$( (. /etc/os-release 2>/dev/null && printf '%s' "${VERSION_CODENAME:-}") || true)

# Prints "URIs<TAB>Signed-By" for each enabled stanza/line of the main Debian
# archive: component "main" and a plain release suite (the host's codename or
# stable/testing/unstable/sid; never -security, -updates or -backports).
archive_candidates() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f $f && $f != "$SRC_FILE" ]] || continue
    awk -v cn="$codename" '
      function flush(   i, n, s, ok, okc) {
        if (uris != "" && types ~ /(^|[ \t])deb(-src)?([ \t]|$)/ && tolower(enabled) != "no") {
          n = split(suites, s, /[ \t]+/); ok = 0
          for (i = 1; i <= n; i++)
            if (s[i] == cn || s[i] ~ /^(stable|testing|unstable|sid)$/ || (cn == "" && s[i] !~ /[-\/]/)) ok = 1
          n = split(comps, s, /[ \t]+/); okc = 0
          for (i = 1; i <= n; i++) if (s[i] == "main") okc = 1
          if (ok && okc) print uris "\t" signed
        }
        types = uris = suites = comps = signed = enabled = ""; field = ""
      }
      /^#/ { next }
      /^[ \t]*$/ { flush(); next }
      /^[ \t]/ { if (field == "signed-by") signed = "INLINE"; next }   # continuation line
      {
        field = tolower($0); sub(/:.*/, "", field)
        val = $0; sub(/^[^:]*:[ \t]*/, "", val); sub(/[ \t]+$/, "", val)
        if (field == "types") types = val
        else if (field == "uris") uris = val
        else if (field == "suites") suites = val
        else if (field == "components") comps = val
        else if (field == "signed-by") signed = val
        else if (field == "enabled") enabled = val
      }
      END { flush() }' "$f"
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [[ -f $f ]] || continue
    awk -v cn="$codename" '
      /^[ \t]*(#|$)/ { next }
      $1 == "deb" || $1 == "deb-src" {
        i = 2; signed = ""
        if ($2 ~ /^\[/) {
          for (; i <= NF; i++) {
            if ($i ~ /^\[?signed-by=/) { s = $i; sub(/^\[?signed-by=/, "", s); sub(/\]$/, "", s); signed = s }
            if ($i ~ /\]$/) { i++; break }
          }
        }
        uri = $i; suite = $(i + 1); okc = 0
        for (j = i + 2; j <= NF; j++) if ($j == "main") okc = 1
        if (okc && (suite == cn || suite ~ /^(stable|testing|unstable|sid)$/ || (cn == "" && suite !~ /[-\/]/)))
          print uri "\t" signed
      }' "$f"
  done
}

candidates=$(archive_candidates | grep -v '^cdrom:' || true)
# Prefer an archive whose URI path ends in /debian (the usual layout).
chosen=$(printf '%s\n' "$candidates" | awk -F'\t' '$1 ~ /\/debian\/?([ \t]|$)/ { print; exit }')
[[ -n $chosen ]] || chosen=$(printf '%s\n' "$candidates" | sed -n '1p')
[[ -n $chosen ]] || die "no Debian archive (suite ${codename:-?}, component main) found in /etc/apt/sources.list{,.d/*}"
uris=${chosen%%$'\t'*}
signed=${chosen#*$'\t'}
if [[ ! $signed == /* || ! -f $signed ]]; then
  signed=""
  [[ -f $DEFAULT_KEYRING ]] && signed=$DEFAULT_KEYRING
fi

want="# Managed by faas scripts/build-criu.sh: sid *source* packages only (to build CRIU).
# Types is deb-src only, so no sid binary package can be installed from this entry.
Types: deb-src
URIs: $uris
Suites: sid
Components: main"
[[ -n $signed ]] && want+=$'\n'"Signed-By: $signed"
if [[ ! -f $SRC_FILE || "$(cat "$SRC_FILE")" != "$want" ]]; then
  log "writing $SRC_FILE (deb-src sid, URIs: $uris)"
  printf '%s\n' "$want" >"$SRC_FILE"
fi

# Refresh the sid source index: only this one entry (about 12 MB), whatever
# the state of the other lists (step 1's update ran before the file existed).
log "updating the sid source index"
empty_parts=$(mktemp -d)
trap 'rm -rf "$empty_parts"' EXIT
apt-get update -qq \
  -o Dir::Etc::SourceList="$SRC_FILE" \
  -o Dir::Etc::SourceParts="$empty_parts" \
  -o APT::Get::List-Cleanup=0

# --- 3. fetch and unpack the source package ---------------------------------
# `apt-get source --print-uris` lists the files of the source package with the
# hashes from the signed sid index; each is fetched by apt's own downloader
# (same proxy and transport configuration), verified against that hash.
mapfile -t entries < <(apt-get source --print-uris -qq criu/sid 2>/dev/null |
  sed -n "s/^'\([^']*\)' \([^ ]*\) [0-9]* \([^ ]*\)\$/\1 \2 \3/p")
dsc="" orig="" debtar=""
for e in "${entries[@]}"; do
  read -r _ name _ <<<"$e"
  case $name in
    criu_*.dsc) dsc=$name ;;
    criu_*.orig.tar.*) orig=$name ;;
    criu_*.debian.tar.*) debtar=$name ;;
  esac
done
[[ -n $dsc && -n $orig ]] || die "criu not found in the sid source index"
debver=${dsc#criu_}; debver=${debver%.dsc}             # 4.2.1-1
upver=${debver#*:}; upver=${upver%-*}                   # 4.2.1
version_ge "$upver" "$MIN_VERSION" || die "sid has criu $debver, older than $MIN_VERSION"

mkdir -p "$BUILD_DIR"
cd "$BUILD_DIR"
have=()
for e in "${entries[@]}"; do
  read -r uri name hash <<<"$e"
  if [[ -f $name && $hash == SHA256:* ]] && sha256sum "$name" | grep -q "^${hash#SHA256:} "; then
    have+=("$name"); continue
  fi
  rm -f "$name"
  if /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$uri" "$BUILD_DIR/$name" "$hash" \
      >"$BUILD_DIR/fetch.log" 2>&1; then
    log "fetched $name"
    have+=("$name")
  else
    log "could not fetch $name: $(grep -m1 '^E:' "$BUILD_DIR/fetch.log" || tail -n1 "$BUILD_DIR/fetch.log")"
  fi
done
has() { local x; for x in "${have[@]}"; do [[ $x == "$1" ]] && return 0; done; return 1; }
has "$orig" || die "could not fetch $orig (see $BUILD_DIR/fetch.log)"

# Prefer the full Debian source (dpkg-source applies the 3.0 (quilt) patches
# itself; no quilt needed). Some mirrors lack the small debian.tar: then build
# the pristine upstream tarball, whose hash the signed index still vouches for.
mode=upstream
[[ -n $debtar ]] && has "$debtar" && has "$dsc" && mode=debian
srcdir=$BUILD_DIR/criu-$upver
unpacked="$mode $debver patches $(patches_hash)"
if [[ $(cat "$srcdir/.faas-unpacked" 2>/dev/null || true) != "$unpacked" ]]; then
  rm -rf "$srcdir"
  if [[ $mode == debian ]]; then
    log "unpacking Debian source package criu $debver"
    dpkg-source -x "$dsc" "$srcdir" >>"$BUILD_DIR/fetch.log" 2>&1 ||
      { tail -n 20 "$BUILD_DIR/fetch.log" >&2; die "dpkg-source -x $dsc failed"; }
  else
    log "warning: ${debtar:-the debian tarball} unavailable: building upstream criu $upver without Debian's patches"
    mkdir -p "$srcdir"
    tar -xf "$orig" -C "$srcdir" --strip-components=1
  fi
  [[ -f $srcdir/Makefile ]] || die "unpacked source not found in $srcdir"
  for p in "$PATCH_DIR"/*.patch; do
    [[ -f $p ]] || continue
    log "applying $(basename "$p")"
    patch -d "$srcdir" -p1 --forward --quiet <"$p" || die "patch $p failed"
  done
  printf '%s\n' "$unpacked" >"$srcdir/.faas-unpacked"
else
  log "reusing unpacked source $srcdir ($mode $debver)"
fi

# --- 4. build only the criu binary (no docs, man pages, plugins or libcriu) --
log "building criu $upver (make -j$(nproc) criu; log: $BUILD_DIR/build.log)"
start=$SECONDS
if ! make -C "$srcdir" -j"$(nproc)" criu >"$BUILD_DIR/build.log" 2>&1; then
  tail -n 40 "$BUILD_DIR/build.log" >&2
  die "make criu failed (full log: $BUILD_DIR/build.log)"
fi
[[ -x $srcdir/criu/criu ]] || die "build produced no $srcdir/criu/criu"
log "built in $((SECONDS - start)) s"

# --- 5. install and verify ----------------------------------------------------
install -d -m 0755 "$(dirname "$DEST")"
install -m 0755 "$srcdir/criu/criu" "$DEST.new"
mv -f "$DEST.new" "$DEST"

got=$(criu_version "$DEST")
version_ge "$got" "$MIN_VERSION" || die "$DEST reports version '${got:-none}', need >= $MIN_VERSION"
install -d -m 0755 "$(dirname "$STAMP")"
printf 'patches %s\n' "$(patches_hash)" >"$STAMP"
log "installed $DEST (version $got, faas patches $(patches_hash))"

# `criu check` fails on any missing feature, including non-essential ones:
# report it, do not fail on it.
if check_out=$("$DEST" check 2>&1); then
  log "criu check: ${check_out:-ok}"
else
  log "criu check reported problems (not fatal):"
  printf '%s\n' "$check_out" | sed 's/^/  /'
fi
