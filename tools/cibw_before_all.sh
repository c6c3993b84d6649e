#!/usr/bin/env bash
# cibuildwheel's before-all (pyproject.toml, [tool.cibuildwheel]): build the libpq
# that the wheels bundle, and the PostgreSQL server their tests run against.
# Runs once per platform: inside the manylinux / musllinux container (as root),
# on the macOS runner, or in Git Bash on the Windows runner. See docs/wheels.md.
#
#   1. OpenSSL + libpq (client only) into $PSYCANCEL_BUNDLE_LIBPQ, with
#      tools/build_postgres.sh (PSYCANCEL_PG_LIBPQ_ONLY=1 PSYCANCEL_BUILD_OPENSSL=1):
#      setup.py links the extension with it, the repair tool bundles it.
#   2. unless PSYCANCEL_CIBW_TEST_SERVER=0: a full PostgreSQL (server) build into
#      $PSYCANCEL_PG_PREFIX, for tools/cibw_test.sh, plus what the tests need from
#      the system (openssl command, an older libpq for the legacy path).
#
# Environment (defaults in pyproject.toml):
#   PSYCANCEL_BUNDLE_LIBPQ      prefix of the libpq to bundle (required)
#   PSYCANCEL_PG_PREFIX         prefix of the test server build (required unless
#                               PSYCANCEL_CIBW_TEST_SERVER=0)
#   PSYCANCEL_PG_VERSION        PostgreSQL release to fetch (default 18.6)
#   PSYCANCEL_OPENSSL_VERSION   OpenSSL release to fetch (default 3.5.9, an LTS)
#   PSYCANCEL_PG_TARBALL, PSYCANCEL_OPENSSL_TARBALL   local files or URLs instead
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
log() { printf '\n== cibw_before_all: %s\n' "$*" >&2; }

pg_version="${PSYCANCEL_PG_VERSION:-18.6}"
ossl_version="${PSYCANCEL_OPENSSL_VERSION:-3.5.9}"
export PSYCANCEL_PG_MAJOR="${pg_version%%.*}"
export PSYCANCEL_PG_TARBALL="${PSYCANCEL_PG_TARBALL:-https://ftp.postgresql.org/pub/source/v$pg_version/postgresql-$pg_version.tar.bz2}"
export PSYCANCEL_OPENSSL_TARBALL="${PSYCANCEL_OPENSSL_TARBALL:-https://github.com/openssl/openssl/releases/download/openssl-$ossl_version/openssl-$ossl_version.tar.gz}"
bundle="${PSYCANCEL_BUNDLE_LIBPQ:?set PSYCANCEL_BUNDLE_LIBPQ (pyproject.toml, [tool.cibuildwheel.*] environment)}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# Tarballs are fetched once and shared by both builds.
downloads="${TMPDIR:-/tmp}/psycancel-downloads"
mkdir -p "$downloads"
fetch() {  # $1: URL or path; prints a local path
    case "$1" in
        http://*|https://*)
            local out
            out="$downloads/$(basename "$1")"
            [ -s "$out" ] || curl -fsSL --retry 3 -o "$out" "$1"
            echo "$out" ;;
        *) echo "$1" ;;
    esac
}

case "$(uname -s)" in
    Linux|Darwin) ;;
    MINGW*|MSYS*|CYGWIN*)
        # Windows (untested; see docs/wheels.md): PostgreSQL's meson build of
        # libpq only, against the runner's OpenSSL. The compiled twin does not
        # build on Windows yet (it uses dlopen), so wheels.yml keeps this
        # platform experimental.
        log "Windows: libpq with meson into $bundle"
        python -m pip install -q meson ninja
        choco install -y --no-progress winflexbison3 >&2
        src="$(mktemp -d)"
        tar -xf "$(fetch "$PSYCANCEL_PG_TARBALL")" -C "$src" --strip-components=1
        ossl="${PSYCANCEL_WINDOWS_OPENSSL:-C:/Program Files/OpenSSL}"
        meson setup "$src/build" "$src" --prefix="$bundle" --buildtype=release \
            -Dssl=openssl -Dextra_include_dirs="$ossl/include" -Dextra_lib_dirs="$ossl/lib" \
            -Dnls=disabled -Dicu=disabled -Dreadline=disabled -Dzlib=disabled \
            -Dlz4=disabled -Dzstd=disabled -Dtap_tests=disabled
        ninja -C "$src/build" src/interfaces/libpq/libpq.dll src/bin/pg_config/pg_config.exe
        mkdir -p "$bundle/bin" "$bundle/lib" "$bundle/include"
        cp "$src/build/src/interfaces/libpq/libpq.dll" "$bundle/bin/"
        cp "$src/build/src/interfaces/libpq/libpq.lib" "$bundle/lib/"
        cp "$src/src/interfaces/libpq/libpq-fe.h" "$bundle/include/"
        cp "$ossl"/bin/libssl-*.dll "$ossl"/bin/libcrypto-*.dll "$bundle/bin/" 2>/dev/null || true
        exit 0 ;;
    *) log "unsupported system $(uname -s)"; exit 1 ;;
esac

if [ "$(uname -s)" = Darwin ]; then
    # The same minimum macOS as the wheels (cibuildwheel passes `environment`).
    export MACOSX_DEPLOYMENT_TARGET="${MACOSX_DEPLOYMENT_TARGET:-11.0}"
fi

# --- 1. OpenSSL + libpq, to bundle ---------------------------------------------------
log "OpenSSL $ossl_version + libpq $pg_version (client only) into $bundle"
PSYCANCEL_PG_TARBALL="$(fetch "$PSYCANCEL_PG_TARBALL")" \
PSYCANCEL_OPENSSL_TARBALL="$(fetch "$PSYCANCEL_OPENSSL_TARBALL")" \
PSYCANCEL_PG_LIBPQ_ONLY=1 PSYCANCEL_BUILD_OPENSSL=1 PSYCANCEL_PG_INSTALL_PREFIX="$bundle" \
    bash "$here/build_postgres.sh" >/dev/null
"$bundle/bin/pg_config" --version >&2

if [ "${PSYCANCEL_CIBW_TEST_SERVER:-1}" = 0 ]; then
    log "PSYCANCEL_CIBW_TEST_SERVER=0: no test server"
    exit 0
fi

# --- 2. the test server, and the system bits the suite uses --------------------------
server="${PSYCANCEL_PG_PREFIX:?set PSYCANCEL_PG_PREFIX for the test server build}"
log "PostgreSQL $pg_version server (for the tests only) into $server"
PSYCANCEL_PG_TARBALL="$(fetch "$PSYCANCEL_PG_TARBALL")" PSYCANCEL_PG_INSTALL_PREFIX="$server" \
    bash "$here/build_postgres.sh" >/dev/null
chmod -R a+rX "$server"  # the server runs as an unprivileged user when we are root

log "test prerequisites from the system"
if command -v dnf >/dev/null || command -v yum >/dev/null; then
    # manylinux: the openssl command (test certificates); the distribution's libpq
    # (13 on AlmaLinux 8) and its pg_config: the legacy (< 17) path.
    yum="$(command -v dnf || command -v yum)"
    as_root "$yum" install -y -q openssl libpq-devel >&2 || as_root "$yum" install -y -q openssl >&2
elif command -v apk >/dev/null; then
    # musllinux: Alpine's libpq is current (>= 17): no legacy libpq there.
    as_root apk add --no-cache -q openssl >&2
fi
command -v openssl >/dev/null || { log "the openssl command is missing"; exit 1; }
