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
# "test" runs: ruff and mypy --strict; the docs site (Sphinx, warnings as
# errors); the test suite once per twin; and, in the background beside those
# (started once the setup is done; their output is printed at the end): the
# sdist (tools/check_sdist.sh: its file list, twine check, installs in fresh
# venvs without Cython, without a C compiler, with Cython); the wheels
# (tools/build_wheel.sh: all 7 built with zig and checked, the suite against the
# installed x86_64 wheel, 3.10/3.13 smoke venvs, aarch64 under qemu-user); the
# benchmarks' smoke runs; valgrind on the compiled twin; and
# tools/matrix.sh: the suite, both twins, on every other
# CPython >= 3.10 of the machine and on the ones tools/build_python.sh makes
# ($PSYCANCEL_BUILD_PYTHONS, default "3.14 3.15 3.14t": Debian unstable's 3.14
# and 3.15 in a chroot, and a free-threaded build, 3.13t while Debian's 3.14
# source cannot be had, its suites run with the GIL off, with the
# free-threading stress test and the cpXYt wheel) (PSYCANCEL_MATRIX=0 leaves
# the matrix out). The matrix sets up every interpreter's venv at once.
#
# Every suite run, wherever it comes from (the stages here, the wheels' and the
# matrix's), takes one of $PSYCANCEL_SUITE_SLOTS slots (default 3;
# tools/suite_slot.sh): a suite alone uses ~0.7 of the 2 cores (~115 CPU-s in
# 165 s), three at a time load them to 8-10, and the timing margins are set for
# that; a free slot goes first to the runs that other work waits for
# (PSYCANCEL_SLOT_PRIORITY: the free-threaded interpreter's, the installed
# wheel's). Builds, venvs and checks run beside them, at a lower priority
# (nice) where they are CPU-bound.
#
# Each suite run is spread over PSYCANCEL_TEST_WORKERS pytest-xdist workers
# (default: twice the CPU count, at most 8; 0 runs it in one process), each
# with a throwaway server of its own: the suite mostly waits on the server and
# on timeouts. Every Python x twin combination still runs the whole suite. A
# test stage that fails does not stop the ones after it; the exit status says
# whether all passed. The end of the output is a table of the stages: wall
# seconds and ok/FAIL (printed also when a setup step stops the script).
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-}"
case "$what" in demo|test) ;; *) echo "usage: $0 demo|test" >&2; exit 2 ;; esac

log() { printf '\n== %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# --- stage timings ------------------------------------------------------------------
# One row per stage (name, wall seconds, ok/FAIL) in $PSYCANCEL_STAGE_TIMES, a
# tab-separated file; tools/build_wheel.sh and tools/matrix.sh add their own
# rows to it. "begin NAME" ... "end" times a setup step (a failure there stops
# the script, and the EXIT trap records the step as FAIL); "check NAME CMD..."
# times a test stage, records it, and goes on when it fails.
PSYCANCEL_STAGE_TIMES="$(mktemp "${TMPDIR:-/tmp}/psycancel-stages.XXXXXX")"
export PSYCANCEL_STAGE_TIMES
stage_name=""
stage_start=0
failed=()
# A fourth column, when there, is the second (since the script started) at which
# the stage started: stages that overlap (tools/matrix.sh runs beside the others)
# show it. PSYCANCEL_STAGE_EPOCH is that start, for the scripts that add rows.
PSYCANCEL_STAGE_EPOCH="$(date +%s)"
export PSYCANCEL_STAGE_EPOCH
row() {
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(($(date +%s) - PSYCANCEL_STAGE_EPOCH - $2))" \
        >>"$PSYCANCEL_STAGE_TIMES"
}
begin() { log "$1"; stage_name="$1"; stage_start=$SECONDS; }
end() { row "$stage_name" "$((SECONDS - stage_start))" ok; stage_name=""; }
check() {
    local name="$1" t0=$SECONDS rc=0
    shift
    log "$name"
    "$@" || rc=$?
    if [ "$rc" = 0 ]; then row "$name" "$((SECONDS - t0))" ok
    else row "$name" "$((SECONDS - t0))" FAIL; failed+=("$name"); fi
}
stage_table() {
    local rc=$?
    [ -z "$stage_name" ] || row "$stage_name" "$((SECONDS - stage_start))" FAIL
    if [ -s "$PSYCANCEL_STAGE_TIMES" ]; then
        printf '\n== stage timings (wall seconds)\n'
        # In the order they ended; "from-to" (seconds since the start) shows the
        # stages that ran at the same time.
        awk -F '\t' '{ printf "%-50s %7d  %-5s %s\n", $1, $2, $3, ($4 == "" ? "" : $4 "-" $4 + $2) }
            BEGIN { printf "%-50s %7s  %-5s %s\n", "stage", "seconds", "state", "from-to" }' \
            "$PSYCANCEL_STAGE_TIMES"
        printf '%-50s %7d  %s\n' total "$SECONDS" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    fi
    rm -f "$PSYCANCEL_STAGE_TIMES"
    [ -z "${PSYCANCEL_SLOT_DIR:-}" ] || rm -rf "$PSYCANCEL_SLOT_DIR"
    [ -z "${matrix_pid:-}" ] || kill "$matrix_pid" 2>/dev/null || true
    local pid
    for pid in ${aside_pids[@]+"${aside_pids[@]}"}; do kill "$pid" 2>/dev/null || true; done
    return "$rc"
}
trap stage_table EXIT

python="${PYTHON:-python3}"

# --- system packages the Python side needs (venv, headers, compiler) ---------------
begin "setup: system packages"
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
    as_root flock /var/lock/psycancel-apt.lock apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root flock /var/lock/psycancel-apt.lock apt-get install -y -qq "${need[@]}" >/dev/null
fi
end

# --- PostgreSQL 18 (server + libpq >= 17) from source, cached -----------------------
begin "setup: PostgreSQL 18 (built once, then cached)"
prefix="$(bash tools/build_postgres.sh)"
export PSYCANCEL_PG_PREFIX="$prefix"
end

# --- the virtualenv, with the compiled twin -----------------------------------------
begin "setup: .venv and psycancel (with its compiled twin)"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The compiled twin links no libpq (it resolves libpq with dlsym); the tests and
# the demo load the libpq 18 built above explicitly (testing/installation.py).
PSYCANCEL_REQUIRE_EXT=1 .venv/bin/python -m pip install -q -e '.[test,drivers,bench,docs]'
.venv/bin/python -m psycancel info
end

if [ "$what" = demo ]; then
    log "demo"
    trap - EXIT
    rm -f "$PSYCANCEL_STAGE_TIMES"
    unset PSYCANCEL_STAGE_TIMES
    exec .venv/bin/python -m testing.demo
fi

begin "setup: test drivers and services"
bash tools/install_test_drivers.sh .venv
bash tools/install_test_services.sh
end

# tools/matrix.sh (every other CPython of the machine and the ones
# tools/build_python.sh makes, both twins each, and the free-threading stress
# test) runs in the background from here, beside the stages below; its suites
# share the slots with theirs. Its rows join the stage table; its output is
# printed at the end.
# The suite slots (tools/suite_slot.sh), shared with the scripts below.
PSYCANCEL_SLOT_DIR="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-slots.XXXXXX")"
export PSYCANCEL_SLOT_DIR
export PSYCANCEL_SUITE_SLOTS="${PSYCANCEL_SUITE_SLOTS:-3}"
matrix_pid=""
# Bytecode, written once per run: a machine may set PYTHONDONTWRITEBYTECODE
# (this one does), and then every pytest worker and every child Python of the
# run's suites compiles the project's modules again and pytest rewrites every
# test module again (~10% of a suite's CPU). Written beside the tree, not in it.
# (With a prefix Python keeps every module's bytecode there, the libraries' too,
# not their __pycache__: each is compiled once per run and interpreter.)
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="$PWD/build/pycache"
# The matrix's venvs are kept between runs, beside the PostgreSQL build: a warm
# run only reinstalls psycancel in them (tools/matrix.sh).
export PSYCANCEL_MATRIX_VENV_DIR="${PSYCANCEL_MATRIX_VENV_DIR:-$(dirname "$prefix")/matrix-venvs}"
# Everything the tests need is installed above: a skip would hide a gap.
export PSYCANCEL_NO_SKIP=1
# The suite's pytest-xdist workers (tools/build_wheel.sh and tools/matrix.sh read
# the same variable).
PSYCANCEL_TEST_WORKERS="${PSYCANCEL_TEST_WORKERS:-$(.venv/bin/python -c \
    'import os; print(min(8, 2 * (os.cpu_count() or 1)))')}"
export PSYCANCEL_TEST_WORKERS
if [ "${PSYCANCEL_MATRIX:-1}" != 0 ]; then
    log "tools/matrix.sh: started in the background (output: .venv-matrix/matrix.log)"
    mkdir -p .venv-matrix
    matrix_start=$SECONDS
    PSYCANCEL_BUILD_PYTHONS="${PSYCANCEL_BUILD_PYTHONS-3.14 3.15 3.14t}" PSYCANCEL_NO_SKIP=1 bash tools/matrix.sh \
        --skip "$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
        >.venv-matrix/matrix.log 2>&1 &
    matrix_pid=$!
fi

# The stages that need no result of the others run in the background from
# here, beside the .venv suites below (and the matrix): their output is printed
# at the end, each under its name, and their rows join the table (with the
# second they started). The sdist and the wheels are mostly builds (at a lower
# priority); the benchmarks' smoke runs and valgrind take a suite slot each, last.
aside_names=()
aside_pids=()
aside_logs=()
aside() {
    # NAME LOG COMMAND...: run COMMAND in the background, its output to LOG.
    local name="$1" log_file="$2"
    shift 2
    log "$name: started in the background (output: $log_file)"
    (
        t0=$SECONDS
        rc=0
        "$@" >"$log_file" 2>&1 </dev/null || rc=$?
        row "$name" "$((SECONDS - t0))" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
        exit "$rc"
    ) &
    aside_pids+=($!)
    aside_names+=("$name")
    aside_logs+=("$log_file")
}
mkdir -p build/logs
aside "sdist: file list, twine check, installs" build/logs/sdist.log nice -n 10 bash tools/check_sdist.sh
# Its own rows too: build, venv, the suite per twin against the installed wheel,
# smoke, aarch64 under qemu.
aside "wheels: all of it (tools/build_wheel.sh)" build/logs/wheels.log \
    env PYTHON="$python" bash tools/build_wheel.sh
# (The benchmarks and valgrind take a slot only when no other run waits for one:
# at the start, before the other suites are ready, or at the end. Beside three
# suites, valgrind took 545 s instead of 57.)
aside "benchmarks: the smoke runs (--quick), one slot" build/logs/benchmarks.log \
    env PSYCANCEL_SLOT_PRIORITY=9 bash tools/suite_slot.sh bash -c 'set -e
        for b in run app burst block_cost import_cost configured_overhead; do
            t0=$SECONDS
            .venv/bin/python "benchmarks/$b.py" --quick >/dev/null
            echo "benchmarks/$b.py --quick: ok ($((SECONDS - t0)) s)"
        done'
aside "valgrind: compiled twin, short form" build/logs/valgrind.log \
    env PYTHON=.venv/bin/python PSYCANCEL_SLOT_PRIORITY=9 bash tools/suite_slot.sh \
    bash tools/valgrind.sh --short

check "static checks: ruff" .venv/bin/python -m ruff check .
check "static checks: ruff format" .venv/bin/python -m ruff format --check .
check "static checks: mypy --strict" .venv/bin/python -m mypy --strict psycancel
# The documentation site (docs/conf.py): warnings are errors, and so is a link to
# a page, a heading or a repository file that does not exist.
check "docs: sphinx -W (links checked)" .venv/bin/python -m sphinx -E -W --keep-going -q \
    -b html docs build/docs

for impl in c python; do
    check "suite .venv, PSYCANCEL_IMPL=$impl" env PSYCANCEL_IMPL="$impl" \
        bash tools/suite_slot.sh .venv/bin/python -m pytest -q -p no:cacheprovider -n "$PSYCANCEL_TEST_WORKERS" tests
done

for i in "${!aside_pids[@]}"; do
    log "waiting for: ${aside_names[$i]}"
    rc=0
    wait "${aside_pids[$i]}" || rc=$?
    aside_pids[$i]=""
    log "${aside_names[$i]}: $([ "$rc" = 0 ] && echo ok || echo FAILED); its output (${aside_logs[$i]}):"
    cat "${aside_logs[$i]}"
    [ "$rc" = 0 ] || failed+=("${aside_names[$i]}")
done
if [ -n "$matrix_pid" ]; then
    # Its own rows: per Python, the build, the venv and the suite per twin.
    log "waiting for tools/matrix.sh (running since the end of the setup)"
    rc=0
    wait "$matrix_pid" || rc=$?
    matrix_pid=""
    cat .venv-matrix/matrix.log
    row "matrix: all of it (beside the stages above)" "$((SECONDS - matrix_start))" \
        "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    [ "$rc" = 0 ] || failed+=("matrix (tools/matrix.sh)")
fi
if [ "${#failed[@]}" -gt 0 ]; then
    log "FAILED: ${failed[*]}"
    exit 1
fi
log "all green"
