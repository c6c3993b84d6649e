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
# twin with skips counted as failures. A table of the counts ends the output;
# the exit status is non-zero if any run failed.
#
# Needs what tools/quickstart.sh installs (system packages, PostgreSQL 18).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n== matrix: %s\n' "$*" >&2; }

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
    [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    PSYCANCEL_REQUIRE_EXT=1 PSYCANCEL_BUNDLE_LIBPQ="$prefix" \
        "$venv/bin/python" -m pip install -q -e '.[test,drivers]'
    bash tools/install_test_drivers.sh "$venv"
    "$venv/bin/python" -m psycancel info
    for impl in c python; do
        log "Python $version, PSYCANCEL_IMPL=$impl"
        out="$(mktemp)"
        t0=$SECONDS
        rc=0
        PSYCANCEL_IMPL="$impl" "$venv/bin/python" -m pytest -q -p no:cacheprovider tests \
            2>&1 | tee "$out" || rc=$?
        [ "$rc" = 0 ] || status=1
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
