#!/usr/bin/env bash
# Install the real drivers the adapter tests use into the venv given as $1.
#
#   * psycopg2-binary (bundles libpq 17), psycopg[binary] (bundles libpq 18),
#     aiopg, AnyIO, Trio, gevent and psycogreen (the gevent tests and
#     benchmarks/gevent_hub.py): into the venv itself;
#   * the frameworks and pools the framework tests cancel through (SQLAlchemy 2
#     with its asyncio extra, Django 5, psycopg_pool, and asyncpg and pg8000 for
#     the dialects that have no libpq): into the venv itself;
#   * psycopg2 built from source against the system libpq (< 17, the legacy
#     fallback path): into "$VENV/psycancel-legacy-psycopg2", a directory of
#     its own, because its import name is psycopg2-binary's too. The tests run
#     it in child processes with PYTHONPATH pointing there (see
#     tests/support/drivers.py; $PSYCANCEL_LEGACY_PSYCOPG2 overrides the place).
#
# Needs: the system libpq headers and pg_config (Debian: libpq-dev, installed
# here when missing), Python headers and a C compiler (tools/quickstart.sh
# installs those). Idempotent: the source build is redone only when missing or
# not linked with a libpq < 17.
set -euo pipefail
venv="$(cd "${1:?usage: $0 VENV}" && pwd)"  # absolute: checked against module paths
py="$venv/bin/python"
log() { printf 'install_test_drivers: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

log "drivers from wheels (psycopg2-binary, psycopg[binary], aiopg, anyio, trio, gevent, psycogreen)"
"$py" -m pip install -q 'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2' 'aiopg>=1.4' \
    'anyio>=4.4' 'trio>=0.25' 'gevent>=24' 'psycogreen>=1.0'

log "OpenTelemetry API and SDK (the telemetry tests read the SDK's in-memory reader)"
"$py" -m pip install -q 'opentelemetry-api>=1.20' 'opentelemetry-sdk>=1.20'

log "frameworks and pools (SQLAlchemy 2, Django 5, psycopg_pool; asyncpg and pg8000: the no-libpq dialects)"
"$py" -m pip install -q 'sqlalchemy[asyncio]>=2.0,<3' 'django>=5.0,<6' 'psycopg-pool>=3.2' \
    'asyncpg>=0.29' 'pg8000>=1.30'

# --- psycopg2 from source, linked with the system libpq ------------------------------
target="$venv/psycancel-legacy-psycopg2"
legacy_ok() {
    [ -d "$target/psycopg2" ] && PYTHONPATH="$target" "$py" -c '
import sys, psycopg2, psycopg2.extensions as e
sys.exit(0 if psycopg2.__file__.startswith(sys.argv[1]) and e.libpq_version() < 170000 else 1)
' "$target" 2>/dev/null
}
if legacy_ok; then
    log "psycopg2 built against the system libpq: already in $target"
    exit 0
fi

# The system's pg_config (not the PostgreSQL 18 build's, which may be on PATH).
pg_config=/usr/bin/pg_config
if [ ! -x "$pg_config" ]; then
    log "installing libpq-dev (system libpq headers and pg_config)"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq libpq-dev >/dev/null
fi
version="$("$pg_config" --version)"
case "$version" in
    "PostgreSQL 1"[0-6].*|"PostgreSQL 9".*) ;;
    *) log "the system libpq is $version; the legacy tests need one older than 17"; exit 1 ;;
esac

log "building psycopg2 from source against the system libpq ($version) into $target"
rm -rf "$target"
# --no-cache-dir: never reuse a wheel built earlier against another libpq.
PATH="$(dirname "$pg_config"):$PATH" "$py" -m pip install -q --no-cache-dir \
    --no-binary psycopg2 --target "$target" 'psycopg2>=2.9'
legacy_ok || { log "the source-built psycopg2 in $target does not use a libpq < 17"; exit 1; }
