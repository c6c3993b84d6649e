#!/usr/bin/env bash
# The whole test suite, both twins, on every CPython >= 3.10 on this machine.
#
#   bash tools/matrix.sh                 # every interpreter found
#   bash tools/matrix.sh --skip 3.11     # leave out 3.11 (e.g. the caller just ran it)
#
# Interpreters: $PYTHON (default python3), every
# ${PYENV_ROOT:-~/.pyenv}/versions/*/bin/python3, and the paths in
# $PSYCANCEL_PYTHONS (space-separated); only CPython >= 3.10, one per X.Y.
# Each gets a venv of its own in .venv-matrix/<X.Y> with psycancel installed
# editable and its compiled twin built and linked with the PostgreSQL 18 build
# (as tools/quickstart.sh does), the test drivers (a psycopg2 built for that
# interpreter against the system libpq included), then the suite runs once per
# twin with skips counted as failures, spread over $PSYCANCEL_TEST_WORKERS
# pytest-xdist workers (default: twice the CPU count, at most 8; 0: one
# process). A table of the counts ends the output; the exit status is non-zero
# if any run failed. With $PSYCANCEL_STAGE_TIMES (tools/quickstart.sh's), each
# venv set-up and each suite run also adds a row there: name, wall seconds, ok/FAIL.
#
# Needs what tools/quickstart.sh installs (system packages, PostgreSQL 18).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n== matrix: %s\n' "$*" >&2; }
row() {
    [ -z "${PSYCANCEL_STAGE_TIMES:-}" ] || printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$PSYCANCEL_STAGE_TIMES"
}
# A venv set-up that stops the script is recorded as FAIL.
setup_name=""
setup_start=0
trap '[ -z "$setup_name" ] || row "$setup_name" "$((SECONDS - setup_start))" FAIL' EXIT

skip=()
while [ $# -gt 0 ]; do
    case "$1" in
        --skip) skip+=("$2"); shift 2 ;;
        *) echo "usage: $0 [--skip X.Y]..." >&2; exit 2 ;;
    esac
done

candidates=("${PYTHON:-python3}")
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for py in "$pyenv_root"/versions/*/bin/python3; do [ -x "$py" ] && candidates+=("$py"); done
# shellcheck disable=SC2206
[ -n "${PSYCANCEL_PYTHONS:-}" ] && candidates+=($PSYCANCEL_PYTHONS)

declare -A chosen=()
order=()
for py in "${candidates[@]}"; do
    version="$("$py" -c 'import sys, platform
ok = platform.python_implementation() == "CPython" and sys.version_info >= (3, 10)
print("%d.%d" % sys.version_info[:2] if ok else "")' 2>/dev/null)" || continue
    [ -n "$version" ] || continue
    [ -z "${chosen[$version]:-}" ] || continue
    for s in "${skip[@]}"; do [ "$s" = "$version" ] && continue 2; done
    chosen[$version]="$py"
    order+=("$version")
done
if [ "${#order[@]}" -eq 0 ]; then
    log "no other CPython >= 3.10 found: nothing to do"
    exit 0
fi
log "interpreters: $(for v in "${order[@]}"; do printf '%s (%s) ' "$v" "${chosen[$v]}"; done)"

prefix="$(bash tools/build_postgres.sh)"
export PSYCANCEL_PG_PREFIX="$prefix"
export PSYCANCEL_NO_SKIP=1
results=()
status=0
for version in "${order[@]}"; do
    py="${chosen[$version]}"
    venv=".venv-matrix/$version"
    log "Python $version: $venv"
    setup_name="matrix $version: venv, psycancel, drivers"
    setup_start=$SECONDS
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    PSYCANCEL_REQUIRE_EXT=1 PSYCANCEL_BUNDLE_LIBPQ="$prefix" \
        "$venv/bin/python" -m pip install -q -e '.[test,drivers]'
    bash tools/install_test_drivers.sh "$venv"
    "$venv/bin/python" -m psycancel info
    row "$setup_name" "$((SECONDS - setup_start))" ok
    setup_name=""
    workers="${PSYCANCEL_TEST_WORKERS:-$("$venv/bin/python" -c \
        'import os; print(min(8, 2 * (os.cpu_count() or 1)))')}"
    for impl in c python; do
        log "Python $version, PSYCANCEL_IMPL=$impl ($workers workers)"
        out="$(mktemp)"
        t0=$SECONDS
        rc=0
        PSYCANCEL_IMPL="$impl" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
            -n "$workers" tests 2>&1 | tee "$out" || rc=$?
        [ "$rc" = 0 ] || status=1
        row "suite matrix $version, PSYCANCEL_IMPL=$impl" "$((SECONDS - t0))" \
            "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
        summary="$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$out" | tail -1 |
            sed 's/=//g; s/^ *//; s/ *$//')"
        results+=("$(printf '%-6s %-7s %-5s %5ss  %s' "$version" "$impl" \
            "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$((SECONDS - t0))" "$summary")")
        rm -f "$out"
    done
done
log "summary"
printf '%-6s %-7s %-5s %6s  %s\n' python twin state time counts
printf '%s\n' "${results[@]}"
exit "$status"
