"""Child process of the gevent ``cancel_after`` test.

``python tests/support/gevent_deadline_child.py ORDER DSN``: ``ORDER`` is
``patch-first`` (``patch_all()`` before anything, as gevent asks) or
``import-first`` (psycancel imported before ``patch_all()``, as a program whose
imports happen in that order). psycopg2 is made green (psycogreen); a greenlet
runs ``select pg_sleep(30)`` inside ``with psycancel.cancel_after(conn, 0.3)``
while another ticks every millisecond. Prints ``RESULT <json>``: the exception,
the block's duration, the largest gap between ticks, the number of OS threads.
"""

from __future__ import annotations

import sys

ORDER, DSN = sys.argv[1], sys.argv[2]
if ORDER == "import-first":
    import psycancel

    # The public names are imported on first use: use one, so that psycancel's
    # machinery really is imported before gevent patches the standard library.
    psycancel.cancel_after  # noqa: B018

from gevent import monkey  # noqa: E402

monkey.patch_all()

import itertools  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import psycogreen.gevent  # noqa: E402

psycogreen.gevent.patch_psycopg()

import psycopg2  # noqa: E402

import psycancel  # noqa: E402

conn = psycopg2.connect(DSN)
conn.autocommit = True
ticks: list[float] = []
running = True


def tick() -> None:
    while running:
        ticks.append(time.monotonic())
        gevent.sleep(0.001)


def query() -> str:
    try:
        with psycancel.cancel_after(conn, 0.3, timeout=5):
            conn.cursor().execute("select pg_sleep(30)")
    except psycancel.QueryTimeout as ex:
        return f"QueryTimeout broken={ex.connection_broken}"
    return "none"


# Imported before the measure (first use imports psycancel's machinery, which
# would stop the hub once for the import: a program does it at start-up).
psycancel.cancel_after  # noqa: B018

ticker = gevent.spawn(tick)
gevent.sleep(0.02)
start = time.monotonic()
outcome = gevent.spawn(query).get(timeout=20)
end = time.monotonic()
running = False
ticker.join()
gaps = [b - a for a, b in itertools.pairwise(ticks) if b >= start and a <= end]
cur = conn.cursor()
cur.execute("select 1")
print(
    "RESULT "
    + json.dumps(
        {
            "outcome": outcome,
            "seconds": end - start,
            "largest_gap": max(gaps, default=end - start),
            "after": cur.fetchone()[0],
            "os_threads": threading.active_count(),
        }
    ),
    flush=True,
)
