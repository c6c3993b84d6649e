#!/usr/bin/env bash
# Build PgBouncer (>= 1.19: so_reuseport peering, peer_id/[peers]) from Debian's
# source package into a cache directory outside the clone, and print the path of
# the pgbouncer binary on stdout.
#
# Used by tests/drivers/test_pgbouncer_peers.py (several PgBouncer processes
# sharing one port); Debian 12's packaged pgbouncer (1.18) has no peering.
# Reused when "$prefix/.psycancel-complete" exists; rebuilt when it does not.
#
# Environment:
#   PSYCANCEL_CACHE_DIR        cache root (as tools/build_postgres.sh: default
#                              /var/cache/psycancel as root, else ~/.cache/psycancel)
#   PSYCANCEL_PGBOUNCER_TARBALL a release tarball (local path); default: Debian's
#                              pgbouncer source package, the deb-src entry derived
#                              from this machine's own apt sources, suite
#                              "unstable", then "testing", then "trixie" (a suite
#                              whose files the mirror does not answer is skipped).
#   PSYCANCEL_JOBS             parallel make jobs (default: nproc); the build runs
#                              under nice.
# All progress goes to stderr; stdout carries only the binary's path.
set -euo pipefail

if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/psycancel
else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/psycancel"; fi
cache="${PSYCANCEL_CACHE_DIR:-$default_cache}"
prefix="$cache/pgbouncer"
stamp="$prefix/.psycancel-complete"
jobs="${PSYCANCEL_JOBS:-$(nproc 2>/dev/null || echo 2)}"

log() { printf 'build_pgbouncer: %s\n' "$*" >&2; }

if [ -f "$stamp" ] && [ -x "$prefix/bin/pgbouncer" ]; then
    log "cached build at $prefix"
    echo "$prefix/bin/pgbouncer"
    exit 0
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

need=()
for pkg in libevent-dev libssl-dev libc-ares-dev pkg-config make gcc dpkg-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    log "installing build dependencies: ${need[*]}"
    as_root flock /var/lock/psycancel-apt.lock apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root flock /var/lock/psycancel-apt.lock apt-get install -y -qq "${need[@]}" >&2
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-pgbouncer.XXXXXX")"
trap 'rm -rf "$work"' EXIT

fetch_debian_source() {
    # $1: suite. Prints the path of pgbouncer's .orig tarball from that suite.
    local suite="$1" uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || { log "cannot derive a Debian mirror from /etc/apt; set PSYCANCEL_PGBOUNCER_TARBALL"; return 1; }
    local lists="$work/apt-lists-$suite" srcfile="$work/src-$suite.list" dir="$work/deb-$suite"
    mkdir -p "$lists/partial" "$dir"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$srcfile"
    local opts=(-o "Dir::Etc::sourcelist=$srcfile" -o "Dir::Etc::sourceparts=-"
                -o "Dir::State::Lists=$lists" -o "APT::Get::List-Cleanup=0")
    log "fetching the pgbouncer source package ($suite)"
    apt-get "${opts[@]}" update -qq >&2 || return 1
    local try
    for try in 1 2 3; do  # mirrors sometimes answer 404 for a while: retry
        if (cd "$dir" && apt-get "${opts[@]}" source --download-only -qq pgbouncer >&2 2>&1); then
            ls "$dir"/pgbouncer_*.orig.tar.* | head -n1
            return 0
        fi
        log "attempt $try from $suite failed"
        sleep $((try * 5))
    done
    return 1
}

tarball="${PSYCANCEL_PGBOUNCER_TARBALL:-}"
if [ -z "$tarball" ]; then
    for suite in unstable testing trixie; do
        tarball="$(fetch_debian_source "$suite")" && [ -f "$tarball" ] && break
        tarball=""
    done
fi
[ -f "$tarball" ] || { log "no pgbouncer tarball could be fetched"; exit 1; }

log "unpacking $(basename "$tarball")"
mkdir -p "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1
cd "$work/src"
rm -rf "$prefix"
mkdir -p "$prefix"
log "configuring (prefix $prefix)"
nice ./configure --prefix="$prefix" --with-openssl --with-cares --without-pam \
    --without-systemd >"$work/configure.log" 2>&1 ||
    { tail -40 "$work/configure.log" >&2; exit 1; }
log "building with $jobs jobs"
nice make -j"$jobs" -s pgbouncer >"$work/make.log" 2>&1 || { tail -60 "$work/make.log" >&2; exit 1; }
mkdir -p "$prefix/bin"
install -m 0755 pgbouncer "$prefix/bin/pgbouncer"
"$prefix/bin/pgbouncer" --version >&2
chmod -R a+rX "$prefix"
touch "$stamp"
echo "$prefix/bin/pgbouncer"
