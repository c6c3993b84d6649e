#!/usr/bin/env bash
# Run a command (a test suite run) in one of $PSYCANCEL_SUITE_SLOTS slots.
#
#   bash tools/suite_slot.sh COMMAND [ARG]...
#
# The test command (tools/quickstart.sh) runs suites from three places at once:
# its own stages, tools/build_wheel.sh and tools/matrix.sh. Each suite mostly
# waits, but together they are what loads the machine: measured on 2 cores, three
# suites at a time beside the builds load it to 8-10 (the timing margins are set
# for that: a loop gap, a deadline's slack). So every suite run
# takes a slot first: at most $PSYCANCEL_SUITE_SLOTS of them run at once, and
# the others wait here (the builds, venvs and checks in between need no slot).
# The slots are lock files in $PSYCANCEL_SLOT_DIR (made by tools/quickstart.sh);
# without it the command just runs. The exit status is the command's.
#
# $PSYCANCEL_SLOT_PRIORITY (0-9, default 5): a free slot goes to a waiting run
# of the smallest number first. The test command gives the runs that other
# work waits for (the free-threaded interpreter's: its stress test and wheel
# come after; the installed wheel's: the aarch64 run comes after) a smaller one,
# so that they do not start last and make the whole command wait for them.
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG]..." >&2; exit 2; }
dir="${PSYCANCEL_SLOT_DIR:-}"
# (SIGINT and SIGQUIT at their defaults for the suite: a script started with "&"
# by a shell without job control has them ignored, and a Python started so
# installs no KeyboardInterrupt handler: the Ctrl-C tests would test another
# program.)
[ -n "$dir" ] && [ -d "$dir" ] || exec env --default-signal=INT,QUIT "$@"
slots="${PSYCANCEL_SUITE_SLOTS:-3}"
priority="${PSYCANCEL_SLOT_PRIORITY:-5}"
case "$priority" in [0-9]) ;; *) echo "$0: PSYCANCEL_SLOT_PRIORITY must be 0-9" >&2; exit 2 ;; esac
busy=75  # flock's status when the slot is taken (no suite command exits with it)
# A waiting run is a file "waiting/<priority>.<pid>" (removed when it gets a
# slot or ends).
mkdir -p "$dir/waiting"
me="$dir/waiting/$priority.$$"
: >"$me"
trap 'rm -f "$me"' EXIT
ahead() {
    # Is a run of a smaller number still waiting?
    local f n
    for f in "$dir"/waiting/*.*; do
        [ -e "$f" ] || continue
        n="${f##*/}"
        [ "${n%%.*}" -lt "$priority" ] || continue
        kill -0 "${n#*.}" 2>/dev/null && return 0
        rm -f "$f"  # (its run is gone)
    done
    return 1
}
t0=$SECONDS
while :; do
    if ! ahead; then
        for i in $(seq 1 "$slots"); do
            # (A wait is said, so that a log shows where a stage's time went.)
            flock -n -E "$busy" "$dir/slot.$i" bash -c \
                'rm -f "$2"
                 [ "$1" -eq 0 ] || printf "suite_slot: waited %s s for a slot\n" "$1" >&2
                 shift 2; exec "$@"' \
                sh "$((SECONDS - t0))" "$me" env --default-signal=INT,QUIT "$@"
            rc=$?
            [ "$rc" = "$busy" ] || exit "$rc"
        done
    fi
    sleep 1
done
