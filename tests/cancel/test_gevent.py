"""gevent: ``psycancel.cancel()`` from a greenlet does not block the hub.

A child process monkey-patches first (``gevent.monkey.patch_all()``,
psycogreen for psycopg2), runs ``select pg_sleep(30)`` in a greenlet and
cancels it from another while a third ticks every millisecond; the cancel
goes through a proxy (in this process) that delays it by about 200 ms. The
largest gap between two ticks during the cancel must stay a small part of
the cancel's own duration (a ratio, not a wall-clock bound) in at least one
of ``ROUNDS`` cancels: before gevent support, the compiled twin's blocking
wait froze the hub for all of it, in every one.
"""

from __future__ import annotations

import pytest

from psycancel import pq
from tests.support.drivers import need, need_legacy_psycopg2
from tests.support.gevent_rounds import gevent_rounds
from tests.support.proxy import ServerLike

DELAY = 0.1
"""Seconds the proxy adds to each chunk, each way: the cancel takes about 2 x DELAY."""

MAX_RATIO = 1 / 3
"""The largest hub gap allowed, as a part of the cancel's duration."""


ROUNDS = 3
"""Cancels per test: every one must succeed; one with a small hub gap suffices.
A hub blocked by the cancel stalls for all of it in every round; one stall
of 170-250 ms in a 400 ms cancel is another process taking the CPU (seen
with the test command's other suites and builds running)."""


def check(results: list[dict[str, object]]) -> None:
    gaps: list[tuple[float, float]] = []
    for result in results:
        seconds, gap = result["cancel_seconds"], result["largest_gap"]
        assert isinstance(seconds, float) and isinstance(gap, float)
        assert result["sqlstate"] == "57014", result
        assert result["impl"] == pq.__impl__, result
        assert seconds >= DELAY, result  # the cancel really went through the delay
        gaps.append((gap, seconds))
    assert any(gap < MAX_RATIO * seconds for gap, seconds in gaps), "the hub stalled " + ", ".join(
        f"{gap * 1000:.0f} ms during a {seconds * 1000:.0f} ms cancel" for gap, seconds in gaps
    )


@pytest.mark.parametrize("sslmode", ["disable", "require"])
def test_cancel_from_a_greenlet_keeps_the_hub_running(pg_server: ServerLike, sslmode: str) -> None:
    need("gevent")
    need("psycogreen")
    need("psycopg2")
    results = gevent_rounds(
        pg_server, how="psycancel", impl=pq.__impl__, delay=DELAY, sslmode=sslmode, repeats=ROUNDS
    )
    check(results)
    assert results[0]["libpq_version"] >= 170000  # type: ignore[operator]  # the new API


def test_legacy_cancel_from_a_greenlet_keeps_the_hub_running(pg_server: ServerLike) -> None:
    """libpq < 17: ``PQcancel`` runs in gevent's native thread pool."""
    need("gevent")
    need("psycogreen")
    legacy = need_legacy_psycopg2()
    results = gevent_rounds(
        pg_server,
        how="psycancel",
        impl=pq.__impl__,
        delay=DELAY,
        pythonpath=[str(legacy)],
        repeats=ROUNDS,
    )
    check(results)
    assert results[0]["libpq_version"] < 170000  # type: ignore[operator]


def test_timeout_still_bounds_a_cooperative_cancel(pg_server: ServerLike) -> None:
    """A black-holed cancel ends with CancellationTimeout, the hub running meanwhile."""
    need("gevent")
    need("psycogreen")
    need("psycopg2")
    timeout = 0.3
    [result] = gevent_rounds(
        pg_server, how="psycancel", impl=pq.__impl__, delay=0.0, blackhole=True, timeout=timeout
    )
    seconds, gap = result["cancel_seconds"], result["largest_gap"]
    assert result["error"] == "CancellationTimeout", result
    assert seconds >= timeout, result  # not before its deadline
    assert gap < MAX_RATIO * seconds, result
    assert result["sqlstate"] == "57014", result  # (the second cancel, after the fault)
