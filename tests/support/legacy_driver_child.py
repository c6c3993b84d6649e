"""Child process for the driver tests that need a driver on an old libpq.

``python tests/support/legacy_driver_child.py SCENARIO`` with a JSON object of
arguments on stdin; prints ``RESULT <json>`` and exits 0, or fails with a
traceback. Run by ``tests.support.drivers.run_legacy`` with ``PYTHONPATH`` starting
with psycopg2 built from source against the system libpq (< 17): the
``psycopg2`` import name is taken by psycopg2-binary in the test process, and
the driver must be imported before any other libpq with the same soname
(``libpq.so.5``) is loaded, or the dynamic linker binds it to that one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

from tests.support.active import SLEEP, poll_until_active, poll_until_active_async
from tests.support.sqlstate import pgcode

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")


def result(**values: Any) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def names(items: list[Any]) -> list[str]:
    return [type(x).__name__ if isinstance(x, BaseException) else x.__name__ for x in items]


# --- psycopg2 (the source build) ---------------------------------------------------------


def psycopg2_connect(dsn: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


def wait_active(monitor: Any, pid: int) -> None:
    with monitor.cursor() as cur:

        def rows(sql: str) -> list[Any]:
            cur.execute(sql)
            return list(cur.fetchall())

        poll_until_active(rows, pid)


class Running:
    """``SLEEP`` running on ``conn`` in a thread, already active on the server."""

    def __init__(self, conn: Any, monitor: Any) -> None:
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(conn,), daemon=True)
        self.thread.start()
        wait_active(monitor, conn.get_backend_pid())

    def _main(self, conn: Any) -> None:
        try:
            with conn.cursor() as cur:
                cur.execute(SLEEP)
        except BaseException as ex:
            self.error = ex

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def call_api(api: str, conn: Any, **kwargs: Any) -> None:
    import psycancel

    if api == "sync":
        psycancel.cancel(conn, **kwargs)
    elif api == "async":
        asyncio.run(psycancel.cancel_async(conn, **kwargs))
    elif api == "trio":
        import anyio

        async def main() -> None:
            await psycancel.cancel_async(conn, **kwargs)

        anyio.run(main, backend="trio")
    else:
        raise ValueError(api)


def owner_info(conn: Any) -> dict[str, Any]:
    import psycopg2.extensions

    from psycancel._drivers.resolve import as_pgconn

    pgconn = as_pgconn(conn)
    return {
        "driver_file": psycopg2.__file__,
        "driver_libpq_version": psycopg2.extensions.libpq_version(),
        "owner_path": pgconn.libpq.path,
        "owner_version": pgconn.libpq.version,
        "owner_has_cancel_conn": pgconn.libpq.has_cancel_conn,
        "ptr_matches": pgconn.pgconn_ptr == conn.pgconn_ptr,
        "socket_matches": pgconn.socket == conn.fileno(),
        "ssl_in_use": pgconn.ssl_in_use,
    }


def scenario_owner() -> None:
    if ARGS.get("load_first"):
        # Load another libpq.so.5 before the driver: the driver binds to it.
        from psycancel.pq import Libpq

        Libpq.load(ARGS["load_first"])
    import psycopg2  # noqa: F401  (binds to the first libpq.so.5 loaded)

    conn = psycopg2_connect(ARGS["dsn"])
    try:
        result(**owner_info(conn))
    finally:
        conn.close()


def scenario_cancel() -> None:
    """A running psycopg2 query cancelled through the legacy path (policy applied)."""
    import psycopg2  # noqa: F401  (first)

    import psycancel

    conn = psycopg2_connect(ARGS["dsn"])
    monitor = psycopg2_connect(ARGS["monitor_dsn"])
    running = Running(conn, monitor)
    caught: list[BaseException] = []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        t0 = time.monotonic()
        try:
            call_api(ARGS["api"], conn, timeout=10, strict=ARGS["strict"])
        except psycancel.Error as ex:
            caught.append(ex)
        elapsed = time.monotonic() - t0
    still_running = not running.join(0.5)
    if still_running:  # refused: cancel it for real (plain text is fine now) to clean up
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            psycancel.cancel(conn, timeout=10)
        assert running.join(15)
    with conn.cursor() as cur:
        cur.execute("select 1")
        after = cur.fetchone()[0]
    info = owner_info(conn)
    result(
        errors=names(caught),
        warnings=names([w.category for w in record]),
        warning_files=[w.filename for w in record],
        messages=[str(w.message) for w in record] + [str(e) for e in caught],
        still_running_after_api=still_running,
        query_pgcode=pgcode(running.error),
        after=after,
        elapsed=elapsed,
        **info,
    )


def scenario_cancel_after() -> None:
    """``cancel_after`` with a psycopg2 on the old libpq."""
    import psycopg2

    import psycancel

    conn = psycopg2_connect(ARGS["dsn"])
    caught: list[BaseException] = []
    cause = None
    fired = None
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        try:
            timer = psycancel.cancel_after(conn, ARGS["seconds"], strict=ARGS["strict"])
            with timer, conn.cursor() as cur:
                cur.execute(ARGS["query"])
        except (psycancel.Error, psycopg2.Error) as ex:
            caught.append(ex)
            cause = type(ex.__cause__).__name__ if ex.__cause__ else None
        else:
            fired = timer.fired
    with conn.cursor() as cur:
        cur.execute("select 1")
        after = cur.fetchone()[0]
    result(
        errors=names(caught),
        cause=cause,
        fired=fired,
        warnings=names([w.category for w in record]),
        after=after,
    )


def scenario_psycopg_python() -> None:
    """psycopg 3's python implementation (PSYCOPG_IMPL=python): its ctypes libpq."""
    import psycopg

    from psycancel._drivers.resolve import as_pgconn

    assert psycopg.pq.__impl__ == "python", psycopg.pq.__impl__
    conn = psycopg.connect(ARGS["dsn"], autocommit=True)
    monitor = psycopg.connect(ARGS["monitor_dsn"], autocommit=True)
    pgconn = as_pgconn(conn)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(SLEEP)
        except BaseException as ex:
            errors.append(ex)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def monitor_rows(sql: str) -> list[Any]:
        return monitor.execute(sql).fetchall()

    poll_until_active(monitor_rows, conn.info.backend_pid)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        call_api(ARGS["api"], conn, timeout=10)
    thread.join(15)
    assert not thread.is_alive()
    after = conn.execute("select 1").fetchone()
    result(
        psycopg_libpq_version=psycopg.pq.version(),
        owner_path=pgconn.libpq.path,
        owner_version=pgconn.libpq.version,
        owner_has_cancel_conn=pgconn.libpq.has_cancel_conn,
        query_sqlstate=getattr(errors[0], "sqlstate", None) if errors else None,
        warnings=names([w.category for w in record]),
        after=after[0] if after else None,
    )


def scenario_aiopg() -> None:
    """aiopg (psycopg2 async) on the old libpq: cancel_async from another task."""
    import aiopg
    import psycopg2  # noqa: F401  (the source build, first)

    import psycancel

    async def main() -> dict[str, Any]:
        conn = await aiopg.connect(ARGS["dsn"])
        monitor = await aiopg.connect(ARGS["monitor_dsn"])
        cur = await conn.cursor()
        query = asyncio.ensure_future(cur.execute(SLEEP))
        mcur = await monitor.cursor()
        pid = conn.raw.get_backend_pid()

        async def monitor_rows(sql: str) -> list[Any]:
            await mcur.execute(sql)
            return list(await mcur.fetchall())

        await poll_until_active_async(monitor_rows, pid)
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            await psycancel.cancel_async(conn, timeout=10)
        try:
            await query
            code = None
        except asyncio.CancelledError as ex:  # aiopg's way of reporting QueryCanceled
            code = pgcode(ex)
        await cur.execute("select 1")
        after = (await cur.fetchone())[0]
        info = owner_info(conn.raw)
        conn.close()
        monitor.close()
        return {
            "query_pgcode": code,
            "after": after,
            "warnings": names([w.category for w in record]),
            **info,
        }

    result(**asyncio.run(main()))


SCENARIOS: dict[str, Callable[[], None]] = {
    "owner": scenario_owner,
    "cancel": scenario_cancel,
    "cancel_after": scenario_cancel_after,
    "psycopg_python": scenario_psycopg_python,
    "aiopg": scenario_aiopg,
}

if __name__ == "__main__":
    SCENARIOS[sys.argv[1]]()
