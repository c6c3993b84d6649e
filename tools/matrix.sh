#!/usr/bin/env bash
# The whole test suite, both twins, on every CPython >= 3.10 on this machine,
# plus the ones tools/build_python.sh makes (3.14, 3.15, free-threaded 3.14t).
#
#   bash tools/matrix.sh                 # every interpreter found or built
#   bash tools/matrix.sh --skip 3.11     # leave out 3.11 (e.g. the caller just ran it)
#
# Interpreters: $PYTHON (default python3), every
# ${PYENV_ROOT:-~/.pyenv}/versions/*/bin/python3, the paths in $PSYCANCEL_PYTHONS
# (space-separated), and what `tools/build_python.sh V` prints for each V in
# $PSYCANCEL_BUILD_PYTHONS (default "3.14 3.15 3.14t"; "" for none). A
# free-threaded V ("X.Yt") whose source cannot be had falls back to the newest
# older X.Yt that can (3.14t -> 3.13t), and says so. Only CPython >= 3.10, one
# per X.Y and build kind (a free-threaded X.Yt is its own entry).
#
# Each interpreter is one job: (build it,) a venv of its own in
# .venv-matrix/<X.Y[t]> (or $PSYCANCEL_MATRIX_VENV_DIR/<X.Y[t]>: kept between
# runs) with psycancel installed editable and its compiled twin
# built and linked with the PostgreSQL 18 build (as tools/quickstart.sh does),
# the test drivers (tools/install_test_drivers.sh), then the suite once per
# twin with skips counted as failures, spread over $PSYCANCEL_TEST_WORKERS
# pytest-xdist workers (default: twice the CPU count, at most 8; 0: one
# process); on a free-threaded interpreter also the free-threading stress test
# (tests/freethreading, both twins, PYTHON_GIL=0). $PSYCANCEL_MATRIX_JOBS jobs
# run at once (default: all of them): each builds and sets up its venv at once
# (at a lower priority), then its suite runs (and stress test) wait for a slot
# of tools/suite_slot.sh (tools/quickstart.sh: three suites at once in all, its
# own stages' included); a free-threaded interpreter's first (its stress test
# and wheel come after them). A job's output goes to .venv-matrix/<name>.log
# and is printed when it ends.
#
# A table of the counts ends the output; the exit status is non-zero if any run
# failed. With $PSYCANCEL_STAGE_TIMES (tools/quickstart.sh's), each build, venv
# set-up and suite run also adds a row there: name, wall seconds, ok/FAIL, and
# the start in seconds since $PSYCANCEL_STAGE_EPOCH (the jobs overlap).
#
# Needs what tools/quickstart.sh installs (system packages, PostgreSQL 18).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '\n== matrix: %s\n' "$*" >&2; }
row() {
    # (name, seconds, ok/FAIL, and the start in seconds since $PSYCANCEL_STAGE_EPOCH)
    [ -n "${PSYCANCEL_STAGE_TIMES:-}" ] || return 0
    local from=""
    [ -z "${PSYCANCEL_STAGE_EPOCH:-}" ] || from="$(($(date +%s) - PSYCANCEL_STAGE_EPOCH - $2))"
    printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$from" >>"$PSYCANCEL_STAGE_TIMES"
}

skip=()
while [ $# -gt 0 ]; do
    case "$1" in
        --skip) skip+=("$2"); shift 2 ;;
        *) echo "usage: $0 [--skip X.Y]..." >&2; exit 2 ;;
    esac
done
is_skipped() { local s; for s in ${skip[@]+"${skip[@]}"}; do [ "$s" = "$1" ] && return 0; done; return 1; }

# "X.Y" or "X.Yt" (free-threaded), or "" for anything that is not a CPython >= 3.10.
version_of() {
    "$1" -c 'import sys, platform, sysconfig
ok = platform.python_implementation() == "CPython" and sys.version_info >= (3, 10)
t = "t" if sysconfig.get_config_var("Py_GIL_DISABLED") else ""
print("%d.%d%s" % (sys.version_info[:2] + (t,)) if ok else "")' 2>/dev/null
}

candidates=("${PYTHON:-python3}")
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
for py in "$pyenv_root"/versions/*/bin/python3; do [ -x "$py" ] && candidates+=("$py"); done
# shellcheck disable=SC2206
[ -n "${PSYCANCEL_PYTHONS:-}" ] && candidates+=($PSYCANCEL_PYTHONS)

declare -A chosen=()
order=()
for py in "${candidates[@]}"; do
    version="$(version_of "$py")" || continue
    [ -n "$version" ] || continue
    [ -z "${chosen[$version]:-}" ] || continue
    is_skipped "$version" && continue
    chosen[$version]="$py"
    order+=("$version")
done
# Built by tools/build_python.sh inside the job ("build:V" until then).
for want in ${PSYCANCEL_BUILD_PYTHONS-3.14 3.15 3.14t}; do
    [ -z "${chosen[$want]:-}" ] || continue
    is_skipped "$want" && continue
    chosen[$want]="build:$want"
    order+=("$want")
done
# The longest jobs first, so that the last ones to start are short: a
# free-threaded one (its suites, stress test and wheel), then the others built
# here, then the machine's own.
sorted=()
for v in ${order[@]+"${order[@]}"}; do [ "${v%t}" != "$v" ] && sorted+=("$v"); done
for v in ${order[@]+"${order[@]}"}; do
    [ "${v%t}" = "$v" ] && [ "${chosen[$v]#build:}" != "${chosen[$v]}" ] && sorted+=("$v")
done
for v in ${order[@]+"${order[@]}"}; do
    [ "${v%t}" = "$v" ] && [ "${chosen[$v]#build:}" = "${chosen[$v]}" ] && sorted+=("$v")
done
order=(${sorted[@]+"${sorted[@]}"})
if [ "${#order[@]}" -eq 0 ]; then
    log "no other CPython >= 3.10 found: nothing to do"
    exit 0
fi
log "interpreters: $(for v in "${order[@]}"; do printf '%s (%s) ' "$v" "${chosen[$v]}"; done)"

prefix="$(bash tools/build_postgres.sh)"
export PSYCANCEL_PG_PREFIX="$prefix"
export PSYCANCEL_NO_SKIP=1
mkdir -p .venv-matrix
# The venvs: .venv-matrix/<X.Y[t]>, or kept between runs under
# $PSYCANCEL_MATRIX_VENV_DIR (tools/quickstart.sh: beside the PostgreSQL build):
# then a run only reinstalls psycancel (editable, from this tree) and checks the
# rest is there; a venv whose interpreter changed is made again.
venv_root="${PSYCANCEL_MATRIX_VENV_DIR:-.venv-matrix}"
mkdir -p "$venv_root"
venv_root="$(cd "$venv_root" && pwd)"
# (Seen at the same path by the Pythons that run in tools/build_python.sh's chroot.)
export PSYCANCEL_CHROOT_BINDS="${PSYCANCEL_CHROOT_BINDS:-} $venv_root"
results_dir="$(mktemp -d "${TMPDIR:-/tmp}/psycancel-matrix.XXXXXX")"
trap 'rm -rf "$results_dir"' EXIT

# The test and drivers extras one requirement at a time, for an interpreter some
# of them cannot be installed on yet (free-threaded: no wheel, no sdist that
# builds here): what is left out is listed, and the tests that need it fail.
# ("drivers" as $2: what tools/install_test_drivers.sh installs from wheels.)
one_by_one() {
    local venv="$1" req missing=() reqs=() rest=()
    local known="$venv/psycancel-not-installable-${2:-extras}.txt"
    mapfile -t reqs < <(if [ "${2:-}" = drivers ]; then
        printf '%s\n' 'psycopg2-binary>=2.9' 'psycopg[binary]>=3.2' 'psycopg>=3.2' 'aiopg>=1.4' \
            'anyio>=4.4' 'trio>=0.25' 'gevent>=24' 'psycogreen>=1.0' 'opentelemetry-api>=1.20' \
            'opentelemetry-sdk>=1.20' 'sqlalchemy[asyncio]>=2.0,<3' 'django>=5.0,<6' \
            'psycopg-pool>=3.2' 'asyncpg>=0.29' 'pg8000>=1.30'
    else
        "$venv/bin/python" -c 'import tomllib
extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print("\n".join(extras["test"] + extras["drivers"]))'
    fi)
    # A kept venv (warm run): what could not be installed last time is left out
    # at once and the rest checked in one pip call (each call costs seconds);
    # a fresh venv, or a failure of that call, tries each one again.
    if [ -s "$known" ]; then
        for req in "${reqs[@]}"; do grep -qxF -- "$req" "$known" || rest+=("$req"); done
        if "$venv/bin/python" -m pip install -q "${rest[@]}" >/dev/null 2>&1; then
            log "cannot be installed on this Python (as when its venv was made): $(tr '\n' ' ' <"$known")"
            return 0
        fi
    fi
    for req in "${reqs[@]}"; do
        # (Wheels only on a retry: the newest release may need a source build
        # that fails here where an older one has a wheel, e.g. mypy on 3.13t.)
        "$venv/bin/python" -m pip install -q "$req" >/dev/null 2>&1 ||
            "$venv/bin/python" -m pip install -q --only-binary :all: "$req" >/dev/null 2>&1 ||
            missing+=("$req")
    done
    rm -f "$known"
    [ "${#missing[@]}" = 0 ] || {
        printf '%s\n' "${missing[@]}" >"$known"
        log "cannot be installed on this Python: ${missing[*]}"
    }
}

# One interpreter: build, venv, drivers, the suite per twin (and the stress test).
# Writes "$results_dir/<name>" (result lines) and exits non-zero on a failure.
run_one() {
    local name="$1" py="$2" venv="$venv_root/$1" t0 rc status=0 want label="$1"
    local out="$results_dir/$name"
    : >"$out"
    if [ "${py#build:}" != "$py" ]; then
        want="${py#build:}"
        t0=$SECONDS
        rc=0
        py="$(bash tools/build_python.sh "$want" | tail -n1)" || rc=$?
        if [ "$rc" != 0 ] && [ "${want%t}" != "$want" ]; then
            # No source for it: the newest older free-threaded CPython that has one.
            local minor="${want#3.}"
            minor="${minor%t}"
            while [ "$rc" != 0 ] && [ "$minor" -gt 13 ]; do
                minor=$((minor - 1))
                log "no $want: falling back to 3.${minor}t"
                rc=0
                py="$(bash tools/build_python.sh "3.${minor}t" | tail -n1)" || rc=$?
            done
        fi
        row "matrix $name: tools/build_python.sh" "$((SECONDS - t0))" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
        if [ "$rc" != 0 ]; then
            printf '%-6s %-7s %-5s %6s  %s\n' "$name" - FAIL - "tools/build_python.sh $want failed" >>"$out"
            return 1
        fi
        local got
        got="$(version_of "$py")"
        if [ "$got" != "$name" ]; then
            log "$name: built $got instead"
            label="$got"  # (the venv and the log keep the name asked for)
        fi
    fi
    log "Python $name ($py): $venv"
    t0=$SECONDS
    rc=0
    # One run at a time in a venv (kept between runs under $PSYCANCEL_MATRIX_VENV_DIR);
    # made again when its interpreter is not the one asked for any more.
    exec {venv_lock}>"$venv.lock"
    flock "$venv_lock"
    local want_version
    want_version="$("$py" -c 'import sys; print(sys.version)')"
    if [ -e "$venv" ] && [ "$("$venv/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" != "$want_version" ]; then
        log "$venv: made by another interpreter, made again"
        rm -rf "$venv"
    fi
    # (A chain of &&: set -e does not apply in a function whose status is tested.
    # The editable builds read psycancel_c/_pq.c (made by the .venv's, and
    # current: Cython leaves it alone), and each writes a module of its own ABI:
    # they run at once, sharing build/.tree-build.lock, which the sdist builds of
    # tools/check_sdist.sh and tools/build_wheel.sh take alone (they write
    # _pq.c again: a compile reading it meanwhile would see half of it). One at
    # a time, six of them waited up to 739 s for the lock.
    # A wheel of an older release rather than an sdist that cannot build here.)
    export PIP_PREFER_BINARY=1
    # (No Rust crate can be fetched here: a source build that needs one, e.g.
    # nh3 for twine on a free-threaded CPython, then fails at once instead of
    # after cargo's network retries.)
    export CARGO_NET_OFFLINE=true
    # (In a subshell of lower priority: the suites running meanwhile keep their
    # timing margins.)
    ( renice -n 10 -p "$BASHPID" >/dev/null 2>&1 || true
    { [ -x "$venv/bin/python" ] || "$py" -m venv "$venv"; } &&
        "$venv/bin/python" -m pip install -q --upgrade pip &&
        { PSYCANCEL_REQUIRE_EXT=1 PSYCANCEL_BUNDLE_LIBPQ="$prefix" \
            flock -s build/.tree-build.lock \
            "$venv/bin/python" -m pip install -q -e '.[test,drivers]' ||
          { PSYCANCEL_REQUIRE_EXT=1 PSYCANCEL_BUNDLE_LIBPQ="$prefix" \
            flock -s build/.tree-build.lock \
            "$venv/bin/python" -m pip install -q -e . && one_by_one "$venv"; }; } &&
        { bash tools/install_test_drivers.sh "$venv" ||
            { [ "${name%t}" != "$name" ] && one_by_one "$venv" drivers; }; } &&
        "$venv/bin/python" -m psycancel info ) || rc=$?
    row "matrix $name: venv, psycancel, drivers" "$((SECONDS - t0))" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    if [ "$rc" != 0 ]; then
        printf '%-6s %-7s %-5s %6s  %s\n' "$name" - FAIL "$((SECONDS - t0))" "venv set-up failed" >>"$out"
        return 1
    fi
    local workers
    workers="${PSYCANCEL_TEST_WORKERS:-$("$venv/bin/python" -c \
        'import os; print(min(8, 2 * (os.cpu_count() or 1)))')}"
    local impl runs=(tests)
    for impl in c python; do
        log "Python $name, PSYCANCEL_IMPL=$impl ($workers workers)"
        local log_file="$results_dir/$name-$impl.out"
        t0=$SECONDS
        rc=0
        # (SIGINT and SIGQUIT at their default: a job started with "&" by a
        # non-interactive shell, as each job here and the whole matrix in
        # quickstart.sh are, has them ignored, and Python then installs no
        # KeyboardInterrupt handler: the Ctrl-C tests would test another program.)
        # (tools/suite_slot.sh: at most $PSYCANCEL_SUITE_SLOTS suites at once.)
        # (Free-threaded: the suite runs with the GIL off, PYTHON_GIL=0, as a
        # free-threaded application would: psycopg2's import would otherwise turn it
        # on, and 3.13t's GIL then leaves an asyncio loop 0.1-4 s gaps under load
        # (tools/ft_gil_gap.py shows it without psycancel). tests/pq/test_gil.py
        # then runs again with the GIL on: it measures releasing it.)
        # (And with tools/ft_noyield.c preloaded: 3.13t's spin on sched_yield.)
        local gil_off=()
        [ "${name%t}" = "$name" ] || gil_off=(PYTHON_GIL=0 "${ft_env[@]}")
        PSYCANCEL_IMPL="$impl" env --default-signal=INT,QUIT "${gil_off[@]}" \
            bash tools/suite_slot.sh "$venv/bin/python" -m pytest -q -p no:cacheprovider \
            -n "$workers" "${runs[@]}" 2>&1 | tee "$log_file" || rc=$?
        if [ "${#gil_off[@]}" != 0 ]; then
            log "Python $name, PSYCANCEL_IMPL=$impl: tests/pq/test_gil.py with the GIL on"
            PYTHON_GIL=1 PSYCANCEL_IMPL="$impl" env "${ft_env[@]}" \
                bash tools/suite_slot.sh "$venv/bin/python" \
                -m pytest -q -p no:cacheprovider tests/pq/test_gil.py 2>&1 |
                tee "$log_file.gil" || rc=$?
        fi
        [ "$rc" = 0 ] || status=1
        row "matrix $name: suite, PSYCANCEL_IMPL=$impl" "$((SECONDS - t0))" \
            "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
        local summary
        summary="$(grep -E '^[0-9]+ (passed|failed)|^=+ .*(passed|failed)' "$log_file" | tail -1 |
            sed 's/=//g; s/^ *//; s/ *$//')"
        if [ -e "$log_file.gil" ]; then
            summary="$summary (GIL off); GIL on: $(grep -E '^[0-9]+ (passed|failed)' \
                "$log_file.gil" | tail -1 | sed 's/ in [0-9.]*s.*//')"
        fi
        printf '%-6s %-7s %-5s %5ss  %s\n' "$label" "$impl" \
            "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$((SECONDS - t0))" "$summary" >>"$out"
    done
    if [ "${name%t}" != "$name" ]; then
        # Free-threaded: the long form of the stress test, GIL off, per twin.
        for impl in c python; do
            log "Python $name, PSYCANCEL_IMPL=$impl: free-threading stress test (PYTHON_GIL=0)"
            local stress_out="$results_dir/$name-stress-$impl.out"
            t0=$SECONDS
            rc=0
            PYTHON_GIL=0 PSYCANCEL_IMPL="$impl" env "${ft_env[@]}" bash tools/suite_slot.sh \
                "$venv/bin/python" -m tests.freethreading.stress \
                --rounds "${PSYCANCEL_STRESS_ROUNDS:-3}" --threads "${PSYCANCEL_STRESS_THREADS:-32}" \
                2>&1 | tee "$stress_out" || rc=$?
            [ "$rc" = 0 ] || status=1
            row "matrix $name: stress test, PSYCANCEL_IMPL=$impl" "$((SECONDS - t0))" \
                "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
            printf '%-6s %-7s %-5s %5ss  stress: %s\n' "$label" "$impl" \
                "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$((SECONDS - t0))" \
                "$(grep '^stress:' "$stress_out" | tail -n1 | cut -c9-)" >>"$out"
        done
    fi
    if [ "${name%t}" != "$name" ] && [ "${PSYCANCEL_FT_WHEEL:-1}" != 0 ]; then
        ft_wheel "$label" "$py" "$out" || status=1
    fi
    return "$status"
}

# Free-threaded: its own wheel (cpXYt, manylinux x86_64: tools/build_wheel.sh with
# PSYCANCEL_LIMITED_API=0), installed in a fresh venv and run through the stress
# test, both twins, from a copy of tests/ and testing/ (nothing from the clone).
ft_wheel() {
    local name="$1" py="$2" out="$3" t0=$SECONDS rc=0 dir="build/wheel-$1" whl impl
    log "Python $name: its wheel (tools/build_wheel.sh build, PSYCANCEL_LIMITED_API=0)"
    env PSYCANCEL_LIMITED_API=0 PYTHON="$py" \
        PSYCANCEL_WHEEL_DIR="$dir" bash tools/build_wheel.sh build || rc=$?
    whl="$(ls "$dir"/wheelhouse/psycancel-*-cp3*t-*manylinux*x86_64.whl 2>/dev/null | head -n1)"
    [ -n "$whl" ] || rc=1
    local test_dir="$dir/test"
    if [ "$rc" = 0 ]; then
        rm -rf "$test_dir"
        mkdir -p "$test_dir/src"
        cp -r tests testing "$test_dir/src/"
        "$py" -m venv "$test_dir/venv" && "$test_dir/venv/bin/python" -m pip install -q "$whl" || rc=$?
    fi
    for impl in c python; do
        [ "$rc" = 0 ] || break
        (cd "$test_dir/src" && PYTHON_GIL=0 PSYCANCEL_IMPL="$impl" env "${ft_env[@]}" \
            bash "$OLDPWD/tools/suite_slot.sh" \
            "$OLDPWD/$test_dir/venv/bin/python" \
            -m tests.freethreading.stress --rounds 1 --threads 32) 2>&1 | tee "$test_dir/$impl.out" || rc=$?
    done
    row "matrix $name: its wheel, built, stress test" "$((SECONDS - t0))" "$([ "$rc" = 0 ] && echo ok || echo FAIL)"
    printf '%-6s %-7s %-5s %5ss  wheel %s%s\n' "$name" both "$([ "$rc" = 0 ] && echo ok || echo FAIL)" \
        "$((SECONDS - t0))" "$(basename "${whl:-none}")" \
        "$([ "$rc" = 0 ] && echo ": stress test passed, both twins")" >>"$out"
    return "$rc"
}

# What every run of a free-threaded interpreter gets: the first slot that frees
# (tools/suite_slot.sh), and 3.13t's sched_yield replaced (tools/ft_noyield.c,
# built here).
ft_env=(PSYCANCEL_SLOT_PRIORITY=1)
mkdir -p build
if cc -O2 -shared -fPIC -o build/ft_noyield.so tools/ft_noyield.c; then
    ft_env+=("LD_PRELOAD=$PWD/build/ft_noyield.so")
else
    log "tools/ft_noyield.c did not build: the free-threaded suites run without it"
fi

jobs_max="${PSYCANCEL_MATRIX_JOBS:-${#order[@]}}"
declare -A pids=()
status=0
t_all=$SECONDS
finish() {
    # The job $1 (a name) has ended: print its log, record its status.
    local name="$1" rc
    wait "${pids[$name]}" 2>/dev/null || true
    rc="$(cat "$results_dir/$name.rc" 2>/dev/null || echo 1)"
    [ "$rc" = 0 ] || status=1
    log "Python $name: done ($([ "$rc" = 0 ] && echo ok || echo FAIL)); its output:"
    cat ".venv-matrix/$name.log" >&2
    unset "pids[$name]"
}
reap() {
    local name
    for name in "${!pids[@]}"; do
        [ ! -e "$results_dir/$name.rc" ] || finish "$name"
    done
}
for version in "${order[@]}"; do
    while [ "${#pids[@]}" -ge "$jobs_max" ]; do
        sleep 2
        reap
    done
    log "starting Python $version (log: .venv-matrix/$version.log)"
    {
        rc=0
        run_one "$version" "${chosen[$version]}" || rc=$?
        echo "$rc" >"$results_dir/$version.rc"
    } >".venv-matrix/$version.log" 2>&1 &
    pids[$version]=$!
done
while [ "${#pids[@]}" -gt 0 ]; do
    sleep 2
    reap
done
log "summary ($((SECONDS - t_all)) s wall, $jobs_max Pythons at a time)"
printf '%-6s %-7s %-5s %6s  %s\n' python twin state time counts
for version in "${order[@]}"; do cat "$results_dir/$version" 2>/dev/null || true; done
# A failure's cause again, after the table (a CI page may show only the tail).
for version in "${order[@]}"; do
    [ "$(cat "$results_dir/$version.rc" 2>/dev/null || echo 1)" = 0 ] && continue
    log "Python $version failed; the last lines of .venv-matrix/$version.log:"
    grep -v '^[.sFExX]*\( *\[ *[0-9]*%\]\)\?$' ".venv-matrix/$version.log" | tail -n 25 >&2 || true
done
exit "$status"
