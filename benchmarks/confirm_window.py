"""Measure the confirm window of ``psycancel._confirm`` and the losses per deployment.

Confirm window: how long after a cancel *completed* (the server, or the
pooler, closed the cancel connection) the driver's blocked call returns with
"query cancelled", when the cancel did reach the session's backend. That is
the delay a block may still run after a cancel that took; the window must be
well above its worst case (a re-send on a slow return is harmless, a loss
noticed late only costs time). Measured with psycopg2 (TLS) directly to the
server and through a peered PgBouncer (2 processes, ``so_reuseport``) whose
other process often has to forward the cancel.

Losses: ``--deployments`` also runs the rounds of tests/drivers/test_deployments.py
(psycopg2 and psycopg) with more rounds and prints lost / recovered /
reported per deployment.

::

    .venv/bin/python benchmarks/confirm_window.py [--rounds 40] [--deployments]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg2

import psycancel
from testing import ThrowawayServer, find_postgres_prefix
from tests.support.deployments import HAProxy, PgBouncerFarm, peering_pgbouncer


def window_rounds(dsn: str, rounds: int) -> list[float]:
    """Seconds from the cancel's completion to the driver's return, per round."""
    delays = []
    for _ in range(rounds):
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        done: list[float] = []

        def cancel(conn: Any = conn, done: list[float] = done) -> None:
            time.sleep(0.2)
            psycancel.cancel(conn, timeout=10)
            done.append(time.monotonic())

        thread = threading.Thread(target=cancel)
        thread.start()
        try:
            with conn.cursor() as cur:
                cur.execute("select pg_sleep(20)")
        except psycopg2.errors.QueryCanceled:
            returned = time.monotonic()
        else:
            raise AssertionError("not cancelled")
        thread.join()
        conn.close()
        delays.append(max(0.0, returned - done[0]))
    return delays


def describe(delays: list[float]) -> str:
    ms = sorted(d * 1000 for d in delays)
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))]
    return (
        f"n={len(ms)} median {statistics.median(ms):.2f} ms, p95 {p95:.2f} ms, max {ms[-1]:.2f} ms"
    )


def deployments(server: Any, second: Any, rounds: int) -> None:
    from tests.drivers.test_deployments import tally

    binary = peering_pgbouncer()
    cases: list[tuple[str, Any, float]] = []
    if binary is not None:
        for peered in (True, False):
            for mode in ("session", "transaction"):
                farm = PgBouncerFarm(binary, server, pool_mode=mode, peered=peered).start()
                name = f"pgbouncer x2 {'peered' if peered else 'unpeered'} {mode}"
                cases.append((name, farm, 20.0 if peered else 3.0))
    for balance in ("roundrobin", "leastconn", "source"):
        lb = HAProxy([server, second], balance).start()
        cases.append((f"haproxy {balance}", lb, 2.5 if balance == "leastconn" else 20.0))
    try:
        for name, front, sleep in cases:
            n = rounds if not name.endswith("leastconn") else max(2, rounds // 4)
            for driver in ("psycopg2", "psycopg"):
                result = tally(driver, front.dsn(), sleep, rounds=n)
                print(result.line(f"{name} {driver}").split(" (re-sends")[0], flush=True)
                assert result.silent == 0
    finally:
        for _, front, _ in cases:
            front.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--deployments", action="store_true")
    args = parser.parse_args()
    prefix = find_postgres_prefix()
    with ThrowawayServer(prefix) as server, ThrowawayServer(prefix) as second:
        print("direct, TLS:", describe(window_rounds(server.dsn("require"), args.rounds)))
        binary = peering_pgbouncer()
        if binary is not None:
            farm = PgBouncerFarm(binary, server, pool_mode="session", peered=True).start()
            try:
                delays = window_rounds(farm.dsn(), args.rounds)
                print(f"peered PgBouncer x2 (forwarded {farm.forwarded()}):", describe(delays))
            finally:
                farm.stop()
        if args.deployments:
            deployments(server, second, args.rounds)


if __name__ == "__main__":
    main()
