"""Child process of the cancel_on_interrupt outcome tests (issue 23 item 3).

``python tests/integrations/interrupt_outcome_child.py`` with a JSON object on
stdin: ``dsn`` and ``driver`` (``psycopg`` or ``psycopg2``). In the main thread
(signals are handled there only), four queries run inside
``cancel_on_interrupt``, each ended another way: SIGINT (the default
handler: ``KeyboardInterrupt``), SIGTERM with a handler that only sets a flag,
the server's ``statement_timeout``, another session's ``pg_cancel_backend``.
Prints ``RESULT <json>``: per scenario, the exception's class, its context's
and cause's classes, the SQLSTATE found along the chain and the signal.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import psycancel
from tests.support.active import SLEEP, poll_until_active
from tests.support.sqlstate import pgcode

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
DRIVER: str = ARGS["driver"]
DSN: str = ARGS["dsn"]

if DRIVER == "psycopg":
    import psycopg

    conn: Any = psycopg.connect(DSN, autocommit=True)
    PID = conn.info.backend_pid

    def execute(sql: str) -> None:
        conn.execute(sql)
else:
    import psycopg2

    conn = psycopg2.connect(DSN)
    conn.autocommit = True
    PID = conn.get_backend_pid()

    def execute(sql: str) -> None:
        with conn.cursor() as cur:
            cur.execute(sql)


import psycopg2 as monitor_driver  # noqa: E402  (the monitor, whatever the driver)

monitor = monitor_driver.connect(DSN)
monitor.autocommit = True


def rows(sql: str) -> list[Any]:
    with monitor.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def when_sleeping(action: Callable[[], object]) -> threading.Thread:
    def main() -> None:
        poll_until_active(rows, PID)
        action()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread


def name(exc: BaseException | None) -> str | None:
    return type(exc).__qualname__ if exc is not None else None


def scenario(action: Callable[[], object] | None, **block: Any) -> dict[str, Any]:
    thread = when_sleeping(action) if action is not None else None
    error: BaseException | None = None
    try:
        with psycancel.cancel_on_interrupt(conn, **block):
            execute(SLEEP)
    except BaseException as ex:
        error = ex
    if thread is not None:
        thread.join(30)
    execute("select 1")  # usable
    return {
        "raised": name(error),
        "context": name(error.__context__ if error else None),
        "cause": name(error.__cause__ if error else None),
        "context_cause": name(error.__context__.__cause__ if error and error.__context__ else None),
        "sqlstate": pgcode(error),
        "signal": getattr(error, "signal", None),
        "is_cancelled": isinstance(error, psycancel.QueryCancelled),
    }


flags: list[int] = []
signal.signal(signal.SIGTERM, lambda signum, frame: flags.append(signum))

results = {
    "sigint": scenario(lambda: os.kill(os.getpid(), signal.SIGINT)),
    "sigterm_flag": scenario(
        lambda: os.kill(os.getpid(), signal.SIGTERM), signals=(signal.SIGTERM,)
    ),
    "pg_cancel_backend": scenario(lambda: rows(f"select pg_cancel_backend({PID})")),
}
execute("set statement_timeout = 300")
results["statement_timeout"] = scenario(None)
results["sigterm_flags"] = flags
print("RESULT", json.dumps(results), flush=True)
