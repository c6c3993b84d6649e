"""What a ``cancel_after`` block that never fires costs, against the query it guards.

    python benchmarks/block_cost.py             # 7 rounds of 3000 queries per variant
    python benchmarks/block_cost.py --quick     # smoke form (correctness only)

One run, side by side, interleaved rounds: ``select 1`` on a plain loopback
connection, bare and inside ``with psycancel.cancel_after(conn, 10)``, for
psycopg2 and psycopg 3, with whichever twin ``PSYCANCEL_IMPL`` selects. Client
CPU is the process's CPU time (``time.process_time``: every thread of the
process, psycancel's timer thread included; the server is another process)
per query; wall time per query is printed too. The figure the target is about
is the median over rounds of (CPU per guarded query - CPU per bare query);
target (issue 19): at most 25 us. It also checks that no thread was started per
block and that no timer entry is left behind.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment

import psycancel
from psycancel import pq
from psycancel._engine import timers

TARGET_US = 25.0


def per_query(func: Callable[[], object], count: int) -> tuple[float, float]:
    """(client CPU us, wall us) per call of ``func``, over ``count`` calls."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(count):
        func()
    return (
        (time.process_time() - cpu0) / count * 1e6,
        (time.perf_counter() - wall0) / count * 1e6,
    )


def variants(dsn: str) -> dict[str, tuple[Callable[[], object], Callable[[], object], object]]:
    """driver -> (bare query, guarded query, connection)."""
    import psycopg
    import psycopg2

    conn2 = psycopg2.connect(dsn)
    conn2.autocommit = True
    cur2 = conn2.cursor()
    conn3 = psycopg.connect(dsn, autocommit=True)

    def bare2() -> object:
        cur2.execute("select 1")
        return cur2.fetchall()

    def guarded2() -> object:
        with psycancel.cancel_after(conn2, 10):
            cur2.execute("select 1")
            return cur2.fetchall()

    def bare3() -> object:
        return conn3.execute("select 1").fetchall()

    def guarded3() -> object:
        with psycancel.cancel_after(conn3, 10):
            return conn3.execute("select 1").fetchall()

    return {"psycopg2": (bare2, guarded2, conn2), "psycopg": (bare3, guarded3, conn3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--quick", action="store_true", help="smoke form: 2 rounds of 200")
    args = parser.parse_args()
    rounds, count = (2, 200) if args.quick else (args.rounds, args.count)

    with environment() as env:
        found = variants(env.server.dsn("disable"))
        threads_before = threading.active_count()
        print(f"twin: {pq.__impl__}; {rounds} rounds x {count} queries per variant, interleaved")
        print(
            f"{'driver':10} {'bare cpu':>9} {'block cpu':>10} {'extra':>8} "
            f"{'bare wall':>10} {'block wall':>11}   (us per query, medians)"
        )
        verdicts = []
        for name, (bare, guarded, conn) in found.items():
            for func in (bare, guarded):  # warm up
                per_query(func, max(count // 10, 50))
            extra: list[float] = []
            rows: dict[str, list[tuple[float, float]]] = {"bare": [], "block": []}
            for _ in range(rounds):
                b = per_query(bare, count)
                g = per_query(guarded, count)
                rows["bare"].append(b)
                rows["block"].append(g)
                extra.append(g[0] - b[0])
            med = statistics.median
            cost = med(extra)
            print(
                f"{name:10} {med(r[0] for r in rows['bare']):9.1f} "
                f"{med(r[0] for r in rows['block']):10.1f} {cost:8.1f} "
                f"{med(r[1] for r in rows['bare']):10.1f} {med(r[1] for r in rows['block']):11.1f}"
            )
            verdicts.append((name, cost))
            conn.close()  # type: ignore[attr-defined]
        # One shared timer thread at most, whatever the number of blocks.
        assert threading.active_count() <= threads_before + 1, threading.enumerate()
        assert timers.pending() == 0, timers.pending()
        for name, cost in verdicts:
            verdict = "met" if cost <= TARGET_US else "MISSED"
            print(
                f"target: {name} block costs {cost:.1f} us of client CPU <= {TARGET_US:g} us: "
                f"{verdict}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
