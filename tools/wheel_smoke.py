"""Smoke test of an installed wheel: a psycopg2 and a psycopg TLS query cancelled, encrypted.

    python tools/wheel_smoke.py --impl c        # the platform wheel: the compiled twin
    python tools/wheel_smoke.py --impl python   # the py3-none-any wheel: the ctypes twin

Run with the interpreter of a fresh venv holding the wheel, psycopg2-binary and
psycopg[binary] (tools/build_wheel.sh does, on 3.10 and 3.13), from a copy of
the repository's ``testing/`` (the throwaway server: ``$PSYCANCEL_PG_PREFIX``
or the cached build), never from the source tree's ``psycancel``. For each
driver: a TLS connection (``sslmode=require``) runs ``pg_sleep(60)`` in a
thread; once the server shows it active, ``psycancel.cancel(conn, strict=True)``
cancels it (strict: a clear-text cancel of the encrypted connection would
raise); the query must fail with SQLSTATE 57014, and psycancel's DEBUG record
of the cancel must say: the new (PQcancelConn) API, encrypted, the driver's own
libpq. One line per driver; exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # testing/ (development only)


class _Records(logging.Handler):
    """Keeps the ``psycancel_cancel`` facts of psycancel's DEBUG records."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.facts: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        facts = getattr(record, "psycancel_cancel", None)
        if facts is not None:
            self.facts.append(facts)


def _wait_active(admin: Any, pid: int) -> None:
    """Until the server shows backend ``pid`` running its query (at most 30 s)."""
    deadline = time.monotonic() + 30
    with admin.cursor() as cur:
        while time.monotonic() < deadline:
            cur.execute("select state from pg_stat_activity where pid = %s", (pid,))
            row = cur.fetchone()
            if row is not None and row[0] == "active":
                return
            time.sleep(0.05)
    raise RuntimeError(f"backend {pid} never became active")


def _cancel_one(
    name: str,
    connect: Callable[[str], Any],
    sqlstate_of: Callable[[BaseException], str | None],
    dsn: str,
    records: _Records,
) -> str:
    import psycancel

    conn = connect(dsn)
    admin = connect(dsn)
    admin.autocommit = True
    try:
        # psycopg2: conn.info.ssl_in_use; psycopg: conn.pgconn.ssl_in_use.
        in_use = getattr(conn.info, "ssl_in_use", None)
        if in_use is None:
            in_use = conn.pgconn.ssl_in_use
        if not in_use:
            raise AssertionError(f"{name}: the connection is not encrypted")
        pid = conn.info.backend_pid
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                with conn.cursor() as cur:
                    cur.execute("select pg_sleep(60)")
                outcome.append(None)
            except BaseException as ex:
                outcome.append(ex)

        thread = threading.Thread(target=run)
        thread.start()
        _wait_active(admin, pid)
        before = len(records.facts)
        t0 = time.perf_counter()
        psycancel.cancel(conn, timeout=10.0, strict=True)
        took = time.perf_counter() - t0
        thread.join(30)
        if thread.is_alive() or not outcome:
            raise AssertionError(f"{name}: the query did not end after the cancel")
        error = outcome[0]
        if error is None or sqlstate_of(error) != "57014":
            raise AssertionError(f"{name}: the query ended with {error!r}, not SQLSTATE 57014")
        facts = records.facts[before:]
        if len(facts) != 1:
            raise AssertionError(f"{name}: {len(facts)} cancel records")
        (fact,) = facts
        if fact["api"] != "new" or not fact["encrypted"] or fact["outcome"] != "ok":
            raise AssertionError(f"{name}: cancel record {fact}")
        return (
            f"{name}: TLS query cancelled (57014) in {took * 1000:.1f} ms, "
            f"{fact['api']} API, encrypted={fact['encrypted']}, libpq {fact['libpq']}"
        )
    finally:
        conn.close()
        admin.close()


def main() -> int:
    """Start a throwaway TLS server, cancel one query per driver, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--impl", choices=("c", "python"), required=True, help="expected twin")
    args = parser.parse_args()

    import psycopg
    import psycopg2
    import psycopg2.errors

    import psycancel
    import psycancel.pq as pq
    from testing.server import ThrowawayServer

    here = Path(__file__).resolve().parent.parent
    if Path(psycancel.__file__).resolve().is_relative_to(here):
        raise SystemExit(f"psycancel comes from the source tree: {psycancel.__file__}")
    if pq.__impl__ != args.impl:
        raise SystemExit(f"psycancel.pq.__impl__ is {pq.__impl__!r}, expected {args.impl!r}")
    print(
        f"Python {sys.version.split()[0]}: psycancel {psycancel.__version__} from "
        f"{Path(psycancel.__file__).parent}, twin {pq.__impl__!r}"
    )
    records = _Records()
    logger = logging.getLogger("psycancel")
    logger.addHandler(records)
    logger.setLevel(logging.DEBUG)

    def pg2_state(ex: BaseException) -> str | None:
        return getattr(ex, "pgcode", None)

    def pg3_state(ex: BaseException) -> str | None:
        diag = getattr(ex, "diag", None)
        return getattr(diag, "sqlstate", None)

    failures = 0
    with ThrowawayServer() as server:
        dsn = server.dsn_tls
        pg2_version = str(getattr(psycopg2, "__version__", "?")).split()[0]
        drivers: list[tuple[str, Callable[[str], Any], Callable[[BaseException], str | None]]] = [
            (f"psycopg2 {pg2_version}", psycopg2.connect, pg2_state),
            (f"psycopg {psycopg.__version__}", psycopg.connect, pg3_state),
        ]
        for name, connect, sqlstate_of in drivers:
            try:
                print(_cancel_one(name, connect, sqlstate_of, dsn, records))
            except Exception as ex:
                failures += 1
                print(f"FAIL {ex}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
