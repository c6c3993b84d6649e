"""Child process of the gevent tests and benchmark: a cancel under ``patch_all()``.

``python tests/support/gevent_child.py`` with a JSON object on stdin: ``dsn`` (the
session, through the parent's proxy), ``monitor_dsn`` (straight to the
server), ``how`` (``psycancel``: ``psycancel.cancel()``; ``blocking``: the
same plan run with the plain blocking wait, as before gevent support;
``prepared`` / ``prepared-fire``: ``psycancel.prepare(conn)`` sent with
``.cancel()`` / ``.fire()``; ``psycopg2``: psycopg2's own ``conn.cancel()``),
``repeats``, ``timeout`` (of the cancel). The child
monkey-patches first, makes psycopg2 green (psycogreen), connects, and for
each repeat: runs ``select pg_sleep(30)`` in a greenlet, waits until the
monitor sees it, prints ``READY`` and waits for a line on stdin (the parent
then makes the proxy delay or black-hole new connections: the cancel's),
cancels while a
greenlet ticks every millisecond, and prints ``RESULT <json>``: the cancel's
duration, the largest gap between two ticks during it, and the SQLSTATE the
query ended with.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import psycogreen.gevent  # noqa: E402

from tests.support.active import poll_until_active  # noqa: E402

psycogreen.gevent.patch_psycopg()

import psycopg2  # noqa: E402

import psycancel  # noqa: E402
from psycancel._engine import blocking  # noqa: E402
from psycancel._procedure import prepare_cancel  # noqa: E402

# The public names are imported on first use: name the ones used here now, as a
# program does at start-up, so that no round measures an import.
psycancel.cancel, psycancel.prepare  # noqa: B018

SLEEP = "select pg_sleep(30)"


def connect(dsn: str) -> Any:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def wait_active(monitor: Any, pid: int) -> None:
    cur = monitor.cursor()

    def rows(sql: str) -> list[Any]:
        cur.execute(sql)
        return list(cur.fetchall())

    poll_until_active(rows, pid)  # time.sleep is gevent's here (patch_all)


def run_query(conn: Any) -> str | None:
    try:
        conn.cursor().execute(SLEEP)
    except psycopg2.Error as ex:
        return str(ex.pgcode)
    return None


def cancel(conn: Any, how: str, timeout: float) -> None:
    if how == "psycancel":
        psycancel.cancel(conn, timeout=timeout)
    elif how == "prepared":  # psycancel.prepare(): the send waits through gevent's hub too
        with psycancel.prepare(conn) as prepared:
            prepared.cancel(timeout=timeout)
    elif how == "prepared-fire":  # fired: a greenlet once gevent patched threading
        with psycancel.prepare(conn) as prepared:
            prepared.fire(timeout=timeout).result()
    elif how == "blocking":
        plan = prepare_cancel(conn, timeout=timeout, strict=False, stacklevel=1)
        assert plan is not None
        blocking.run_blocking(plan, cooperate=False)
    else:
        conn.cancel()


def largest_gap(ticks: list[float], start: float, end: float) -> float:
    """The longest interval between two ticks that overlaps ``[start, end]``."""
    gaps = [b - a for a, b in itertools.pairwise(ticks) if b >= start and a <= end]
    return max(gaps, default=end - start)


def one_round(conn: Any, monitor: Any, how: str, timeout: float) -> dict[str, Any]:
    query = gevent.spawn(run_query, conn)
    wait_active(monitor, conn.info.backend_pid)
    print("READY", flush=True)
    sys.stdin.readline()  # the parent set the proxy's delay
    ticks: list[float] = []
    running = True

    def tick() -> None:
        while running:
            ticks.append(time.monotonic())
            gevent.sleep(0.001)

    ticker = gevent.spawn(tick)
    gevent.sleep(0.05)
    start = time.monotonic()
    error = None
    try:
        cancel(conn, how, timeout)
    except psycancel.Error as ex:  # (a black-holed cancel: CancellationTimeout)
        error = type(ex).__name__
    end = time.monotonic()
    gevent.sleep(0.01)
    running = False
    ticker.join()
    print("RESTORE", flush=True)
    sys.stdin.readline()  # the parent removed the fault
    if error is not None:
        psycancel.cancel(conn, timeout=30)  # end the query now
    sqlstate = query.get(timeout=30)
    return {
        "error": error,
        "cancel_seconds": end - start,
        "largest_gap": largest_gap(ticks, start, end),
        "sqlstate": sqlstate,
        "impl": psycancel.pq.__impl__,
        "libpq_version": psycopg2.extensions.libpq_version(),
    }


def main() -> None:
    args = json.loads(sys.stdin.readline())
    conn = connect(args["dsn"])
    monitor = connect(args["monitor_dsn"])
    for _ in range(int(args.get("repeats", 1))):
        result = one_round(conn, monitor, args["how"], float(args.get("timeout", 30)))
        print("RESULT " + json.dumps(result), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
