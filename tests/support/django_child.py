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
* ``unconnected``: a thread's wrapper that never connected: nothing to cancel;
* ``readme``: the README's Django example, executed verbatim (taken from
  README.md) in a fresh thread, whose first query it is: the query ends with
  57014 after the example's 5 s timer;
* ``lazy``: ``Canceller(connection)`` made in a thread before it connected,
  while this thread connects its own wrapper: the handle sticks to its
  thread's wrapper and cancels that thread's first query;
* ``reconnect``: a handle made while connected follows the wrapper's next
  connection after ``connection.close()``;
* ``receivers``: ``connection_created`` receivers before, while and after a
  handle lives (dropped and collected);
* ``cancel_after_handle``: ``cancel_after(Canceller(connection))`` on a
  thread's first query;
* ``cancel_after_overdue``: the same with the deadline passed before the
  thread connects (the connection it makes afterwards is cancelled at once).
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from tests.support.django_setup import setup_django

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
setup_django(ARGS["backend"], ARGS["dsn"])

from django.db import connection, connections  # noqa: E402

import psycancel  # noqa: E402
from tests.support.active import SLEEP, active_sleep_query, poll_until_active  # noqa: E402
from tests.support.drivers import ROOT  # noqa: E402
from tests.support.sqlstate import pgcode  # noqa: E402

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


def readme_example() -> str:
    """The README's Django example: its imports and ``def report()``, as written there."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = text.split("```python\n")[1:]
    block = next(b.split("```")[0] for b in blocks if "Canceller(connection)" in b)
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("def report("))
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end].startswith(" ")):
        end += 1
    return "\n".join(lines[:end]) + "\n"


def outcome(error: BaseException | None) -> dict[str, Any]:
    return {
        "error": type(error).__qualname__ if error else None,
        "error_module": type(error).__module__ if error else None,
        "pgcode": pgcode(error),
    }


def in_thread(func: Callable[[], Any], timeout: float = 60) -> dict[str, Any]:
    """Run ``func`` in a fresh thread (whose Django connection is new), closing it after."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["value"] = func()
        except BaseException as ex:
            out["error"] = ex
        finally:
            connection.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), "the thread's query was never cancelled"
    return out


# readme: the example as the README prints it, on a thread's first query
monitor.cursor().execute(
    "create or replace function slow_report() returns void language sql as 'select pg_sleep(60)'"
)
namespace: dict[str, Any] = {}
exec(compile(readme_example(), "README.md", "exec"), namespace)
found: list[int] = []


def watch_readme() -> None:
    poll_until_active(rows, tag="slow_report()", timeout=30)
    sql = (
        "select pid from pg_stat_activity where wait_event = 'PgSleep' "
        "and query = 'select slow_report()'"
    )
    found.extend(row[0] for row in rows(sql))


started = time.monotonic()
watcher = threading.Thread(target=watch_readme, daemon=True)
watcher.start()
done = in_thread(namespace["report"])
watcher.join(30)
result["readme"] = dict(
    outcome(done.get("error")),
    seconds=time.monotonic() - started,
    pid_seen=bool(found),
    still_running=bool(found) and still_running(found[0]),
)


# lazy: made before its thread connected; this thread connects its own meanwhile
made, go = threading.Event(), threading.Event()
lazy: dict[str, Any] = {}


def lazy_query() -> None:
    lazy["handle"] = psycancel.Canceller(connection)
    lazy["repr_before"] = repr(lazy["handle"])
    made.set()
    assert go.wait(30)
    with connection.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        lazy["pid"] = cur.fetchone()[0]
        lazy["repr_after"] = repr(lazy["handle"])
        cur.execute(SLEEP)


query = threading.Thread(target=lambda: lazy.update(in_thread(lazy_query)), daemon=True)
query.start()
assert made.wait(30)
connection.ensure_connection()  # this thread's own wrapper connects (connection_created here)
lazy["held_after_other_thread_connected"] = lazy["handle"].connection is not None
connection.close()
go.set()
while "pid" not in lazy and query.is_alive():
    time.sleep(0.01)
poll_until_active(rows, lazy["pid"])
lazy["handle"].cancel(timeout=10)
query.join(30)
result["lazy"] = dict(
    outcome(lazy.get("error")),
    repr_before=lazy["repr_before"],
    repr_after=lazy["repr_after"],
    held_after_other_thread_connected=lazy["held_after_other_thread_connected"],
    still_running=still_running(lazy["pid"]),
)


# reconnect: a handle made while connected follows the next connection
def reconnect() -> dict[str, Any]:
    with connection.cursor() as cur:
        cur.execute("select 1")
    handle = psycancel.Canceller(connection)
    first = handle.connection
    connection.close()
    kept = handle.connection is first  # closed: nothing to cancel until it reconnects
    pid: list[int] = []

    def cancel_when_sleeping() -> None:
        while not pid:
            time.sleep(0.01)
        poll_until_active(rows, pid[0])
        handle.cancel(timeout=10)

    canceller = threading.Thread(target=cancel_when_sleeping, daemon=True)
    canceller.start()
    try:
        with connection.cursor() as cur:
            cur.execute("select pg_backend_pid()")
            pid.append(cur.fetchone()[0])
            cur.execute(SLEEP)
    except BaseException as ex:
        canceller.join(30)  # its reference to the handle is gone before the next scenario
        return dict(outcome(ex), kept_until_reconnect=kept, moved=handle.connection is not first)
    return {"error": None}


result["reconnect"] = in_thread(reconnect).get("value")


# receivers: a handle adds one connection_created receiver, dropping it removes it
def receivers() -> dict[str, Any]:
    from django.db.backends.signals import connection_created

    def live() -> int:
        connection_created.has_listeners()  # Django drops dead (weak) receivers here
        return len(connection_created.receivers)

    gc.collect()  # earlier scenarios' handles that only a collection frees
    before = live()
    handle = psycancel.Canceller(connection)
    during = live()
    ref = weakref.ref(handle)
    del handle
    gc.collect()
    return {
        "before": before,
        "during": during,
        "after": live(),
        "collected": ref() is None,
    }


result["receivers"] = in_thread(receivers).get("value")


# cancel_after_handle: cancel_after(Canceller(connection)) on a thread's first query
def timed_handle() -> dict[str, Any]:
    try:
        handle = psycancel.Canceller(connection)
        with psycancel.cancel_after(handle, 0.3, timeout=10), connection.cursor() as cur:
            cur.execute(SLEEP)
    except psycancel.QueryTimeout as ex:
        return {"raised": "QueryTimeout", "pgcode": pgcode(ex.__cause__)}
    return {"raised": None}


result["cancel_after_handle"] = in_thread(timed_handle).get("value")


# cancel_after_overdue: the deadline passes before the thread's wrapper connects
def overdue_handle() -> dict[str, Any]:
    try:
        handle = psycancel.Canceller(connection)
        with psycancel.cancel_after(handle, 0.05, timeout=10) as timer:
            time.sleep(0.3)  # the deadline passes, nothing connected yet
            fired_before = timer.fired
            with connection.cursor() as cur:  # connects now, then runs the query
                cur.execute(SLEEP)
    except psycancel.QueryTimeout as ex:
        return {"raised": "QueryTimeout", "pgcode": pgcode(ex.__cause__), "fired": fired_before}
    return {"raised": None}


result["cancel_after_overdue"] = in_thread(overdue_handle).get("value")
print("RESULT " + json.dumps(result), flush=True)
