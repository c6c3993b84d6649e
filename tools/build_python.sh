#!/usr/bin/env bash
# Make a CPython that this machine does not ship available to the test matrix,
# cached outside the clone, and print (last line of stdout) one executable path
# that runs it like any other `python` (`-m venv`, `-m pip`, `-c` work through it).
#
#   bash tools/build_python.sh 3.14    # Debian unstable's python3.14, in a chroot
#   bash tools/build_python.sh 3.15    # Debian unstable's python3.15, in a chroot
#   bash tools/build_python.sh 3.14t   # free-threaded (--disable-gil), built from
#   bash tools/build_python.sh 3.13t   #   Debian's python3.X source package
#   bash tools/build_python.sh unmount # undo the chroot's bind mounts (do this
#                                      # before deleting the cache: they include /work)
#
# X.Y (no "t"): a debootstrap chroot (amd64) of Debian unstable, shared by all
# such versions, with pythonX.Y, its venv and dev packages, a C compiler and what
# the test suite runs beside the interpreter (pgbouncer, iproute2, iptables, MIT
# Kerberos). The printed path is a wrapper: it bind-mounts (once; idempotent)
# /proc, /sys, /dev, /tmp, /work, the PostgreSQL builds of the cache, and the
# current directory's top-level directory when it is none of those, then runs
# the interpreter in the chroot in the same current directory. The chroot
# shares the host's network (loopback included). The wrapper lives at the same
# path inside the chroot as the interpreter itself, so a venv made through it
# points back to it, and a venv's bin/python runs from the host as well.
#
# X.Yt: a free-threaded CPython built on the host from the upstream tarball of
# Debian's pythonX.Y source package (the newest one of the suites unstable,
# testing and this release whose tarball the mirror serves), configured with
# --disable-gil, installed into the cache. It prints $prefix/bin/pythonX.Yt.
#
# Reused when "$prefix/.psycancel-complete" exists; built again when it does not.
#
# Environment:
#   PSYCANCEL_CACHE_DIR   cache root (as tools/build_postgres.sh)
#   PSYCANCEL_JOBS        parallel make jobs (default: nproc)
#   PSYCANCEL_NICE        niceness of the compile (default 10: the machine is shared)
#   PSYCANCEL_CHROOT_BINDS  more host directories to bind-mount into the chroot
#                         (space-separated; a directory is mounted at its own path)
#
# The Debian mirror is derived from this machine's own apt sources. Needs root
# (debootstrap, chroot, mount). All progress goes to stderr.
set -euo pipefail

version="${1:?usage: $0 X.Y|X.Yt|unmount (e.g. 3.14, 3.15, 3.14t)}"
if [ "$version" = unmount ]; then
    # The chroot's bind mounts (/work, /tmp, ... under it) go away: do this before
    # deleting the cache, or `rm -rf` would reach into those directories. The
    # wrappers mount them again on their next run.
    if [ "$(id -u)" = 0 ]; then c=/var/cache/psycancel; else c="${XDG_CACHE_HOME:-$HOME/.cache}/psycancel"; fi
    r="${PSYCANCEL_CACHE_DIR:-$c}/chroot-unstable"
    for _ in 1 2 3 4 5; do
        points="$(awk -v p="$r" '$5 == p || index($5, p "/") == 1 { print $5 }' /proc/self/mountinfo |
            sort -r -u)"
        [ -n "$points" ] || break
        while IFS= read -r m; do
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
        done <<<"$points"
    done
    if awk -v p="$r" '$5 == p || index($5, p "/") == 1 { found = 1 } END { exit !found }' \
            /proc/self/mountinfo; then
        echo "build_python: could not unmount everything under $r" >&2
        exit 1
    fi
    echo "build_python: nothing mounted under $r any more" >&2
    exit 0
fi
case "$version" in
    3.[0-9]|3.[0-9][0-9]|3.[0-9]t|3.[0-9][0-9]t) ;;
    *) echo "usage: $0 X.Y|X.Yt (e.g. 3.14, 3.15, 3.14t)" >&2; exit 2 ;;
esac
if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/psycancel
else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/psycancel"; fi
cache="${PSYCANCEL_CACHE_DIR:-$default_cache}"
jobs="${PSYCANCEL_JOBS:-$(nproc 2>/dev/null || echo 2)}"
niceness="${PSYCANCEL_NICE:-10}"

log() { printf 'build_python: %s\n' "$*" >&2; }
[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot, mount)"; exit 1; }

mirror() {
    # The first Debian mirror that this machine's apt sources name.
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || { log "cannot derive a Debian mirror from /etc/apt"; return 1; }
    echo "$uri"
}

install_host_packages() {
    local need=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        log "installing on the host: ${need[*]}"
        flock /var/lock/psycancel-apt.lock apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive flock /var/lock/psycancel-apt.lock apt-get install -y -qq "${need[@]}" >&2
    fi
}

fetch_orig() {
    # $1: a Debian source package, $2: a directory. Downloads the upstream tarball
    # of the newest version that the suites unstable, testing and this release
    # list and the mirror serves (checksum verified; the Debian patches are not
    # needed), and prints its path. A deb-src entry per suite is derived from
    # this machine's apt sources.
    local pkg="$1" work="$2" uri codename suite
    uri="$(mirror)"
    codename="$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)"
    for suite in unstable testing ${codename:+"$codename"}; do
        local lists="$work/lists-$suite" list="$work/$suite.list"
        mkdir -p "$lists/partial"
        echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$list"
        local opts=(-o "Dir::Etc::sourcelist=$list" -o "Dir::Etc::sourceparts=-"
                    -o "Dir::State::Lists=$lists" -o "APT::Get::List-Cleanup=0"
                    -o "APT::Sandbox::User=root")
        [ -f "$lists/.updated" ] ||
            { apt-get "${opts[@]}" update -qq >&2 2>&1 && touch "$lists/.updated"; } || continue
        # "directory sha256 name" of each listed version's upstream tarball
        # (Directory comes after the checksums in a record: print at its end).
        local entries
        entries="$(apt-cache "${opts[@]}" showsrc "$pkg" 2>/dev/null | awk '
            function flush() { if (name != "") print dir, sha, name; dir = sha = name = "" }
            /^Package:/ { flush(); in_sums = 0 }
            /^Directory:/ { dir = $2 }
            /^Checksums-Sha256:/ { in_sums = 1; next }
            /^[^ ]/ { in_sums = 0 }
            in_sums && $3 ~ /\.orig\.tar\.(xz|gz|bz2)$/ { sha = $1; name = $3 }
            END { flush() }' | sort -t_ -k2 -V -r)" || true
        local dir sha name
        while read -r dir sha name; do
            [ -n "$name" ] || continue
            log "fetching $name ($suite) via $uri"
            if curl -fsSL --retry 2 -o "$work/$name" "$uri/$dir/$name" 2>/dev/null &&
                    echo "$sha  $work/$name" | sha256sum -c --quiet - >&2; then
                echo "$work/$name"
                return 0
            fi
            log "$name: not served by the mirror (or a checksum mismatch); trying the next one"
            rm -f "$work/$name"
        done <<<"$entries"
    done
    log "no $pkg source tarball could be fetched from unstable, testing or $codename"
    return 1
}

# =====================================================================================
# Free-threaded: built from Debian's source package
# =====================================================================================
build_free_threaded() {
    local xy="${version%t}"
    local prefix="$cache/python-$version" exe
    exe="$prefix/bin/python${xy}t"
    if [ -f "$prefix/.psycancel-complete" ] && [ -x "$exe" ]; then
        log "cached free-threaded build at $prefix"
        echo "$exe"
        return 0
    fi
    install_host_packages gcc make pkg-config dpkg-dev curl libssl-dev zlib1g-dev libffi-dev \
        libbz2-dev liblzma-dev libsqlite3-dev libncurses-dev libreadline-dev uuid-dev
    local work tarball
    work="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-pybuild.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    tarball="$(fetch_orig "python$xy" "$work")" || {
        log "(the mirror answered 404: retry later, or build another version, e.g. 3.13t)"
        return 1
    }
    log "unpacking $(basename "$tarball")"
    mkdir -p "$work/src"
    tar -xf "$tarball" -C "$work/src" --strip-components=1
    rm -rf "$prefix"
    mkdir -p "$prefix"
    cd "$work/src"
    log "configuring --disable-gil (prefix $prefix)"
    nice -n "$niceness" ./configure --prefix="$prefix" --disable-gil --with-ensurepip=install \
        --without-static-libpython LDFLAGS="-Wl,-rpath,$prefix/lib" >"$work/configure.log" 2>&1 ||
        { tail -40 "$work/configure.log" >&2; return 1; }
    log "building with $jobs jobs (nice $niceness)"
    nice -n "$niceness" make -j"$jobs" -s >"$work/make.log" 2>&1 ||
        { tail -60 "$work/make.log" >&2; return 1; }
    nice -n "$niceness" make -s install >"$work/install.log" 2>&1 ||
        { tail -40 "$work/install.log" >&2; return 1; }
    [ -x "$exe" ] || { log "no $exe after the install"; return 1; }
    "$exe" -c 'import sys; assert not sys._is_gil_enabled(); print(sys.version)' >&2
    touch "$prefix/.psycancel-complete"
    echo "$exe"
}

# =====================================================================================
# Debian unstable's interpreter, in a chroot
# =====================================================================================
root="$cache/chroot-unstable"
chroot_packages() {
    # What every chroot Python and the suite need, plus pythonX.Y for $1.
    echo "python$1 python$1-venv python$1-dev gcc g++ make libc6-dev pkg-config ca-certificates" \
        "libssl-dev libffi-dev libkrb5-dev pgbouncer iproute2 iptables krb5-kdc krb5-admin-server" \
        "krb5-user procps haproxy"
}

make_chroot() {
    local packages
    packages="$(chroot_packages "$version" | tr -s ' ' ',')"
    install_host_packages debootstrap
    local uri tmp="$root.tmp"
    uri="$(mirror)"
    local attempt
    for attempt in 1 2; do  # (twice at most: the mirror may drop a download midway)
        rm -rf "$tmp"
        log "debootstrap of unstable (amd64) into $root via $uri"
        nice -n "$niceness" debootstrap --arch=amd64 --variant=minbase --include="$packages" \
            unstable "$tmp" "$uri" >"${TMPDIR:-/tmp}/psycancel-debootstrap.log" 2>&1 && break
        tail -30 "${TMPDIR:-/tmp}/psycancel-debootstrap.log" >&2
        [ "$attempt" = 1 ] || return 1
    done
    mv "$tmp" "$root"
    touch "$root/.psycancel-complete"
}

write_wrapper() {
    # $1: X.Y. The host side: $cache/python-X.Y/bin/pythonX.Y (this script's
    # enter function, inlined); the chroot side: the same path, a symlink to
    # /usr/bin/pythonX.Y.
    local xy="$1" dir="$cache/python-$1/bin"
    mkdir -p "$dir" "$root$dir"
    ln -sfn "/usr/bin/python$xy" "$root$dir/python$xy"
    cat >"$dir/python$xy.tmp" <<EOF
#!/bin/sh
# Runs Debian unstable's python$xy in the chroot $root, in the current
# directory (written by tools/build_python.sh). \$0 may be a venv's bin/python:
# that path is the same inside the chroot, where it leads to the interpreter.
root='$root'
cache='$cache'
EOF
    cat >>"$dir/python$xy.tmp" <<'EOF'
cwd="$(pwd -P)"
top="/$(echo "$cwd" | cut -d/ -f2)"
mounted() { awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; }
same_dir() { [ "$(stat -c %d:%i "$1" 2>/dev/null)" = "$(stat -c %d:%i "$2" 2>/dev/null)" ]; }
mount_all() {
    # The chroot's / a mount point of its own (ip netns makes it a slave mount).
    mounted "$root" || mount --rbind "$root" "$root"
    mounted "$root/proc" || mount -t proc proc "$root/proc"
    mounted "$root/sys" || mount --rbind /sys "$root/sys"
    mounted "$root/dev" || mount --rbind /dev "$root/dev"
    for d in /tmp /var/tmp /work "$cache"/postgresql-* "$cache"/libpq-* "$cache"/pgbouncer \
            ${PSYCANCEL_CHROOT_BINDS:-} "$@"; do
        [ -d "$d" ] || continue
        mkdir -p "$root$d"
        # A bind left by an earlier run may show a directory deleted since (a CI
        # clone made again at the same path): the chroot would not see the new one.
        for _ in 1 2 3; do
            mounted "$root$d" && ! same_dir "$d" "$root$d" || break
            umount -l "$root$d"
        done
        mounted "$root$d" || mount --bind "$d" "$root$d"
    done
    # Name resolution, and the host's trust store and pip configuration (a
    # package proxy with a CA of its own works in the chroot as on the host).
    for f in /etc/resolv.conf /etc/hosts /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
        [ -f "$f" ] && ! cmp -s "$f" "$root$f" && cp "$f" "$root$f"
    done
    return 0
}
extra=""
case "$top" in /|/proc|/sys|/dev|/etc|/usr|/bin|/sbin|/lib|/lib64|/var|/root|/run) ;; *) extra="$top" ;; esac
# One mounter at a time (the venvs of a matrix start in parallel).
exec 9>"$root/.mount.lock"
flock 9
mount_all $extra
flock -u 9
exec 9>&-
exec chroot "$root" /bin/sh -c 'cd "$1" 2>/dev/null || cd /; shift; exec "$@"' sh "$cwd" "$0" "$@"
EOF
    chmod +x "$dir/python$xy.tmp"
    mv "$dir/python$xy.tmp" "$dir/python$xy"
    echo "$dir/python$xy"
}

chroot_legacy_libpq() {
    # The suite's legacy fallback tests need a system libpq older than 17 and its
    # pg_config (tools/install_test_drivers.sh builds psycopg2 against it); unstable
    # ships 18 only. Build libpq alone from an older PostgreSQL source package
    # (tools/build_postgres.sh, run in the chroot) into the chroot's /usr/local.
    [ -f "$root/usr/local/.psycancel-legacy-gss" ] && [ -e "$root/usr/local/lib/libpq.so.5" ] && return 0
    local work tarball="" major here
    here="$(cd "$(dirname "$0")" && pwd)"
    work="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-libpq.XXXXXX")"
    for major in 16 15; do
        tarball="$(fetch_orig "postgresql-$major" "$work")" && break
    done
    [ -n "$tarball" ] || { log "no PostgreSQL 15/16 source for the chroot's legacy libpq"; rm -rf "$work"; return 1; }
    mkdir -p "$root/root/psycancel-src"
    cp "$tarball" "$here/build_postgres.sh" "$root/root/psycancel-src/"
    log "building libpq $major (with GSSAPI, as Debian's) into the chroot's /usr/local (the legacy libpq)"
    rm -f "$root/usr/local/.psycancel-complete"
    chroot "$root" env PSYCANCEL_PG_TARBALL="/root/psycancel-src/$(basename "$tarball")" PSYCANCEL_PG_GSSAPI=1 \
        PSYCANCEL_PG_MAJOR="$major" PSYCANCEL_PG_LIBPQ_ONLY=1 PSYCANCEL_PG_INSTALL_PREFIX=/usr/local \
        PSYCANCEL_JOBS="$jobs" nice -n "$niceness" bash /root/psycancel-src/build_postgres.sh >/dev/null
    ln -sfn /usr/local/bin/pg_config "$root/usr/bin/pg_config"
    chroot "$root" ldconfig
    touch "$root/usr/local/.psycancel-legacy-gss"
    rm -rf "$work" "$root/root/psycancel-src"
}

# What a chroot Python's stamp must say to be reused (bump when the recipe changes).
chroot_recipe="2: packages with haproxy; legacy libpq with GSSAPI; / a mount point"

build_chroot_python() {
    local xy="$version" stamp="$cache/python-$version/.psycancel-complete" exe
    exe="$cache/python-$xy/bin/python$xy"
    if [ -x "$exe" ] && [ -x "$root/usr/bin/python$xy" ] &&
            [ "$(cat "$stamp" 2>/dev/null)" = "$chroot_recipe" ]; then
        log "cached: python$xy in the chroot $root"
        write_wrapper "$xy"  # (cheap: this script's current wrapper)
        return 0
    fi
    # One chroot set-up at a time (the matrix builds 3.14 and 3.15 side by side).
    mkdir -p "$cache"
    exec 8>"$cache/.chroot.lock"
    flock 8
    [ -f "$root/.psycancel-complete" ] || make_chroot
    # The mirror may serve a frozen unstable whose Release file has expired.
    echo 'Acquire::Check-Valid-Until "false";' >"$root/etc/apt/apt.conf.d/99psycancel"
    local missing=() pkg
    for pkg in $(chroot_packages "$xy"); do
        chroot "$root" dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
            grep -q "install ok installed" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "installing in the chroot: ${missing[*]}"
        flock "$root/.apt.lock" chroot "$root" apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive flock "$root/.apt.lock" chroot "$root" apt-get install -y -qq "${missing[@]}" >&2
    fi
    chroot_legacy_libpq
    exe="$(write_wrapper "$xy")"
    "$exe" -c 'import sys, venv, ensurepip; print(sys.version)' >&2
    echo "$chroot_recipe" >"$stamp"
    echo "$exe"
}

case "$version" in
    *t) build_free_threaded ;;
    *) build_chroot_python ;;
esac
