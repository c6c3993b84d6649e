#!/usr/bin/env bash
# Memory-check the compiled twin (psycancel_c._pq) under valgrind memcheck.
#
#   bash tools/valgrind.sh           # full: test_misuse, test_cancel, test_offload_engine
#   bash tools/valgrind.sh --short   # CI form: compiled-twin misuse, sync cancels, the engine
#   bash tools/valgrind.sh -- PYTEST_ARGS...   # any selection
#
# Runs pytest under `valgrind --tool=memcheck` with PSYCANCEL_IMPL=c and
# PYTHONMALLOC=malloc (so that memcheck sees every Python allocation), then
# sorts the error records: an error (or a definite leak) whose stack has a
# frame in psycancel_c is *attributed* to psycancel; the rest is noise from
# CPython, OpenSSL, libc (reported as a count, not a failure; see
# tools/valgrind.supp for what is suppressed outright). Exits 1 if any error
# is attributed to psycancel_c, or if the tests fail.
#
# Needs: valgrind (apt-get install valgrind), a built psycancel_c, and
# PostgreSQL as for the test suite (tools/build_postgres.sh). The server runs
# natively (children are not traced). Logs: $VALGRIND_LOG_DIR (default: a
# temporary directory, printed).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
if [ "${1:-}" = "--short" ]; then mode=short; shift; fi
if [ "${1:-}" = "--" ]; then mode=custom; shift; fi

command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
python="${PYTHON:-python3}"
# The real interpreter, not a wrapper script (pyenv shims are bash scripts:
# valgrind would check bash and run Python untraced).
python="$("$python" -c 'import sys; print(sys.executable)')"
PSYCANCEL_IMPL=c "$python" -c 'import psycancel_c._pq' || { echo "psycancel_c is not built" >&2; exit 2; }

# valgrind emulates RLIMIT_NOFILE (the kernel never sees a lowered limit), so
# the engine's poll(2) cannot be made to fail there: that test runs in the
# normal suite only.
no_rlimit="not failing_poll"
# A signal's timing neither: valgrind runs a process-directed signal's handler in
# whichever thread it polls signals in (a thread of the test's proxy, say), not
# in the main thread as Linux would when that thread is not in a system call;
# the main thread, between its signal checks with the GIL released, then enters
# its poll(2) and waits out the cancel's timeout (30 s instead of 0.3, seen
# under load). It runs in every normal suite.
no_rlimit="$no_rlimit and not signal_handler_exception_interrupts_a_blocking_cancel"
case "$mode" in
    full) args=(tests/pq/test_misuse.py tests/cancel/test_cancel.py tests/pq/test_offload_engine.py -k "$no_rlimit") ;;
    # The compiled twin's misuse cases, and the sync API tests.
    short) args=(tests/pq/test_misuse.py tests/cancel/test_cancel.py tests/pq/test_offload_engine.py -k "not python and not async and $no_rlimit") ;;
    custom) args=("$@") ;;
esac

logdir="${VALGRIND_LOG_DIR:-$(mktemp -d /tmp/psycancel-valgrind.XXXXXX)}"
mkdir -p "$logdir"
echo "valgrind ($mode): logs in $logdir" >&2

set +e
PSYCANCEL_IMPL=c PYTHONMALLOC=malloc PYTHONDONTWRITEBYTECODE=1 \
PSYCANCEL_TEST_MISUSE_CHILD=1 \
valgrind --tool=memcheck --fair-sched=yes \
    --num-callers=40 \
    --leak-check=full --show-leak-kinds=definite --errors-for-leak-kinds=definite \
    --child-silent-after-fork=yes \
    --suppressions=tools/valgrind.supp \
    --log-file="$logdir/memcheck.%p.log" \
    "$python" -m pytest -q -p no:cacheprovider "${args[@]}"
tests_rc=$?
set -e

"$python" - "$logdir" "$tests_rc" <<'PY'
import re
import sys
from collections import Counter
from pathlib import Path

logdir, tests_rc = Path(sys.argv[1]), int(sys.argv[2])
OURS = re.compile(r"psycancel_c|_pq\.cpython")
HEAD = re.compile(r"^==(\d+)== (\S.*)$")
FRAME = re.compile(r"^==\d+==    (at|by) ")
ERROR_KINDS = (
    "Invalid ", "Use of uninitialised", "Conditional jump", "Syscall param",
    "Mismatched free", "Source and destination overlap", "Argument ",
)


def records(text):
    """(headline, frames) for every error or leak record of a log."""
    head, frames = None, []
    for line in text.splitlines():
        if FRAME.match(line):
            if head is not None:
                frames.append(line)
            continue
        if head is not None:
            yield head, frames
            head, frames = None, []
        m = HEAD.match(line)
        if m and (m.group(2).startswith(ERROR_KINDS) or "definitely lost in loss record" in m.group(2)):
            head = m.group(2)
    if head is not None:
        yield head, frames


ours, noise = [], Counter()
summaries = []
for log in sorted(logdir.glob("memcheck.*.log")):
    text = log.read_text(errors="replace")
    if "Command:" not in text:
        continue
    summaries += re.findall(r"ERROR SUMMARY: .*", text)
    for head, frames in records(text):
        if any(OURS.search(f) for f in frames):
            ours.append((log.name, head, frames))
        else:
            noise[re.sub(r"\d[\d,]* bytes in [\d,]+ blocks", "N bytes", head)] += 1

print("\n== valgrind memcheck summary")
for line in summaries:
    print("  " + line)
print(f"  error records not involving psycancel_c (CPython/OpenSSL/libc noise): {sum(noise.values())}")
for head, count in noise.most_common(8):
    print(f"    {count:5d} x {head}")
print(f"  error records attributed to psycancel_c: {len(ours)}")
for name, head, frames in ours[:20]:
    print(f"\n  [{name}] {head}")
    for frame in frames[:15]:
        print("    " + frame.split("== ", 1)[-1])
print(f"  tests: {'passed' if tests_rc == 0 else f'FAILED (exit status {tests_rc})'}")
sys.exit(1 if ours or tests_rc != 0 else 0)
PY
