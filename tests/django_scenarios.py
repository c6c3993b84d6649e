"""Django scenarios, run in a child process per backend by ``test_frameworks_django.py``.

    python -m tests.django_scenarios psycopg|psycopg2 '{"plain": CONNINFO, "tls": CONNINFO}'

Django picks its PostgreSQL driver once per process (psycopg 3 when it can be
imported, else psycopg2), and its settings are configured once: hence a child
per backend. Each scenario runs for the aliases ``plain`` and ``tls`` and
prints one JSON line ``{"scenario": ..., "alias": ..., "ok": bool, "detail": ...}``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

SLEEP = "select pg_sleep(30)"
CANCELED = "57014"


def _configure(backend: str, dsns: dict[str, str]) -> None:
    if backend == "psycopg2":
        sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back
    import django
    from django.conf import settings

    from testing.conninfo import parse_conninfo

    databases: dict[str, Any] = {}
    for alias, dsn in dsns.items():
        params = parse_conninfo(dsn)
        options = {k: v for k, v in params.items() if k not in ("host", "port", "user", "dbname")}
        databases[alias] = {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": params["dbname"],
            "USER": params["user"],
            "HOST": params["host"],
            "PORT": params["port"],
            "OPTIONS": options,
        }
        if backend == "psycopg":  # Django >= 5.1: a psycopg_pool pool behind the wrapper
            databases[f"{alias}-pool"] = {
                **databases[alias],
                "OPTIONS": {**options, "pool": {"min_size": 1, "max_size": 2}},
            }
    databases["default"] = databases["plain"]
    databases["lite"] = {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}
    settings.configure(DATABASES=databases, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()


def _sqlstate(exc: BaseException | None) -> str | None:
    while exc is not None:
        code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
        if code:
            return str(code)
        exc = exc.__cause__
    return None


class _Monitor:
    """A driver connection of the backend's driver, outside Django, on pg_stat_activity."""

    def __init__(self, dsn: str, backend: str) -> None:
        if backend == "psycopg2":
            import psycopg2

            self.conn: Any = psycopg2.connect(dsn)
        else:
            import psycopg

            self.conn = psycopg.connect(dsn)
        self.conn.autocommit = True

    def sleeping(self, pid: int) -> bool:
        cur = self.conn.cursor()
        cur.execute(
            "select 1 from pg_stat_activity where pid = %s and wait_event = 'PgSleep'", (pid,)
        )
        return cur.fetchone() is not None

    def wait_sleeping(self, pid: int) -> None:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.sleeping(pid):
                return
            time.sleep(0.005)
        raise AssertionError(f"backend {pid} never started its query")


def _pid(wrapper: Any) -> int:
    with wrapper.cursor() as cur:
        cur.execute("select pg_backend_pid()")
        return int(cur.fetchone()[0])


def _usable(wrapper: Any) -> None:
    with wrapper.cursor() as cur:
        cur.execute("select 42")
        assert cur.fetchone()[0] == 42


class _QueryThread:
    """Thread A: runs a long query on *its own* Django connection of ``alias``."""

    def __init__(self, alias: str, prepare: Callable[[Any], Any] | None = None) -> None:
        self.alias = alias
        self.prepare = prepare
        self.ready = threading.Event()
        self.go = threading.Event()
        self.pid = 0
        self.driver = ""
        self.handle: Any = None
        self.wrapper: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.thread.start()
        assert self.ready.wait(15), "thread A did not start"

    def _main(self) -> None:
        from django.db import connections

        wrapper = connections[self.alias]
        self.wrapper = wrapper
        try:
            self.pid = _pid(wrapper)
            self.driver = type(wrapper.connection).__module__.split(".")[0]
            if self.prepare is not None:
                self.handle = self.prepare(wrapper)
        finally:
            self.ready.set()
        try:
            with wrapper.cursor() as cur:
                cur.execute(SLEEP)
        except BaseException as ex:
            self.error = ex
        try:
            _usable(wrapper)  # afterwards, in its own thread
        except BaseException as ex:
            self.error = RuntimeError(f"not usable after the cancel: {ex!r}")
        finally:
            wrapper.close()

    def join(self) -> BaseException | None:
        self.thread.join(30)
        assert not self.thread.is_alive(), "the query did not end"
        return self.error


def _expect_cancelled(query: _QueryThread) -> str:
    from django.db import connections

    expected = "psycopg2" if connections[query.alias].Database.__name__ == "psycopg2" else "psycopg"
    assert query.driver == expected, (query.driver, expected)
    error = query.join()
    assert _sqlstate(error) == CANCELED, repr(error)
    from django.db import utils

    assert isinstance(error, utils.OperationalError), repr(error)
    cause = type(error.__cause__)
    return f"{type(error).__module__}.{type(error).__name__} from {query.driver} {cause.__name__}"


# -- the scenarios (each takes an alias and the monitor) ------------------------------


def wrapper_from_another_thread(alias: str, monitor: _Monitor) -> str:
    """``connections[alias]`` of thread A, cancelled by thread B with psycancel.cancel."""
    import psycancel

    query = _QueryThread(alias)
    monitor.wait_sleeping(query.pid)
    psycancel.cancel(query.wrapper)
    return _expect_cancelled(query)


def canceller_from_proxy(alias: str, monitor: _Monitor) -> str:
    """``Canceller(django.db.connection)`` made in thread A, cancelled from thread B."""
    import psycancel

    def prepare(wrapper: Any) -> Any:
        from django.db import connection, connections

        return psycancel.Canceller(connection if alias == "default" else connections[alias])

    query = _QueryThread(alias, prepare)
    monitor.wait_sleeping(query.pid)
    query.handle.cancel()
    return _expect_cancelled(query)


def thread_local_trap(alias: str, monitor: _Monitor) -> str:
    """Thread B cancels through *its own* ``django.db.connection``: A's query runs on."""
    from django.db import connection, connections

    import psycancel

    def prepare(wrapper: Any) -> Any:
        return psycancel.Canceller(wrapper)

    query = _QueryThread(alias, prepare)
    monitor.wait_sleeping(query.pid)
    mine = connection if alias == "default" else connections[alias]
    notes = []
    # B's wrapper has not connected: nothing to cancel, a normal return, and B's
    # wrapper is not made to connect.
    psycancel.cancel(mine)
    assert mine.connection is None
    time.sleep(0.3)
    assert monitor.sleeping(query.pid), "A's query was cancelled through B's own wrapper?"
    notes.append("unconnected B: returned, A's query still running")
    # B's wrapper connected (idle): the cancel goes to B's own idle backend, which drops it.
    b_pid = _pid(mine)
    assert b_pid != query.pid
    psycancel.cancel(mine)
    time.sleep(0.3)
    assert monitor.sleeping(query.pid), "A's query was cancelled through B's own wrapper?"
    _usable(mine)
    mine.close()
    notes.append("connected B: cancelled B's idle backend (dropped), A's query still running")
    query.handle.cancel()  # the Canceller made on A does end it
    notes.append("Canceller made on A: " + _expect_cancelled(query))
    return "; ".join(notes)


def unconnected_wrapper(alias: str, monitor: _Monitor) -> str:
    """An unconnected wrapper: nothing to cancel, and it is not made to connect."""
    from django.db import connections

    import psycancel

    wrapper = connections[alias]
    assert wrapper.connection is None
    psycancel.cancel(wrapper)
    handle = psycancel.Canceller(wrapper)
    handle.cancel()
    assert handle.connection is None and wrapper.connection is None
    return "returned, still unconnected"


def cancel_after_unconnected(alias: str, monitor: _Monitor) -> str:
    """``cancel_after(django.db.connection, s)`` entered before the wrapper connects."""
    from django.db import connection, connections, utils

    import psycancel

    conn = connection if alias == "default" else connections[alias]
    conn.close()
    assert conn.connection is None
    try:
        with psycancel.cancel_after(conn, 0.2), conn.cursor() as cur:
            cur.execute(SLEEP)
    except psycancel.QueryTimeout as ex:
        cause = ex.__cause__
        assert isinstance(cause, utils.OperationalError), repr(cause)
        assert _sqlstate(cause) == CANCELED
    else:
        raise AssertionError("no QueryTimeout")
    _usable(conn)
    # And again on the now-connected wrapper: the next query is never hit.
    with psycancel.cancel_after(conn, 5), conn.cursor() as cur:
        cur.execute("select pg_sleep(0.1)")
    conn.close()
    return "QueryTimeout from django.db.utils.OperationalError"


def pooled(alias: str, monitor: _Monitor) -> str:
    """Django 5.1's ``"pool"`` option (psycopg_pool): the wrapper's pooled connection."""
    return wrapper_from_another_thread(f"{alias}-pool", monitor)


def refused(alias: str, monitor: _Monitor) -> str:
    """ConnectionHandler: a hint; the sqlite backend: no PostgreSQL connection."""
    from django.db import connections

    import psycancel

    messages = []
    for obj in (connections, connections["lite"]):
        if obj is connections["lite"]:
            _usable(obj)
        try:
            psycancel.cancel(obj)
        except psycancel.InterfaceError as ex:
            messages.append(str(ex))
        else:
            raise AssertionError(f"{obj!r} was accepted")
    assert "pass connections[alias]" in messages[0], messages[0]
    assert "sqlite3" in messages[1] and "DatabaseWrapper" in messages[1], messages[1]
    return " | ".join(messages)


SCENARIOS: dict[str, Callable[[str, _Monitor], str]] = {
    f.__name__: f
    for f in (
        wrapper_from_another_thread,
        canceller_from_proxy,
        thread_local_trap,
        unconnected_wrapper,
        cancel_after_unconnected,
        pooled,
        refused,
    )
}


def main() -> None:
    backend, dsns = sys.argv[1], json.loads(sys.argv[2])
    _configure(backend, dsns)
    import django

    monitor = _Monitor(dsns["plain"], backend)
    aliases = {"plain": "default", "tls": "tls"}
    for name, scenario in SCENARIOS.items():
        if name == "pooled" and backend != "psycopg":
            continue
        for label, alias in aliases.items():
            if name == "pooled":
                alias = label
            try:
                detail, ok = scenario(alias, monitor), True
            except BaseException:
                detail, ok = traceback.format_exc(), False
            line = {"scenario": name, "alias": label, "ok": ok, "detail": detail}
            print(json.dumps(line), flush=True)
    print(json.dumps({"django": django.get_version()}), flush=True)


if __name__ == "__main__":
    main()
