"""Child process of the Django deadline tests (issue 23): one Django setup per backend.

``python tests/integrations/django_child.py`` with a JSON object on stdin:
``dsn`` (the test server), ``backend`` (``psycopg`` or ``psycopg2``), ``seconds``
and ``timeout``. Django is configured with the settings-style default
(``PSYCANCEL`` global, and the ``default`` database's own, which wins) and a
second database ``hole`` reached through a test proxy of the child's own,
frozen mid-query; ``psycancel.integrations.django.install()`` is called and
every scenario runs; the child prints ``RESULT <json>``, one entry per
scenario: the outcome (``ok``, or the exception's class, its cause's class,
``connection_broken``) and what the connection did next.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
BACKEND: str = ARGS["backend"]
SECONDS: float = ARGS["seconds"]
TIMEOUT: float = ARGS["timeout"]
SLOW = "select pg_sleep(30)"
OUTLIVES = "select pg_sleep(0.8)"

if BACKEND == "psycopg2":
    sys.modules["psycopg"] = None  # type: ignore[assignment]  # Django falls back to psycopg2

import django  # noqa: E402
import psycopg2  # noqa: E402  (the monitor, whatever the backend)
from django.conf import settings  # noqa: E402

from testing.conninfo import parse_conninfo  # noqa: E402
from tests.support.active import poll_until_active  # noqa: E402
from tests.support.proxy import TcpProxy  # noqa: E402

params = parse_conninfo(ARGS["dsn"])
proxy = TcpProxy(params["host"], int(params["port"])).start()


def database(host: str, port: int, own: dict[str, Any]) -> dict[str, Any]:
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": params.get("dbname", "postgres"),
        "USER": params.get("user", ""),
        "HOST": host,
        "PORT": port,
        "OPTIONS": {"sslmode": params.get("sslmode", "disable")},
        "PSYCANCEL": own,
    }


settings.configure(
    PSYCANCEL={"QUERY_TIMEOUT": 60, "CANCEL_TIMEOUT": TIMEOUT},
    DATABASES={
        "default": database(params["host"], int(params["port"]), {"QUERY_TIMEOUT": SECONDS}),
        "hole": database("127.0.0.1", proxy.port, {"QUERY_TIMEOUT": SECONDS}),
        "lite": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
    },
    USE_TZ=True,
)
django.setup()

from django.db import connection, connections  # noqa: E402

from psycancel.integrations import django as deadlines  # noqa: E402
from psycancel.integrations import query_timeout  # noqa: E402

deadlines.install()


def run(sql: str, alias: str = "default") -> None:
    with connections[alias].cursor() as cur:
        cur.execute(sql)


def outcome(func: Callable[[], object], alias: str = "default") -> dict[str, Any]:
    """Run ``func``; what it raised, and whether the connection runs ``select 1`` next."""
    result: dict[str, Any] = {"error": None}
    try:
        func()
    except Exception as ex:
        result["error"] = type(ex).__qualname__
        result["cause"] = type(ex.__cause__).__qualname__ if ex.__cause__ else None
        result["cause_module"] = type(ex.__cause__).__module__ if ex.__cause__ else None
        result["connection_broken"] = getattr(ex, "connection_broken", None)
    conn = connections[alias]
    if result["error"] is not None and not conn.get_autocommit():
        conn.rollback()
    conn.close_if_unusable_or_obsolete()  # what Django does at the end of a request
    try:
        run("select 1", alias)
        result["after"] = "ok"
    except Exception as ex:
        result["after"] = type(ex).__qualname__
    return result


def in_thread(func: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``func`` in a new thread: its first query opens its own connection."""
    box: dict[str, Any] = {}

    def main() -> None:
        try:
            box.update(func())
        finally:
            connections.close_all()

    thread = threading.Thread(target=main)
    thread.start()
    thread.join(120)
    return box


results: dict[str, Any] = {}
results["database"] = connection.Database.__name__
results["default_1"] = outcome(lambda: run(SLOW))
results["default_2"] = outcome(lambda: run(SLOW))
results["wrappers"] = [repr(w) for w in connection.execute_wrappers]


def block_override() -> None:
    with query_timeout(10):
        run(OUTLIVES)


def block_none() -> None:
    with query_timeout(None):
        run(OUTLIVES)


def block_shorter() -> None:
    with query_timeout(SECONDS / 2):
        run(SLOW)


def wrapper_override() -> None:
    with connection.execute_wrapper(deadlines.QueryDeadline(10)):
        run(OUTLIVES)


def wrapper_none() -> None:
    with connection.execute_wrapper(deadlines.QueryDeadline(None)):
        run(OUTLIVES)


def in_atomic() -> None:
    from django.db import transaction

    with transaction.atomic():
        run("select 1")
        run(SLOW)


results["block_override"] = outcome(block_override)
results["block_none"] = outcome(block_none)
results["block_shorter"] = outcome(block_shorter)
results["wrapper_override"] = outcome(wrapper_override)
results["wrapper_none"] = outcome(wrapper_none)
results["atomic"] = outcome(in_atomic)
results["thread_first_query"] = in_thread(lambda: outcome(lambda: run(SLOW)))


def broken() -> None:
    hole = connections["hole"]
    hole.ensure_connection()
    pid = (
        hole.connection.info.backend_pid
        if BACKEND == "psycopg"
        else hole.connection.get_backend_pid()
    )
    monitor = psycopg2.connect(ARGS["dsn"])
    monitor.autocommit = True

    def rows(sql: str) -> list[Any]:
        with monitor.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()

    def freeze() -> None:
        poll_until_active(rows, pid)
        proxy.freeze()

    freezer = threading.Thread(target=freeze, daemon=True)
    freezer.start()
    try:
        run(SLOW, "hole")
    finally:
        freezer.join(10)
        rows(f"select pg_terminate_backend({pid})")
        monitor.close()
        proxy.thaw()


results["broken"] = outcome(broken, "hole")

deadlines.uninstall()
results["uninstalled"] = in_thread(lambda: outcome(lambda: run(OUTLIVES)))
results["wrappers_after_uninstall"] = [repr(w) for w in connection.execute_wrappers]


def per_connection() -> dict[str, Any]:
    """One connection's own: appended to its ``execute_wrappers`` (no install())."""
    conn = connections["default"]
    conn.execute_wrappers.append(deadlines.QueryDeadline(SECONDS, timeout=TIMEOUT))
    return outcome(lambda: run(SLOW))


results["per_connection"] = in_thread(per_connection)


def other_database() -> None:
    """A QueryDeadline on SQLite does nothing (install() gives it none either)."""
    lite = connections["lite"]
    with lite.execute_wrapper(deadlines.QueryDeadline(SECONDS)):
        run("select 1", "lite")


results["sqlite"] = outcome(other_database, "lite")
connections.close_all()
proxy.close()
print("RESULT", json.dumps(results), flush=True)
