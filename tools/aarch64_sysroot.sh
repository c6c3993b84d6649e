#!/usr/bin/env bash
# An arm64 Debian sysroot to run aarch64 Python under qemu-user, cached; prints its path.
#
#   bash tools/aarch64_sysroot.sh        # build once (a few minutes), then reuse
#
# `debootstrap --arch=arm64 --foreign` (first stage only: it unpacks the base
# packages and runs nothing, so no binfmt_misc is needed; the others are
# unpacked with dpkg -x) of the machine's own Debian release,
# from the mirror its apt sources name (read here at run time, never written
# anywhere), with Python 3, the system's libpq (< 17: the legacy libpq) and
# psycopg2 built against it (the legacy driver tests). Used by tools/qemu_aarch64.sh as
# `qemu-aarch64-static -L SYSROOT ...`.
#
# qemu-user's -L looks a path up in the sysroot first and falls back to the
# host's: /dev, /proc, /sys, /run and /tmp are removed from the sysroot so that
# they are the host's, and no openssl/pg_* binary is installed in it, so that the
# tests' subprocesses (the PostgreSQL server, the openssl command) run the
# host's x86_64 programs natively.
#
# Environment: PSYCANCEL_CACHE_DIR (default /var/cache/psycancel), the cache folder
# (as the other build scripts; PSYCANCEL_CACHE is still read).
set -euo pipefail
cache="${PSYCANCEL_CACHE_DIR:-${PSYCANCEL_CACHE:-/var/cache/psycancel}}"
root="$cache/sysroot-arm64"
stamp="$root/.psycancel-sysroot-v1"
log() { printf 'aarch64_sysroot: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if [ -e "$stamp" ]; then
    echo "$root"
    exit 0
fi

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]}"
    as_root flock /var/lock/psycancel-apt.lock apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root flock /var/lock/psycancel-apt.lock apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The machine's release and its main mirror, from its apt sources (deb822 or one-line).
. /etc/os-release
suite="${VERSION_CODENAME:?no VERSION_CODENAME in /etc/os-release}"
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    mirror="$(awk -v s="$suite" '
        /^URIs:/ { uri = $2 } /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == s) ok = 1 }
        /^$/ { if (ok && uri != "") { found = uri; exit } ok = 0; uri = "" }
        END { if (found == "" && ok) found = uri; if (found != "") print found }' "$f")"
    [ -n "$mirror" ] && break
done
if [ -z "$mirror" ]; then
    mirror="$(awk -v s="$suite" '$1 == "deb" && $3 == s { print $2; exit }' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)"
fi
[ -n "$mirror" ] || { log "no apt source for $suite found"; exit 1; }

log "debootstrap --arch=arm64 --foreign $suite into $root (mirror from the apt sources)"
# (Twice at most: a download the mirror drops midway ends debootstrap with status 2.)
for attempt in 1 2; do
    as_root rm -rf "$root.tmp"
    as_root debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,libpq5,python3-psycopg2,ca-certificates \
        "$suite" "$root.tmp" "$mirror" >&2 && break
    [ "$attempt" = 1 ] || { log "debootstrap failed twice"; exit 1; }
    log "debootstrap failed: once more"
done
# The first stage unpacks only the base system; the rest (--include) is left
# as .deb files for a second stage that would need to run arm64 code: unpack
# them here instead (no maintainer scripts are needed to run Python).
for deb in "$root.tmp"/var/cache/apt/archives/*.deb; do
    as_root dpkg -x "$deb" "$root.tmp"
done
# The host's, through qemu's fallback (see above).
as_root rm -rf "$root.tmp"/dev "$root.tmp"/proc "$root.tmp"/sys "$root.tmp"/run "$root.tmp"/tmp
as_root rm -rf "$root.tmp"/var/cache/apt/archives/*.deb
[ -x "$root.tmp/usr/bin/python3" ] || { log "no python3 in the sysroot"; exit 1; }
for forbidden in openssl pg_ctl postgres initdb; do
    if [ -e "$root.tmp/usr/bin/$forbidden" ]; then log "removing $forbidden (the host's must run)"; rm -f "$root.tmp/usr/bin/$forbidden"; fi
done
as_root rm -rf "$root"
as_root mv "$root.tmp" "$root"
touch "$stamp"
du -sh "$root" >&2
echo "$root"
