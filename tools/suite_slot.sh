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
set -uo pipefail
[ $# -gt 0 ] || { echo "usage: $0 COMMAND [ARG]..." >&2; exit 2; }
dir="${PSYCANCEL_SLOT_DIR:-}"
# (SIGINT and SIGQUIT at their defaults for the suite: a script started with "&"
# by a shell without job control has them ignored, and a Python started so
# installs no KeyboardInterrupt handler: the Ctrl-C tests would test another
# program.)
[ -n "$dir" ] && [ -d "$dir" ] || exec env --default-signal=INT,QUIT "$@"
slots="${PSYCANCEL_SUITE_SLOTS:-3}"
busy=75  # flock's status when the slot is taken (no suite command exits with it)
t0=$SECONDS
while :; do
    for i in $(seq 1 "$slots"); do
        # (A wait is said, so that a log shows where a stage's time went.)
        flock -n -E "$busy" "$dir/slot.$i" bash -c \
            '[ "$1" -eq 0 ] || printf "suite_slot: waited %s s for a slot\n" "$1" >&2; shift; exec "$@"' \
            sh "$((SECONDS - t0))" env --default-signal=INT,QUIT "$@"
        rc=$?
        [ "$rc" = "$busy" ] || exit "$rc"
    done
    sleep 1
done
