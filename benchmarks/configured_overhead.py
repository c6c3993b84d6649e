"""What a configured default deadline that never fires costs per query (issue 23).

    python benchmarks/configured_overhead.py            # 7 rounds of 2000 queries per variant
    python benchmarks/configured_overhead.py --quick    # smoke form (correctness only)

One run, side by side, interleaved rounds: ``select 1`` on a plain loopback
connection, bare and with a configured default of 10 s (never reached),
through each integration of :mod:`psycancel.integrations`:

* ``psycopg``: ``install(conn, 10)`` (``DeadlineCursor``), ``conn.execute``;
* ``psycopg async``: ``install(aconn, 10)`` (``AsyncDeadlineCursor``), one
  event loop, ``await aconn.execute``;
* ``psycopg2``: ``install(conn, 10)`` (``DeadlineCursor``), ``cur.execute``;
* ``sqlalchemy``: ``install(engine, 10)`` (engine events), the psycopg dialect,
  ``conn.exec_driver_sql``; the bare variant is a second engine without it;
* ``django``: ``connection.execute_wrapper(QueryDeadline(10))`` (what
  ``install()`` appends), the psycopg backend, ``cursor.execute``.

Client CPU is the process's CPU time (``time.process_time``: every thread,
psycancel's timer thread included; the server is another process) per query.
The figure the target is about is the median over rounds of (CPU per
configured query - CPU per bare query); target (issue 23): at most 25 us.
Whichever twin ``PSYCANCEL_IMPL`` selects. Also checks that no timer entry is
left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import environment

from psycancel import pq
from psycancel._engine import timers

TARGET_US = 25.0
SQL = "select 1"
LIMIT = 10.0

Pair = tuple[Callable[[int], tuple[float, float]], Callable[[int], tuple[float, float]]]
"""(bare, configured): each runs ``count`` queries; (client CPU us, wall us) per query."""


def per_query(func: Callable[[], object], count: int) -> tuple[float, float]:
    """(client CPU us, wall us) per call of ``func``, over ``count`` calls."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(count):
        func()
    return (
        (time.process_time() - cpu0) / count * 1e6,
        (time.perf_counter() - wall0) / count * 1e6,
    )


def looped(func: Callable[[], object]) -> Callable[[int], tuple[float, float]]:
    return lambda count: per_query(func, count)


def psycopg_pair(dsn: str, stack: ExitStack) -> Pair:
    import psycopg

    from psycancel.integrations import psycopg as deadlines

    bare = stack.enter_context(psycopg.connect(dsn, autocommit=True))
    conf = stack.enter_context(psycopg.connect(dsn, autocommit=True))
    deadlines.install(conf, LIMIT)
    return looped(lambda: bare.execute(SQL).fetchall()), looped(
        lambda: conf.execute(SQL).fetchall()
    )


def psycopg_async_pair(dsn: str, stack: ExitStack) -> Pair:
    import psycopg

    from psycancel.integrations import psycopg as deadlines

    loop = asyncio.new_event_loop()
    stack.callback(loop.close)
    bare = loop.run_until_complete(psycopg.AsyncConnection.connect(dsn, autocommit=True))
    conf = loop.run_until_complete(psycopg.AsyncConnection.connect(dsn, autocommit=True))
    stack.callback(lambda: loop.run_until_complete(conf.close()))
    stack.callback(lambda: loop.run_until_complete(bare.close()))
    deadlines.install(conf, LIMIT)

    def runner(conn: Any) -> Callable[[int], tuple[float, float]]:
        async def many(count: int) -> tuple[float, float]:
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(count):
                await (await conn.execute(SQL)).fetchall()
            return (
                (time.process_time() - cpu0) / count * 1e6,
                (time.perf_counter() - wall0) / count * 1e6,
            )

        return lambda count: loop.run_until_complete(many(count))

    return runner(bare), runner(conf)


def psycopg2_pair(dsn: str, stack: ExitStack) -> Pair:
    import psycopg2

    from psycancel.integrations import psycopg2 as deadlines

    bare = psycopg2.connect(dsn)
    conf = psycopg2.connect(dsn)
    for conn in (bare, conf):
        conn.autocommit = True
        stack.callback(conn.close)
    deadlines.install(conf, LIMIT)
    bare_cur, conf_cur = bare.cursor(), conf.cursor()
    assert isinstance(conf_cur, deadlines.DeadlineCursor)

    def run(cur: Any) -> Callable[[], object]:
        def query() -> object:
            cur.execute(SQL)
            return cur.fetchall()

        return query

    return looped(run(bare_cur)), looped(run(conf_cur))


def sqlalchemy_pair(dsn: str, stack: ExitStack) -> Pair:
    import psycopg
    import sqlalchemy

    from psycancel.integrations import sqlalchemy as deadlines

    def engine() -> Any:
        eng = sqlalchemy.create_engine(
            "postgresql+psycopg://",
            creator=lambda: psycopg.connect(dsn, autocommit=True),
            pool_size=1,
        )
        stack.callback(eng.dispose)
        return eng

    bare_engine, conf_engine = engine(), engine()
    deadlines.install(conf_engine, LIMIT)
    bare = stack.enter_context(bare_engine.connect())
    conf = stack.enter_context(conf_engine.connect())
    return looped(lambda: bare.exec_driver_sql(SQL).fetchall()), looped(
        lambda: conf.exec_driver_sql(SQL).fetchall()
    )


def django_pair(dsn: str, stack: ExitStack) -> Pair:
    import django  # type: ignore[import-untyped]
    from django.conf import settings  # type: ignore[import-untyped]

    from psycancel.integrations import django as deadlines
    from testing.conninfo import parse_conninfo

    params = parse_conninfo(dsn)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": params.get("dbname", "postgres"),
                "USER": params.get("user", ""),
                "HOST": params["host"],
                "PORT": params["port"],
                "OPTIONS": {"sslmode": "disable"},
            }
        },
        USE_TZ=True,
    )
    django.setup()
    from django.db import connection  # type: ignore[import-untyped]

    cursor = connection.cursor()
    stack.callback(connection.close)
    wrapper = deadlines.QueryDeadline(LIMIT)

    def bare() -> object:
        cursor.execute(SQL)
        return cursor.fetchall()

    def configured(count: int) -> tuple[float, float]:
        with connection.execute_wrapper(wrapper):
            return per_query(bare, count)

    return looped(bare), configured


VARIANTS: dict[str, Callable[[str, ExitStack], Pair]] = {
    "psycopg": psycopg_pair,
    "psycopg async": psycopg_async_pair,
    "psycopg2": psycopg2_pair,
    "sqlalchemy": sqlalchemy_pair,
    "django": django_pair,
}


def rounds_of(pair: Pair, rounds: int, count: int) -> Iterator[tuple[tuple[float, float], ...]]:
    bare, configured = pair
    bare(max(count // 10, 50))  # warm up
    configured(max(count // 10, 50))
    for _ in range(rounds):
        yield bare(count), configured(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--quick", action="store_true", help="smoke form: 2 rounds of 100")
    args = parser.parse_args()
    rounds, count = (2, 100) if args.quick else (args.rounds, args.count)
    med = statistics.median

    with environment() as env, ExitStack() as stack:
        dsn = env.server.dsn("disable")
        print(f"twin: {pq.__impl__}; {rounds} rounds x {count} queries per variant, interleaved")
        print(
            f"{'integration':14} {'bare cpu':>9} {'conf cpu':>9} {'extra':>7} "
            f"{'bare wall':>10} {'conf wall':>10}   (us per query, medians)"
        )
        verdicts = []
        for name, make in VARIANTS.items():
            results = list(rounds_of(make(dsn, stack), rounds, count))
            extra = med(c[0] - b[0] for b, c in results)
            print(
                f"{name:14} {med(b[0] for b, _ in results):9.1f} "
                f"{med(c[0] for _, c in results):9.1f} {extra:7.1f} "
                f"{med(b[1] for b, _ in results):10.1f} {med(c[1] for _, c in results):10.1f}"
            )
            verdicts.append((name, extra))
        assert timers.pending() == 0, timers.pending()
        for name, extra in verdicts:
            verdict = "met" if extra <= TARGET_US else "MISSED"
            print(f"target: {name}: {extra:.1f} us per query <= {TARGET_US:g} us: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
