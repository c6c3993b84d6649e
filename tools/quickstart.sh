#!/usr/bin/env bash
# Set everything up, then run the demo or the whole test suite.
#
#   bash tools/quickstart.sh demo   # throwaway server, cancel a query from asyncio
#   bash tools/quickstart.sh test   # everything CI runs (see below)
#
# Needs: Debian (or derivative) with Python >= 3.10, root or sudo for apt.
# Creates .venv in the clone (psycancel installed editable, its compiled twin
# linked with the PostgreSQL 18 build, so that both twins load that libpq by
# default); builds PostgreSQL 18 into a cache outside it (see
# tools/build_postgres.sh), reused on later runs.
#
# "test" runs: ruff and mypy --strict; the test suite once per twin; the sdist
# (tools/check_sdist.sh: its file list, twine check, installs in fresh venvs
# without Cython, without a C compiler, with Cython); the binary
# wheel (sdist, wheel, auditwheel, a fresh venv, the suite against it); the
# benchmarks' smoke runs; valgrind on the compiled twin; then tools/matrix.sh,
# the suite on every other CPython >= 3.10 of the machine (PSYCANCEL_MATRIX=0
# leaves that out).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-}"
case "$what" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac

log() { printf '\n== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

python="${PYTHON:-python3}"

# --- system packages the Python side needs (venv, headers, compiler) ---------------
need=()
"$python" -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
"$python" - <<'PY' 2>/dev/null || need+=(python3-dev)
import os, sysconfig, sys
sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)
PY
command -v gcc >/dev/null || need+=(gcc)
command -v openssl >/dev/null || need+=(openssl)
[ -f /usr/lib/x86_64-linux-gnu/libpq.so.5 ] || [ -n "$(ldconfig -p | grep 'libpq.so.5 ')" ] || need+=(libpq5)
if [ "${#need[@]}" -gt 0 ]; then
    log "installing system packages: ${need[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- PostgreSQL 18 (server + libpq >= 17) from source, cached -----------------------
log "PostgreSQL 18 (built once, then cached)"
prefix="$(bash tools/build_postgres.sh)"
export PSYCANCEL_PG_PREFIX="$prefix"

# --- the virtualenv, with the compiled twin -----------------------------------------
log "virtualenv .venv and psycancel (with its compiled twin)"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# PSYCANCEL_BUNDLE_LIBPQ: link the compiled twin with that libpq, as a wheel
# build does; psycancel then finds it as its default libpq (no variable needed).
PSYCANCEL_REQUIRE_EXT=1 PSYCANCEL_BUNDLE_LIBPQ="$prefix" \
    .venv/bin/python -m pip install -q -e '.[test,drivers,bench]'
.venv/bin/python -m psycancel info

if [ "$what" = demo ]; then
    log "demo"
    exec .venv/bin/python -m testing.demo
fi

log "test dependencies: drivers (psycopg2 also built against the system libpq), services"
bash tools/install_test_drivers.sh .venv
bash tools/install_test_services.sh

log "static checks"
.venv/bin/python -m ruff check .
.venv/bin/python -m mypy --strict psycancel

# Everything the tests need is installed above: a skip would hide a gap.
export PSYCANCEL_NO_SKIP=1
for impl in c python; do
    log "test suite, PSYCANCEL_IMPL=$impl"
    PSYCANCEL_IMPL="$impl" .venv/bin/python -m pytest -q -p no:cacheprovider tests
done

log "sdist: file list, twine check, installs without Cython / without a compiler / with Cython"
bash tools/check_sdist.sh

log "binary wheel: build, repair, install in a fresh venv, test suite against it"
PYTHON="$python" bash tools/build_wheel.sh

log "benchmarks, smoke form (correctness only, no timing assertions)"
.venv/bin/python benchmarks/run.py --quick >/dev/null
.venv/bin/python benchmarks/app.py --quick >/dev/null

log "memory checking of the compiled twin (valgrind, short form)"
PYTHON=.venv/bin/python bash tools/valgrind.sh --short

if [ "${PSYCANCEL_MATRIX:-1}" != 0 ]; then
    log "the suite on the machine's other CPythons (tools/matrix.sh)"
    bash tools/matrix.sh --skip "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
fi
log "all green"
