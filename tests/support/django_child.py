"""Child process of the Django tests: one Django setup per process and backend.

``python tests/support/django_child.py`` with a JSON object on stdin: ``dsn``,
``monitor_dsn`` and ``backend`` (``psycopg`` or ``psycopg2``: Django's
PostgreSQL backend takes psycopg 3 when it can import it, so for psycopg2 the
child makes ``import psycopg`` fail before Django is imported). It runs every
scenario and prints ``RESULT <json>``:

* ``canceller``: ``Canceller(django.db.connection)`` made in the query's thread,
  ``cancel()`` from the main thread;
* ``wrapper``: the query thread's ``connections["default"]`` cancelled from the
  main thread;
* ``trap``: the main thread cancels through *its own* ``django.db.connection``
  (unconnected there): nothing is sent, the query runs on;
* ``cancel_after``: ``with cancel_after(django.db.connection, 0.3)`` around the query;
* ``unconnected``: a thread's wrapper that never connected: nothing to cancel.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
if ARGS["backend"] == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back to psycopg2

import django  # noqa: E402
from django.conf import settings  # noqa: E402

from testing.conninfo import parse_conninfo  # noqa: E402
from tests.support.active import SLEEP, active_sleep_query, poll_until_active  # noqa: E402
from tests.support.sqlstate import pgcode  # noqa: E402

params = parse_conninfo(ARGS["dsn"])
settings.configure(
    DATABASES={
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": params.get("dbname", "postgres"),
            "USER": params.get("user", ""),
            "HOST": params["host"],
            "PORT": params["port"],
            "OPTIONS": {"sslmode": params.get("sslmode", "prefer")},
        }
    },
    USE_TZ=True,
)
django.setup()

from django.db import connection, connections  # noqa: E402

import psycancel  # noqa: E402

if ARGS["backend"] == "psycopg2":
    import psycopg2 as monitor_driver
else:
    import psycopg as monitor_driver

monitor = monitor_driver.connect(ARGS["monitor_dsn"])
monitor.autocommit = True


def rows(sql: str) -> list[Any]:
    cur = monitor.cursor()
    cur.execute(sql)
    return list(cur.fetchall())


class QueryThread:
    """A thread running ``SLEEP`` on its own Django connection; ``setup`` runs first there."""

    def __init__(self, setup: Any = None) -> None:
        self.made: Any = None
        self.error: BaseException | None = None
        self.after: Any = None
        self.pid = 0
        self._setup = setup
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(30)
        poll_until_active(rows, self.pid)

    def _run(self) -> None:
        with connection.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            self.pid = cur.fetchone()[0]
        self.made = self._setup() if self._setup else None
        self._ready.set()
        try:
            with connection.cursor() as cur:
                cur.execute(SLEEP)
        except BaseException as ex:
            self.error = ex
        with connection.cursor() as cur:  # the connection is usable afterwards
            cur.execute("select 1")
            self.after = cur.fetchone()[0]
        connection.close()

    def join(self) -> dict[str, Any]:
        self._thread.join(30)
        assert not self._thread.is_alive(), "the query was never cancelled"
        return {
            "error": type(self.error).__qualname__ if self.error else None,
            "error_module": type(self.error).__module__ if self.error else None,
            "pgcode": pgcode(self.error),
            "after": self.after,
        }


def still_running(pid: int) -> bool:
    return bool(rows(active_sleep_query(pid)))


result: dict[str, Any] = {
    "backend": connection.vendor,
    "database": connection.Database.__name__,
    "driver": None,
}

# canceller: resolved in the query's thread, cancelled from this one
q = QueryThread(lambda: psycancel.Canceller(connection))
result["driver"] = type(q.made).__name__
q.made.cancel(timeout=10)
result["canceller"] = q.join()

# wrapper: the query thread's own DatabaseWrapper object, cancelled from here
q = QueryThread(lambda: connections["default"])
psycancel.cancel(q.made, timeout=10)
result["wrapper"] = q.join()
result["wrapper_type"] = type(q.made).__name__

# trap: this thread's django.db.connection is another wrapper, never connected
q = QueryThread(lambda: psycancel.Canceller(connection))
returned = psycancel.cancel(connection, timeout=10)
time.sleep(0.5)
result["trap"] = {"returned": returned, "still_running": still_running(q.pid)}
q.made.cancel(timeout=10)
result["trap_cleanup"] = q.join()


# cancel_after: the timer cancels, QueryTimeout with Django's error as its cause
def timed() -> dict[str, Any]:
    try:
        with psycancel.cancel_after(connection, 0.3, timeout=10), connection.cursor() as cur:
            cur.execute(SLEEP)
    except psycancel.QueryTimeout as ex:
        cause = ex.__cause__
        return {
            "raised": "QueryTimeout",
            "cause_module": type(cause).__module__,
            "pgcode": pgcode(cause),
        }
    finally:
        connection.close()
    return {"raised": None}


out: dict[str, Any] = {}
t = threading.Thread(target=lambda: out.update(timed()), daemon=True)
t.start()
t.join(30)
result["cancel_after"] = out


# unconnected: a fresh thread's wrapper has no connection: nothing to cancel
def unconnected() -> None:
    out["unconnected"] = psycancel.cancel(connection, timeout=10) is None
    out["unconnected_connection"] = connection.connection is None


t = threading.Thread(target=unconnected, daemon=True)
t.start()
t.join(30)
result["unconnected"] = out.get("unconnected")
result["unconnected_connection"] = out.get("unconnected_connection")
print("RESULT " + json.dumps(result), flush=True)
