"""A cancel's timeout is capped once, when it is validated (``plan.MAX_WAIT``).

No runner slices its waits any more: a timeout larger than any ``poll(2)``,
selector, lock or timer accepts must therefore be capped before a deadline is
made from it, or the first wait would fail (``OverflowError``) instead of
cancelling. These tests cancel real queries with such timeouts, in every
runner, new API and legacy.
"""

from __future__ import annotations

import sys

import pytest

import psycancel
from psycancel._engine.plan import MAX_WAIT, check_options
from psycancel.pq import Libpq
from tests.support.modes import API_MODES, LOOP_MODES, call_cancel
from tests.support.queries import QUERY_CANCELED, drain, sleeping

HUGE = [1e12, float(sys.maxsize), 10**30]
"""Timeouts no wait accepts in one piece (``poll`` takes an int of milliseconds)."""


@pytest.mark.parametrize("timeout", [*HUGE, MAX_WAIT + 0.5])
def test_large_timeouts_are_capped(timeout: float) -> None:
    assert check_options(timeout, False) == MAX_WAIT


@pytest.mark.parametrize("timeout", [0.001, 1, 30.0, MAX_WAIT])
def test_other_timeouts_are_kept(timeout: float) -> None:
    assert check_options(timeout, False) == float(timeout)


@pytest.mark.parametrize("mode", sorted({*API_MODES, *LOOP_MODES}))
@pytest.mark.parametrize("timeout", HUGE)
def test_huge_timeout_cancels(mode: str, timeout: float, dsn: str, libpq: Libpq) -> None:
    with sleeping(dsn, libpq) as conn:
        call_cancel(mode, conn, timeout=timeout)
        assert drain(conn).sqlstate == QUERY_CANCELED


@pytest.mark.parametrize("mode", LOOP_MODES)
def test_huge_timeout_cancels_legacy(mode: str, dsn_plain: str, legacy_libpq: Libpq) -> None:
    with sleeping(dsn_plain, legacy_libpq) as conn:
        call_cancel(mode, conn, timeout=1e12, strict=True)
        assert drain(conn).sqlstate == QUERY_CANCELED


def test_huge_timeout_cancel_after(dsn_plain: str, libpq: Libpq) -> None:
    with sleeping(dsn_plain, libpq) as conn:
        with psycancel.cancel_after(conn, 0.01, timeout=1e12) as block:
            drain_error = drain(conn).sqlstate
        assert drain_error == QUERY_CANCELED
        assert block.fired
