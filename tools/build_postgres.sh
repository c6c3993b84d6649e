#!/usr/bin/env bash
# Build PostgreSQL 18 (server + libpq, with OpenSSL) into a cache directory
# outside the clone, and print the install prefix on stdout.
#
# Reused when "$prefix/.psycancel-complete" exists; rebuilt when it does not.
#
# Environment:
#   PSYCANCEL_CACHE_DIR   cache root (default: /var/cache/psycancel as root, so
#                         that the unprivileged server user can read it;
#                         ${XDG_CACHE_HOME:-~/.cache}/psycancel otherwise)
#   PSYCANCEL_PG_TARBALL  a release tarball, as a local path or an http(s) URL;
#                         default: Debian's postgresql-18 source package (the
#                         deb-src entry is derived from this machine's own apt
#                         sources, suite "unstable").
#   PSYCANCEL_PG_MAJOR    major version to fetch from Debian (default 18)
#   PSYCANCEL_JOBS        parallel make jobs (default: nproc)
#
# All progress goes to stderr; stdout carries only the prefix.
set -euo pipefail

major="${PSYCANCEL_PG_MAJOR:-18}"
if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/psycancel
else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/psycancel"; fi
cache="${PSYCANCEL_CACHE_DIR:-$default_cache}"
prefix="$cache/postgresql-$major"
stamp="$prefix/.psycancel-complete"
jobs="${PSYCANCEL_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { printf 'build_postgres: %s\n' "$*" >&2; }

if [ -f "$stamp" ] && [ -x "$prefix/bin/postgres" ]; then
    log "cached build at $prefix"
    echo "$prefix"
    exit 0
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

# --- build dependencies -------------------------------------------------------
need=()
for pkg in bison flex libssl-dev pkg-config make gcc zlib1g-dev dpkg-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "installing build dependencies: ${need[*]}"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-pgbuild.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- the release tarball -------------------------------------------------------
fetch_debian_source() {
    # Derive a deb-src entry for "unstable" from the first Debian mirror that
    # this machine's own apt configuration names.
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || { log "cannot derive a Debian mirror from /etc/apt; set PSYCANCEL_PG_TARBALL"; return 1; }
    local lists="$work/apt-lists" srcfile="$work/psycancel-src.list"
    mkdir -p "$lists/partial"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri unstable main" >"$srcfile"
    local opts=(-o "Dir::Etc::sourcelist=$srcfile" -o "Dir::Etc::sourceparts=-"
                -o "Dir::State::Lists=$lists" -o "APT::Get::List-Cleanup=0")
    log "fetching postgresql-$major source package via $uri (unstable)"
    apt-get "${opts[@]}" update -qq >&2
    (cd "$work" && apt-get "${opts[@]}" source --download-only -qq "postgresql-$major" >&2 2>&1)
    ls "$work"/postgresql-"$major"_*.orig.tar.* | head -n1
}

src="${PSYCANCEL_PG_TARBALL:-}"
case "$src" in
    "") tarball="$(fetch_debian_source)" ;;
    http://*|https://*)
        tarball="$work/$(basename "$src")"
        log "downloading $src"
        curl -fsSL -o "$tarball" "$src" ;;
    *) tarball="$src" ;;
esac
[ -f "$tarball" ] || { log "no tarball at '$tarball'"; exit 1; }

log "unpacking $(basename "$tarball")"
mkdir -p "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1

# --- configure, build, install ----------------------------------------------------
rm -rf "$prefix"
mkdir -p "$prefix"
cd "$work/src"
log "configuring (prefix $prefix)"
./configure --prefix="$prefix" --with-openssl --without-icu --without-readline \
    --disable-nls >"$work/configure.log" 2>&1 || { tail -40 "$work/configure.log" >&2; exit 1; }
log "building with $jobs jobs"
make -j"$jobs" -s >"$work/make.log" 2>&1 || { tail -60 "$work/make.log" >&2; exit 1; }
make -s install >"$work/install.log" 2>&1 || { tail -40 "$work/install.log" >&2; exit 1; }
"$prefix/bin/pg_config" --version >&2
touch "$stamp"
echo "$prefix"
