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
#   PSYCANCEL_PG_GSSAPI=1 also build with GSSAPI (MIT Kerberos; libkrb5-dev is
#                         installed on Debian), into its own cache key
#                         "$cache/postgresql-$major-gss" (tests/gss/ use it), so
#                         that the default build is never rebuilt under a user.
#
# A libpq-only build (made for the wheels that bundled libpq; no wheel does
# now, docs/wheels.md: a libpq to test against). None of these changes the
# default build above.
#   PSYCANCEL_PG_LIBPQ_ONLY=1  build and install only what a client needs:
#                         src/include, src/common, src/port, src/interfaces/libpq
#                         and pg_config (no server, no zlib/ICU/readline); default
#                         prefix "$cache/libpq-$major", reused when its stamp exists.
#   PSYCANCEL_PG_INSTALL_PREFIX  install exactly there instead of under the cache.
#   PSYCANCEL_BUILD_OPENSSL=1  first build OpenSSL (shared) into the same prefix and
#                         build PostgreSQL against it: for platforms whose OpenSSL
#                         is too old or not meant to be bundled (manylinux, macOS).
#   PSYCANCEL_OPENSSL_TARBALL  its source, a local path or an http(s) URL; default:
#                         Debian's openssl source package (Debian only, as above).
#   PSYCANCEL_OPENSSL_DIR  OPENSSLDIR of that build, where it looks for its
#                         configuration and CA certificates (default /etc/ssl).
#   PSYCANCEL_SKIP_DEPS=1  do not install build dependencies (the caller did).
#
# Build dependencies are installed with apt-get on Debian and derivatives, dnf
# or yum (manylinux), apk (musllinux); elsewhere (macOS: Xcode command line
# tools and its bison/flex/perl suffice) nothing is installed.
#
# All progress goes to stderr; stdout carries only the prefix.
set -euo pipefail

major="${PSYCANCEL_PG_MAJOR:-18}"
libpq_only="${PSYCANCEL_PG_LIBPQ_ONLY:-0}"
[ "$libpq_only" = 1 ] || libpq_only=0
with_openssl_build="${PSYCANCEL_BUILD_OPENSSL:-0}"
[ "$with_openssl_build" = 1 ] || with_openssl_build=0
with_gssapi="${PSYCANCEL_PG_GSSAPI:-0}"
[ "$with_gssapi" = 1 ] || with_gssapi=0
if [ "$(id -u)" = 0 ]; then default_cache=/var/cache/psycancel
else default_cache="${XDG_CACHE_HOME:-$HOME/.cache}/psycancel"; fi
cache="${PSYCANCEL_CACHE_DIR:-$default_cache}"
if [ "$libpq_only" = 1 ]; then prefix="$cache/libpq-$major"; else prefix="$cache/postgresql-$major"; fi
[ "$with_gssapi" = 0 ] || prefix="$prefix-gss"
prefix="${PSYCANCEL_PG_INSTALL_PREFIX:-$prefix}"
stamp="$prefix/.psycancel-complete"
jobs="${PSYCANCEL_JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)}"

log() { printf 'build_postgres: %s\n' "$*" >&2; }

if [ "$libpq_only" = 1 ]; then
    if [ -f "$stamp" ] && { [ -e "$prefix/lib/libpq.so.5" ] || [ -e "$prefix/lib/libpq.5.dylib" ]; }; then
        log "cached libpq build at $prefix"
        echo "$prefix"
        exit 0
    fi
elif [ -f "$stamp" ] && [ -x "$prefix/bin/postgres" ]; then
    log "cached build at $prefix"
    echo "$prefix"
    exit 0
fi

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        log "need root to run: $*"; return 1; fi
}

# --- build dependencies -------------------------------------------------------
install_debian_deps() {
    local need=() pkg
    local pkgs=(bison flex libssl-dev pkg-config make gcc zlib1g-dev dpkg-dev)
    [ "$with_gssapi" = 0 ] || pkgs+=(libkrb5-dev)
    for pkg in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
    done
    if [ "${#need[@]}" -gt 0 ]; then
        log "installing build dependencies: ${need[*]}"
        as_root flock /var/lock/psycancel-apt.lock apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive as_root flock /var/lock/psycancel-apt.lock apt-get install -y -qq "${need[@]}" >&2
    fi
}

install_other_deps() {
    # OpenSSL 3's Configure needs perl's IPC::Cmd, FindBin, Time::Piece.
    if command -v dnf >/dev/null || command -v yum >/dev/null; then
        local yum; yum="$(command -v dnf || command -v yum)"
        local pkgs=(bison flex perl tar bzip2 gzip xz curl)
        # manylinux's compiler is a gcc-toolset on PATH: keep it.
        command -v gcc >/dev/null || pkgs+=(gcc)
        command -v make >/dev/null || pkgs+=(make)
        if [ "$with_openssl_build" = 1 ]; then
            pkgs+=(perl-IPC-Cmd perl-FindBin perl-Time-Piece perl-File-Compare perl-File-Copy)
        else
            pkgs+=(openssl-devel)
        fi
        [ "$libpq_only" = 1 ] || pkgs+=(zlib-devel)
        log "installing build dependencies with $(basename "$yum"): ${pkgs[*]}"
        # Package names differ between releases: install what exists.
        for pkg in "${pkgs[@]}"; do as_root "$yum" install -y -q "$pkg" >&2 2>&1 || true; done
    elif command -v apk >/dev/null; then
        local pkgs=(bison flex perl make gcc musl-dev linux-headers tar bzip2 xz curl)
        [ "$with_openssl_build" = 1 ] || pkgs+=(openssl-dev)
        [ "$libpq_only" = 1 ] || pkgs+=(zlib-dev)
        log "installing build dependencies with apk: ${pkgs[*]}"
        as_root apk add --no-cache -q "${pkgs[@]}" >&2
    else
        log "no known package manager: assuming bison, flex, perl, make and a C compiler are there"
    fi
}

if [ "${PSYCANCEL_SKIP_DEPS:-0}" = 1 ]; then
    log "PSYCANCEL_SKIP_DEPS=1: not installing build dependencies"
elif command -v dpkg-query >/dev/null && command -v apt-get >/dev/null; then
    install_debian_deps
else
    install_other_deps
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-pgbuild.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# --- the release tarball -------------------------------------------------------
fetch_debian_source() {
    # Derive a deb-src entry for "unstable" from the first Debian mirror that
    # this machine's own apt configuration names. $1: source package (default
    # postgresql-$major), $2: suite (default unstable); prints the path of its
    # .orig tarball.
    local srcpkg="${1:-postgresql-$major}" suite="${2:-unstable}"
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || { log "cannot derive a Debian mirror from /etc/apt; set PSYCANCEL_PG_TARBALL"; return 1; }
    local lists="$work/apt-lists-$suite" srcfile="$work/psycancel-src-$suite.list"
    local dir="$work/deb-$srcpkg-$suite"
    mkdir -p "$lists/partial" "$dir"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $suite main" >"$srcfile"
    local opts=(-o "Dir::Etc::sourcelist=$srcfile" -o "Dir::Etc::sourceparts=-"
                -o "Dir::State::Lists=$lists" -o "APT::Get::List-Cleanup=0")
    log "fetching $srcpkg source package via $uri ($suite)"
    [ -f "$lists/.updated" ] || { apt-get "${opts[@]}" update -qq >&2 && touch "$lists/.updated"; }
    (cd "$dir" && apt-get "${opts[@]}" source --download-only -qq "$srcpkg" >&2 2>&1)
    ls "$dir"/"$srcpkg"_*.orig.tar.* | head -n1
}

fetch_tarball() {
    # $1: path or URL ("" = Debian source package $2, from suite $3); prints a
    # local path.
    case "$1" in
        "") fetch_debian_source "$2" "${3:-unstable}" ;;
        http://*|https://*)
            local out
            out="$work/$(basename "$1")"
            log "downloading $1"
            curl -fsSL -o "$out" "$1"
            echo "$out" ;;
        *) echo "$1" ;;
    esac
}

# --- OpenSSL into the prefix (optional: PSYCANCEL_BUILD_OPENSSL=1) -------------------
build_openssl() {
    local ossl_tarball
    # Debian: unstable's source, else this release's (mirrors may lack one of them).
    local codename
    codename="$( (. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}") || true)"
    ossl_tarball="$(fetch_tarball "${PSYCANCEL_OPENSSL_TARBALL:-}" openssl unstable 2>/dev/null)" ||
        ossl_tarball="$(fetch_tarball "${PSYCANCEL_OPENSSL_TARBALL:-}" openssl "${codename:-stable}")"
    [ -f "$ossl_tarball" ] || { log "no OpenSSL tarball at '$ossl_tarball'"; exit 1; }
    log "building OpenSSL from $(basename "$ossl_tarball") into $prefix"
    mkdir -p "$work/openssl"
    tar -xf "$ossl_tarball" -C "$work/openssl" --strip-components=1
    local target=()
    # Let Configure guess, except for macOS universal/cross builds (ARCHFLAGS).
    case "$(uname -s)-${ARCHFLAGS:-}" in
        Darwin-*x86_64*arm64*|Darwin-*arm64*x86_64*)
            log "universal2 needs two OpenSSL builds and lipo: not supported, build per arch"; exit 1 ;;
        Darwin-*arm64*) target=(darwin64-arm64-cc) ;;
        Darwin-*x86_64*) target=(darwin64-x86_64-cc) ;;
    esac
    local ossl_src="$work/openssl"
    if ! (cd "$ossl_src" && ./Configure ${target[@]+"${target[@]}"} --prefix="$prefix" \
            --libdir=lib --openssldir="${PSYCANCEL_OPENSSL_DIR:-/etc/ssl}" \
            shared no-tests no-module no-legacy no-engine "-Wl,-rpath,$prefix/lib") \
            >"$work/openssl-configure.log" 2>&1; then
        tail -40 "$work/openssl-configure.log" >&2; exit 1
    fi
    # Only the libraries and headers: no apps, no docs (any 3.x release).
    if ! make -C "$ossl_src" -j"$jobs" -s build_libs >"$work/openssl-make.log" 2>&1; then
        tail -60 "$work/openssl-make.log" >&2; exit 1
    fi
    if ! make -C "$ossl_src" -s install_dev >"$work/openssl-install.log" 2>&1; then
        tail -40 "$work/openssl-install.log" >&2; exit 1
    fi
}

src="${PSYCANCEL_PG_TARBALL:-}"
tarball="$(fetch_tarball "$src" "postgresql-$major")"
[ -f "$tarball" ] || { log "no tarball at '$tarball'"; exit 1; }

log "unpacking $(basename "$tarball")"
mkdir -p "$work/src"
tar -xf "$tarball" -C "$work/src" --strip-components=1

# --- configure, build, install ----------------------------------------------------
rm -rf "$prefix"
mkdir -p "$prefix"
extra=()
if [ "$with_openssl_build" = 1 ]; then
    build_openssl
    extra+=(--with-includes="$prefix/include" --with-libraries="$prefix/lib")
fi
[ "$with_gssapi" = 0 ] || extra+=(--with-gssapi)
if [ "$libpq_only" = 1 ]; then
    # A client library: nothing that only the server or the tools need.
    extra+=(--without-zlib --without-zstd --without-lz4)
fi
cd "$work/src"
log "configuring (prefix $prefix)"
./configure --prefix="$prefix" --with-openssl --without-icu --without-readline \
    --disable-nls ${extra[@]+"${extra[@]}"} >"$work/configure.log" 2>&1 ||
    { tail -40 "$work/configure.log" >&2; exit 1; }
log "building with $jobs jobs"
if [ "$libpq_only" = 1 ]; then
    # libpq pulls in src/common and src/port (their _shlib variants) itself.
    { make -C src/interfaces/libpq -j"$jobs" -s &&
      make -C src/bin/pg_config -j"$jobs" -s; } >"$work/make.log" 2>&1 ||
        { tail -60 "$work/make.log" >&2; exit 1; }
    { make -C src/include -s install &&
      make -C src/interfaces/libpq -s install &&
      make -C src/bin/pg_config -s install; } >"$work/install.log" 2>&1 ||
        { tail -40 "$work/install.log" >&2; exit 1; }
else
    make -j"$jobs" -s >"$work/make.log" 2>&1 || { tail -60 "$work/make.log" >&2; exit 1; }
    make -s install >"$work/install.log" 2>&1 || { tail -40 "$work/install.log" >&2; exit 1; }
fi
"$prefix/bin/pg_config" --version >&2
touch "$stamp"
echo "$prefix"
