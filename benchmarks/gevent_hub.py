"""gevent: the largest hub gap during a cancel delayed to about 200 ms.

Each contender runs in its own monkey-patched child process
(``tests/support/gevent_child.py``: ``gevent.monkey.patch_all()``, psycogreen for
psycopg2): ``select pg_sleep(30)`` runs in a greenlet, another greenlet
ticks every millisecond, and the main greenlet cancels the query through a
proxy in this process that delays every chunk by ``--delay`` seconds each way
(the cancel takes about twice that). Printed: medians over ``--repeats``
cancels of the largest gap between two ticks during the cancel, and of the
cancel's duration, for

* ``psycancel``: ``psycancel.cancel()`` (gevent's own waiting under gevent);
* ``blocking wait``: the same plan run with the plain blocking wait, as
  psycancel did before (the compiled twin's C driver; the ctypes twin's
  ``poll(2)``, which ``patch_all()`` happens to make cooperative);
* ``psycopg2 cancel()``: psycopg2's own (legacy ``PQcancel``, GIL held).

::

    .venv/bin/python benchmarks/gevent_hub.py [--repeats 7] [--delay 0.1] [--tls]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testing import ThrowawayServer, find_postgres_prefix  # noqa: E402
from tests.support.gevent_rounds import gevent_rounds  # noqa: E402

CONTENDERS = [
    ("psycancel", "psycancel"),
    ("blocking wait (before)", "blocking"),
    ("psycopg2 cancel()", "psycopg2"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="cancels per contender")
    parser.add_argument("--delay", type=float, default=0.1, help="proxy delay per chunk (s)")
    parser.add_argument("--tls", action="store_true", help="sslmode=require (else disable)")
    args = parser.parse_args()
    sslmode = "require" if args.tls else "disable"
    print(
        f"gevent hub gap: medians of {args.repeats} cancels, proxy delay {args.delay * 1000:g} ms "
        f"per chunk each way, sslmode={sslmode}"
    )
    print(f"{'twin':<8} {'contender':<24} {'largest gap ms':>15} {'cancel ms':>10} {'ratio':>6}")
    with ThrowawayServer(find_postgres_prefix()) as server:
        for impl in ("c", "python"):
            for label, how in CONTENDERS:
                rounds = gevent_rounds(
                    server,
                    how=how,
                    impl=impl,
                    delay=args.delay,
                    sslmode=sslmode,
                    repeats=args.repeats,
                )
                gap = statistics.median(r["largest_gap"] for r in rounds)
                took = statistics.median(r["cancel_seconds"] for r in rounds)
                print(
                    f"{impl:<8} {label:<24} {gap * 1000:>15.1f} {took * 1000:>10.1f} "
                    f"{gap / took:>6.2f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
