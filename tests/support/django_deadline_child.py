"""Child process of the Django deadline test: a black-holed query under ``cancel_after``.

``python tests/support/django_deadline_child.py`` with a JSON object on stdin:
``dsn`` (through the parent's black-holed path: the test proxy, or a network
namespace) and ``backend`` (``psycopg`` or
``psycopg2``, as in ``django_child.py``). It connects Django, prints
``PID <backend pid>``, runs ``SLEEP`` inside ``cancel_after(connection, seconds,
timeout=timeout)`` while the parent freezes the proxy, then lets Django do what
it does at the end of a request (``close_if_unusable_or_obsolete``) and prints
``RESULT <json>``: the time the block took, the exception and its chain, and
whether Django dropped the broken connection.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from tests.support.django_setup import setup_django

ARGS: dict[str, Any] = json.loads(sys.stdin.read() or "{}")
setup_django(ARGS["backend"], ARGS["dsn"])

from django.db import connection  # noqa: E402

import psycancel  # noqa: E402
from tests.support.active import SLEEP  # noqa: E402

with connection.cursor() as cur:
    cur.execute("select pg_backend_pid()")
    print("PID", cur.fetchone()[0], flush=True)

psycancel.cancel_after  # noqa: B018  (imported on first use: not inside the measure)
t0 = time.monotonic()
error: BaseException | None = None
try:
    timer = psycancel.cancel_after(connection, ARGS["seconds"], timeout=ARGS["timeout"])
    with timer, connection.cursor() as cur:
        cur.execute(SLEEP)
except BaseException as ex:
    error = ex
elapsed = time.monotonic() - t0
context = error.__context__ if error is not None else None
connection.close_if_unusable_or_obsolete()  # what Django runs when a request ends
print(
    "RESULT",
    json.dumps(
        {
            "elapsed": elapsed,
            "error": type(error).__qualname__ if error else None,
            "connection_broken": getattr(error, "connection_broken", None),
            "cause": type(error.__cause__).__qualname__ if error and error.__cause__ else None,
            "context_module": type(context).__module__ if context else None,
            "dropped": connection.connection is None,
        }
    ),
    flush=True,
)
