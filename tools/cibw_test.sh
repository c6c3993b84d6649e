#!/usr/bin/env bash
# cibuildwheel's test-command (pyproject.toml): test the *installed* wheel.
#
# cibuildwheel runs it in a temporary directory holding copies of the
# test-sources (tests/, tools/, pyproject.toml), never the source tree, with the
# wheel installed in a fresh environment; "python" is that environment's.
#
#   1. always: the wheel's own checks - the compiled twin is active (POSIX),
#      Libpq.load() picks the bundled libpq, which has the PQcancelConn API and
#      TLS; `python -m psycancel info`;
#   2. where before-all built a server ($PSYCANCEL_PG_PREFIX/bin/postgres): the
#      test suite, against the bundled libpq (PSYCANCEL_TEST_LIBPQ=default), for
#      each twin in $PSYCANCEL_CIBW_TEST_IMPLS (default "c python"), spread over
#      $PSYCANCEL_TEST_WORKERS pytest-xdist workers (default: twice the CPU
#      count, at most 8; 0: one process), each with a server of its own.
#
# The legacy (< 17) path is tested where the system has an older libpq
# (manylinux: AlmaLinux's libpq 13); elsewhere PSYCANCEL_TEST_LEGACY_LIBPQ=none
# skips it. Driver tests use the drivers' binary wheels where they exist for the
# platform, and skip otherwise (CI is unset here on purpose: the full driver
# matrix is ci.yml's job).
set -euo pipefail
log() { printf '\n== cibw_test: %s\n' "$*" >&2; }
python="${PYTHON:-python}"
unset PSYCANCEL_LIBPQ PSYCANCEL_IMPL LD_LIBRARY_PATH PYTHONPATH PSYCANCEL_TEST_DSN CI

case "$(uname -s)" in MINGW*|MSYS*|CYGWIN*) windows=1 ;; *) windows=0 ;; esac

log "installed wheel checks"
"$python" - "$windows" <<'PY'
import os, sys
import psycancel, psycancel.pq as pq
from psycancel.pq import Libpq, libfind

site = os.path.dirname(os.path.dirname(os.path.realpath(psycancel.__file__)))
assert not os.path.exists(os.path.join(site, "setup.py")), f"{site} is a source tree"
if sys.argv[1] == "0":
    assert pq.__impl__ == "c", pq.__impl__
origin, path = libfind.default_libpq_origin()
lib = Libpq.load()
print(f"__impl__ = {pq.__impl__!r}; default libpq: {origin} {lib.path}")
print(f"version {lib.version}, has_cancel_conn {lib.has_cancel_conn}, TLS {lib.ssl_library}")
assert origin == "bundled", (origin, path)
assert os.path.realpath(lib.path).startswith(site + os.sep), (lib.path, site)
assert lib.version >= 170000 and lib.has_cancel_conn and lib.ssl_library, lib
PY
"$python" -m psycancel info

server="${PSYCANCEL_PG_PREFIX:-}"
if [ -z "$server" ] || [ ! -x "$server/bin/postgres" ]; then
    log "no PostgreSQL server build on this platform: installed-wheel checks only"
    exit 0
fi

log "drivers (binary wheels only; their tests skip where none exists)"
for req in 'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2' 'aiopg>=1.4' 'anyio>=4.4' 'trio>=0.25'; do
    "$python" -m pip install -q --only-binary ':all:' "$req" ||
        log "no binary wheel for $req here: its tests will skip"
done

legacy=""
for cand in /usr/lib64/libpq.so.5 /usr/lib/libpq.so.5 /usr/lib/*-linux-gnu/libpq.so.5; do
    [ -e "$cand" ] || continue
    if "$python" -c 'import sys; from psycancel.pq import Libpq
sys.exit(0 if Libpq.load(sys.argv[1]).version < 170000 else 1)' "$cand" 2>/dev/null; then
        legacy="$cand"; break
    fi
done
if [ -n "$legacy" ]; then
    export PSYCANCEL_TEST_LEGACY_LIBPQ="$legacy"
    if [ -x /usr/bin/pg_config ] && [ "$(id -u)" = 0 ]; then
        # psycopg2 from source against that libpq, for the legacy driver tests.
        bash tools/install_test_drivers.sh "$(dirname "$(dirname "$(command -v "$python")")")" ||
            log "legacy psycopg2 build failed: its tests will skip"
    fi
else
    export PSYCANCEL_TEST_LEGACY_LIBPQ=none
fi
log "legacy libpq: ${PSYCANCEL_TEST_LEGACY_LIBPQ}"

workers="${PSYCANCEL_TEST_WORKERS:-$("$python" -c \
    'import os; print(min(8, 2 * (os.cpu_count() or 1)))')}"
status=0
for impl in ${PSYCANCEL_CIBW_TEST_IMPLS:-c python}; do
    log "test suite, PSYCANCEL_IMPL=$impl, server from $server ($workers workers)"
    PSYCANCEL_IMPL="$impl" PSYCANCEL_TEST_LIBPQ=default \
        "$python" -m pytest -q -p no:cacheprovider -n "$workers" --rootdir "$PWD" tests ||
        status=$?
done
exit "$status"
