"""Cancels through the deployments users run: PgBouncer over processes, HAProxy (TCP).

libpq sends a cancel request on a *new* connection to the address the
session used. Whatever sits at that address decides where it goes:

* PgBouncer spread over processes with ``so_reuseport`` (the kernel picks the
  process for each new connection): **peered** (``peer_id``/``[peers]``), a
  cancel that lands on another process is forwarded to the one holding the
  session: every cancel ends its query, at once (no re-send). **Not
  peered**, the other process does not know the key and drops the request
  after the client closed it: the cancel "succeeded" and the query runs on.
* HAProxy in TCP mode in front of two servers: ``source`` sends the cancel to
  the session's server (same client address), ``roundrobin`` to the next
  server (lost; the re-send, next in turn, reaches the session's server),
  ``leastconn`` to the server with fewer connections, which is never the
  session's (lost, every re-send too).

Each round runs ``cancel_after(0.3)`` around a longer ``pg_sleep`` with
psycopg2 and psycopg (TLS through the pooler/balancer) and classifies it
(see :class:`Round`): *lost* (the block still ran after the confirm window:
re-sent), *recovered* (a re-send ended the query: ``QueryTimeout``),
*reported* (still running after every re-send: WARNING, then
``CancelNotTakenWarning`` when the block completes, or the bound broke the
connection). The counts are printed (``-s``) and asserted: no block ever
completes past its deadline without ``CancelNotTakenWarning``.

``PSYCANCEL_DEPLOY_ROUNDS`` sets the rounds (default 6 per case).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import psycancel
from testing import ThrowawayServer, find_postgres_prefix
from tests.support.deployments import HAPROXY, HAProxy, PgBouncerFarm, peering_pgbouncer
from tests.support.drivers import need

ROUNDS = int(os.environ.get("PSYCANCEL_DEPLOY_ROUNDS", "6"))
DEADLINE = 0.3
TIMEOUT = 10.0

psycopg2 = need("psycopg2")
psycopg = need("psycopg")

DRIVERS = ["psycopg2", "psycopg"]


@dataclass
class Round:
    """One ``cancel_after`` block through a deployment."""

    outcome: str
    """``cancelled`` (QueryTimeout from 57014), ``broken`` (the bound), ``completed``."""
    resends: int
    lost_reported: bool
    warned: bool


@dataclass
class Tally:
    """Counts over the rounds of one case (the note's table)."""

    rounds: list[Round] = field(default_factory=list)

    @property
    def lost(self) -> int:
        return sum(r.resends > 0 for r in self.rounds)

    @property
    def recovered(self) -> int:
        return sum(r.resends > 0 and r.outcome == "cancelled" for r in self.rounds)

    @property
    def reported(self) -> int:
        return sum(r.lost_reported for r in self.rounds)

    @property
    def silent(self) -> int:
        """Blocks that completed past the deadline with no warning (must be 0)."""
        return sum(r.outcome == "completed" and not r.warned for r in self.rounds)

    def line(self, case: str) -> str:
        resends = sum(r.resends for r in self.rounds)
        return (
            f"{case}: rounds {len(self.rounds)} lost {self.lost} recovered {self.recovered} "
            f"reported {self.reported} (re-sends {resends}; outcomes "
            f"{[r.outcome for r in self.rounds]})"
        )

    def check(self) -> None:
        assert self.silent == 0, self.rounds
        for r in self.rounds:
            # Every round ends by the deadline's cancel, or is reported (or its block
            # warned: the query ended on its own while the re-sends still ran).
            assert r.outcome == "cancelled" or r.lost_reported or r.warned, r
            if r.outcome == "completed":
                assert r.warned, r

    def check_taken(self) -> None:
        """Every cancel took; a re-send only where a loaded machine stalled the return."""
        assert [r.outcome for r in self.rounds] == ["cancelled"] * len(self.rounds)
        assert self.reported == 0, self.rounds
        assert self.lost <= len(self.rounds) // 3, self.rounds


def _connect(driver: str, dsn: str) -> Any:
    if driver == "psycopg2":
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        return conn
    return psycopg.connect(dsn, autocommit=True)


def one_round(driver: str, dsn: str, sleep: float) -> Round:
    """``cancel_after(DEADLINE)`` around ``pg_sleep(sleep)`` on a new connection."""
    conn = _connect(driver, dsn)
    try:
        block = psycancel.cancel_after(conn, DEADLINE, timeout=TIMEOUT)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                with block, conn.cursor() as cur:
                    cur.execute(f"select pg_sleep({sleep})")
                outcome = "completed"
            except psycancel.QueryTimeout as ex:
                outcome = "broken" if ex.connection_broken else "cancelled"
        warned = any(issubclass(w.category, psycancel.CancelNotTakenWarning) for w in seen)
        return Round(outcome, block.resends, block.cancel_lost, warned)
    finally:
        conn.close()


async def one_round_async(dsn: str, sleep: float) -> Round:
    """:func:`one_round` with psycopg's ``AsyncConnection`` and ``async with``."""
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        block = psycancel.cancel_after(conn, DEADLINE, timeout=TIMEOUT)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            try:
                async with block:
                    await conn.execute(f"select pg_sleep({sleep})")
                outcome = "completed"
            except psycancel.QueryTimeout as ex:
                outcome = "broken" if ex.connection_broken else "cancelled"
        warned = any(issubclass(w.category, psycancel.CancelNotTakenWarning) for w in seen)
        return Round(outcome, block.resends, block.cancel_lost, warned)
    finally:
        await conn.close()


def tally(driver: str, dsn: str, sleep: float, rounds: int = ROUNDS) -> Tally:
    result = Tally()
    for _ in range(rounds):
        if driver == "psycopg-async":
            result.rounds.append(asyncio.run(one_round_async(dsn, sleep)))
        else:
            result.rounds.append(one_round(driver, dsn, sleep))
    return result


# -- PgBouncer over processes ------------------------------------------------------------


def _bouncer_binary() -> str:
    binary = peering_pgbouncer()
    if binary is None:
        pytest.skip("PgBouncer >= 1.19 is not built (run tools/build_pgbouncer.sh)")
    return binary


@pytest.fixture(scope="module", params=["session", "transaction"])
def peered(request: pytest.FixtureRequest, pg_server: Any) -> Iterator[PgBouncerFarm]:
    farm = PgBouncerFarm(_bouncer_binary(), pg_server, pool_mode=request.param, peered=True)
    try:
        yield farm.start()
    finally:
        farm.stop()


@pytest.fixture(scope="module", params=["session", "transaction"])
def unpeered(request: pytest.FixtureRequest, pg_server: Any) -> Iterator[PgBouncerFarm]:
    farm = PgBouncerFarm(_bouncer_binary(), pg_server, pool_mode=request.param, peered=False)
    try:
        yield farm.start()
    finally:
        farm.stop()


@pytest.mark.parametrize("driver", [*DRIVERS, "psycopg-async"])
def test_peered_pgbouncer_every_cancel_ends_its_query(driver: str, peered: PgBouncerFarm) -> None:
    """Peered: wherever the cancel lands, it ends the query, without a re-send."""
    before = peered.forwarded()
    result = tally(driver, peered.dsn(), sleep=20)
    forwarded = peered.forwarded() - before
    print(result.line(f"pgbouncer peered {peered.pool_mode} {driver}"), f"forwarded {forwarded}")
    result.check_taken()


def test_peered_pgbouncer_client_asking_protocol_3_2(peered: PgBouncerFarm) -> None:
    """A client asking protocol 3.2 (libpq 18's 32-byte keys): PgBouncer answers 3.0.

    Measured with PgBouncer 1.24.1: it negotiates 3.0 (NegotiateProtocolVersion),
    so the key is 4 bytes and the peered forwarding works as above (1.18
    refused the connection: tests/drivers/test_pgbouncer.py).
    """
    with psycopg.connect(peered.dsn(max_protocol_version="3.2")) as conn:
        version = getattr(conn.pgconn, "full_protocol_version", 30000)
        assert version == 30000, version
    result = tally("psycopg", peered.dsn(max_protocol_version="3.2"), sleep=20)
    print(result.line(f"pgbouncer peered {peered.pool_mode} psycopg asking 3.2"))
    result.check_taken()


@pytest.mark.long(8)
@pytest.mark.parametrize("driver", [*DRIVERS, "psycopg-async"])
def test_unpeered_pgbouncer_losses_are_resent(driver: str, unpeered: PgBouncerFarm) -> None:
    """Not peered: about half the cancels land on the wrong process; re-sends catch them.

    A round that every re-send missed is reported, and its block (``pg_sleep(3)``,
    under the 10 s bound) completes with ``CancelNotTakenWarning``.
    """
    result = tally(driver, unpeered.dsn(), sleep=3, rounds=2 * ROUNDS)
    # The kernel picks the process of each connection: 12 rounds without a loss
    # happened once (psycopg-async, transaction mode). More rounds, until one
    # was lost and one recovered, up to 4 x ROUNDS in all.
    for _ in range(2 * ROUNDS):
        if result.lost > 0 and result.recovered > 0:
            break
        result.rounds.extend(tally(driver, unpeered.dsn(), sleep=3, rounds=1).rounds)
    print(result.line(f"pgbouncer unpeered {unpeered.pool_mode} {driver}"))
    result.check()
    assert result.lost > 0, "no loss: the layout does not spread cancels over its processes"
    assert result.recovered > 0, result.rounds


# -- HAProxy in front of two servers -----------------------------------------------------


@pytest.fixture(scope="module")
def second_server() -> Iterator[ThrowawayServer]:
    with ThrowawayServer(find_postgres_prefix()) as server:
        yield server


def _haproxy(servers: list[Any], balance: str) -> HAProxy:
    if not os.path.exists(HAPROXY):
        pytest.skip("haproxy is not installed (run tools/install_test_services.sh)")
    return HAProxy(servers, balance).start()


@pytest.mark.parametrize("driver", [*DRIVERS, "psycopg-async"])
def test_haproxy_roundrobin_first_resend_recovers(
    driver: str, pg_server: Any, second_server: ThrowawayServer
) -> None:
    """roundrobin: the cancel goes to the other server (lost), its re-send to the session's."""
    lb = _haproxy([pg_server, second_server], "roundrobin")
    try:
        result = tally(driver, lb.dsn(), sleep=20)
    finally:
        lb.stop()
    print(result.line(f"haproxy roundrobin {driver}"))
    result.check()
    # Usually every round: the rotation shifts when a driver opens another
    # connection in between (psycopg's first connection did, once).
    assert result.lost >= len(result.rounds) // 2, result.rounds
    assert result.recovered == result.lost, result.rounds
    assert all(r.resends <= 1 for r in result.rounds), result.rounds


@pytest.mark.long(9)
@pytest.mark.parametrize("driver", DRIVERS)
def test_haproxy_leastconn_loses_every_cancel_and_reports_it(
    driver: str, pg_server: Any, second_server: ThrowawayServer
) -> None:
    """leastconn: every cancel goes to the idle server: reported, never silent."""
    lb = _haproxy([pg_server, second_server], "leastconn")
    try:
        result = tally(driver, lb.dsn(), sleep=3, rounds=max(2, ROUNDS // 2))
    finally:
        lb.stop()
    print(result.line(f"haproxy leastconn {driver}"))
    result.check()
    assert result.lost == len(result.rounds) and result.recovered == 0, result.rounds
    assert all(r.outcome == "completed" and r.warned for r in result.rounds), result.rounds
    assert result.reported >= 1, result.rounds


def test_haproxy_leastconn_bound_still_ends_the_block(
    pg_server: Any, second_server: ThrowawayServer
) -> None:
    """A lost cancel under the bound: the break at ``fired + timeout`` ends the block."""
    lb = _haproxy([pg_server, second_server], "leastconn")
    try:
        conn = _connect("psycopg2", lb.dsn())
        try:
            block = psycancel.cancel_after(conn, DEADLINE, timeout=2.0)
            with pytest.raises(psycancel.QueryTimeout) as info, block, conn.cursor() as cur:
                cur.execute("select pg_sleep(30)")
            assert info.value.connection_broken
            assert block.cancel_lost and block.resends > 0
        finally:
            conn.close()
    finally:
        lb.stop()


@pytest.mark.parametrize("driver", DRIVERS)
def test_haproxy_source_keeps_cancels_working(
    driver: str, pg_server: Any, second_server: ThrowawayServer
) -> None:
    """source: the cancel comes from the session's address, so it reaches its server."""
    lb = _haproxy([pg_server, second_server], "source")
    try:
        result = tally(driver, lb.dsn(), sleep=20)
    finally:
        lb.stop()
    print(result.line(f"haproxy source {driver}"))
    result.check_taken()


def test_haproxy_roundrobin_interrupt_resend(
    pg_server: Any, second_server: ThrowawayServer, caplog: pytest.LogCaptureFixture
) -> None:
    """cancel_on_interrupt through roundrobin: Ctrl-C's lost cancel is re-sent and ends the query.

    Without the re-send the block would last until the bound broke the
    connection (``timeout`` after the signal). Three rounds: the rotation
    usually sends each first cancel to the other server (a driver's extra
    connection can shift it); at least one must have been re-sent.
    """
    lb = _haproxy([pg_server, second_server], "roundrobin")
    caplog.set_level(logging.INFO, logger="psycancel")
    try:
        for _ in range(3):
            interrupt_round(lb.dsn())
    finally:
        lb.stop()
    assert "cancel re-sent (1)" in caplog.text
    assert "broke the connection" not in caplog.text
    assert "still ran" not in caplog.text  # nothing reported lost


def interrupt_round(dsn: str) -> None:
    """Ctrl-C during ``pg_sleep(20)`` under ``cancel_on_interrupt``: cancelled, promptly."""
    conn = _connect("psycopg2", dsn)
    try:
        main = threading.get_ident()
        timer = threading.Timer(0.5, signal.pthread_kill, (main, signal.SIGINT))
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt) as info:
            timer.start()
            with psycancel.cancel_on_interrupt(conn, timeout=TIMEOUT), conn.cursor() as cur:
                cur.execute("select pg_sleep(20)")
        elapsed = time.monotonic() - started
        timer.join()
        canceled = info.value.__context__
        while canceled is not None and not isinstance(canceled, psycopg2.Error):
            canceled = canceled.__context__ or canceled.__cause__
        assert canceled is not None and canceled.pgcode == "57014", info.value
        assert elapsed < TIMEOUT / 2, elapsed
        with conn.cursor() as cur:  # the connection is usable
            cur.execute("select 1")
    finally:
        conn.close()


@pytest.mark.long(9)
def test_haproxy_roundrobin_resend_never_hits_the_next_query(
    pg_server: Any, second_server: ThrowawayServer
) -> None:
    """The fence: a re-send is never made once the block left, so the next query is safe.

    roundrobin loses the first cancel; the query ends on its own around the
    moment the re-send would be made (``pg_sleep`` between 0.45 and 0.65 s,
    the re-send due ~0.55 s after entry), and the next query on the same
    connection, right after the block, must never be cancelled.
    """
    lb = _haproxy([pg_server, second_server], "roundrobin")
    hit = 0
    try:
        conn = _connect("psycopg2", lb.dsn())
        try:
            for i in range(12):
                sleep = 0.45 + (i % 5) * 0.05
                block = psycancel.cancel_after(conn, DEADLINE, timeout=TIMEOUT)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", psycancel.CancelNotTakenWarning)
                    try:
                        with block, conn.cursor() as cur:
                            cur.execute(f"select pg_sleep({sleep})")
                    except psycancel.QueryTimeout as ex:
                        assert not ex.connection_broken
                try:
                    with conn.cursor() as cur:
                        cur.execute("select pg_sleep(0.3), 'next'")
                        assert cur.fetchone() == ("", "next")
                except psycopg2.errors.QueryCanceled:
                    hit += 1
        finally:
            conn.close()
    finally:
        lb.stop()
    assert hit == 0, f"{hit} next queries were cancelled by a block's re-send"
