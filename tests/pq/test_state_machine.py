"""Property-based test of the libpq objects: random call sequences, both twins at once.

A Hypothesis ``RuleBasedStateMachine`` draws sequences of
``start/poll/reset/finish/blocking/status/socket/error_message`` (and dropping
the object to the garbage collector) on ``PGcancelConn``, and of
``cancel_conn/get_cancel().cancel()/psycancel.cancel()/finish`` on ``PGconn``.
Every call is made on a ctypes object and on a compiled object side by side
(each twin has its own session to the same server); the outcomes (value or
exception type) must agree, and must be allowed by a small model of the
transitions (ALLOCATED -> started -> done | failed, reset -> ALLOCATED,
finish -> finished). Only :class:`InterfaceError` and :class:`CancelError`
may be raised; nothing may crash.

Sessions are plain, TLS, or "refused" (through a proxy that is then closed,
so every cancel fails). ``poll`` waits for the readiness libpq asked for
before polling, as a real waiter does. With TLS the number of polls a twin
needs can differ by timing (a handshake sometimes completes within one
poll), so a twin that is ahead waits for the other before outcomes are
compared; plain and refused sessions are compared poll by poll.
"""

from __future__ import annotations

import gc
import os
import select
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    precondition,
    rule,
)

import psycancel
from psycancel.errors import CancelError, InterfaceError
from psycancel.pq import _ctypes
from psycancel.pq.enums import ConnStatus, PollingStatus
from testing import client
from tests.support.proxy import TcpProxy

try:
    from psycancel_c import _pq as _compiled
except ImportError:
    _compiled = None

pytestmark = pytest.mark.skipif(_compiled is None, reason="the compiled twin is not built")

TWINS = ("python", "c")
ALLOWED = (InterfaceError, CancelError)
IN_PROGRESS = {
    ConnStatus.STARTED,
    ConnStatus.MADE,
    ConnStatus.AWAITING_RESPONSE,
    ConnStatus.SSL_STARTUP,
    ConnStatus.NEEDED,
}
TERMINAL = {PollingStatus.OK, PollingStatus.FAILED}
MAX_CONNS = 3
EXAMPLES = int(os.environ.get("PSYCANCEL_STATEFUL_EXAMPLES", "150"))


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) or ("raise", exception type); anything else fails the test."""
    try:
        return ("ok", call())
    except ALLOWED as ex:
        return ("raise", type(ex))


@dataclass
class ConnPair:
    kind: str  # "disable", "require" or "refused"
    objs: dict[str, Any]
    proxy: TcpProxy | None = None
    closed: bool = False


@dataclass
class CancelPair:
    kind: str
    objs: dict[str, Any]
    state: str = "allocated"  # allocated, started, done, failed, finished
    events: dict[str, int] = field(default_factory=dict)  # per twin: what to wait for

    @property
    def exact(self) -> bool:
        """Compare poll by poll (plain and refused); TLS timing may differ."""
        return self.kind != "require"


class CancelStateMachine(RuleBasedStateMachine):
    conns = Bundle("conns")
    cancels = Bundle("cancels")

    # Set by the test function (one server and libpq file for every example).
    server: Any = None
    libpq_path: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.libs = {
            "python": _ctypes.Libpq.load(self.libpq_path),
            "c": _compiled.Libpq.load(self.libpq_path),
        }
        self.twins = {"python": _ctypes, "c": _compiled}
        self.all_conns: list[ConnPair] = []
        self.all_cancels: list[CancelPair] = []

    # -- helpers

    def both(self, pair: ConnPair | CancelPair, call: Callable[[Any], Any]) -> tuple[str, Any]:
        """Run ``call`` on each twin's object; assert they agree; the outcome."""
        results = {twin: outcome(lambda twin=twin: call(pair.objs[twin])) for twin in TWINS}
        assert results["python"] == results["c"], f"twins disagree: {results}"
        return results["python"]

    def expect(self, got: tuple[str, Any], *allowed: tuple[str, Any]) -> None:
        assert got in allowed, f"got {got}, model allows {allowed}"

    # -- PGconn

    @initialize(target=conns, kind=st.sampled_from(["disable", "require", "refused"]))
    def first_conn(self, kind: str) -> ConnPair:
        return self.connect(kind)

    @precondition(lambda self: len(self.all_conns) < MAX_CONNS)
    @rule(target=conns, kind=st.sampled_from(["disable", "require", "refused"]))
    def connect(self, kind: str) -> ConnPair:
        server = self.server
        proxy = None
        if kind == "refused":
            proxy = TcpProxy(server.host, server.port).start()
            dsn = proxy.dsn(server, sslmode="disable")
        else:
            dsn = server.dsn(kind)
        objs = {t: client.connect(dsn, libpq=self.libs[t]) for t in TWINS}
        if proxy is not None:
            proxy.close()  # the sessions stay open (half-dead); cancels are refused
        pair = ConnPair(kind, objs, proxy)
        self.all_conns.append(pair)
        return pair

    @rule(target=cancels, conn=conns)
    def cancel_conn(self, conn: ConnPair) -> CancelPair:
        made: dict[str, Any] = {}
        results: dict[str, tuple[str, Any]] = {}
        for twin in TWINS:
            try:
                made[twin] = conn.objs[twin].cancel_conn()
                results[twin] = ("ok", None)
            except ALLOWED as ex:
                results[twin] = ("raise", type(ex))
        assert results["python"] == results["c"], results
        got = results["python"]
        if conn.closed:
            self.expect(got, ("raise", InterfaceError))
            return CancelPair(conn.kind, {}, state="finished")  # never used: no objects
        self.expect(got, ("ok", None))
        pair = CancelPair(conn.kind, made)
        self.all_cancels.append(pair)
        assert {cc.status for cc in made.values()} == {ConnStatus.ALLOCATED}
        return pair

    @rule(conn=conns)
    def legacy_cancel(self, conn: ConnPair) -> None:
        def call(pg: Any) -> None:
            handle = pg.get_cancel()
            try:
                handle.cancel()
            finally:
                handle.free()

        got = self.both(conn, call)
        if conn.closed:
            self.expect(got, ("raise", InterfaceError))
        elif conn.kind == "refused":
            self.expect(got, ("raise", CancelError))
        else:
            self.expect(got, ("ok", None))

    @rule(conn=conns)
    def api_cancel(self, conn: ConnPair) -> None:
        got = self.both(conn, lambda pg: psycancel.cancel(pg, timeout=5))
        if conn.closed:
            self.expect(got, ("ok", None))  # nothing to cancel: nothing is sent
        elif conn.kind == "refused":
            self.expect(got, ("raise", CancelError))
        else:
            self.expect(got, ("ok", None))

    @rule(conn=conns)
    def finish_conn(self, conn: ConnPair) -> None:
        self.expect(self.both(conn, lambda pg: pg.finish()), ("ok", None))
        conn.closed = True

    # -- PGcancelConn

    def usable(self, cc: CancelPair) -> bool:
        return bool(cc.objs)

    @rule(cc=cancels)
    def start(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return
        got = self.both(cc, lambda o: o.start())
        if cc.state == "allocated":
            self.expect(got, ("ok", None))
            cc.state = "started"
            cc.events = dict.fromkeys(TWINS, PollingStatus.WRITING)
        else:
            self.expect(got, ("raise", InterfaceError))

    def _wait_and_poll(self, cc: CancelPair, twin: str) -> PollingStatus:
        obj = cc.objs[twin]
        fd = obj.socket
        if fd >= 0:
            poller = select.poll()
            reading = cc.events.get(twin) == PollingStatus.READING
            poller.register(fd, select.POLLIN if reading else select.POLLOUT)
            assert poller.poll(5000), f"{twin}: socket never became ready"
        status: PollingStatus = obj.poll()
        cc.events[twin] = status
        return status

    @rule(cc=cancels)
    def poll(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return
        if cc.state in ("started",):
            got = {t: self._wait_and_poll(cc, t) for t in TWINS}
            if not cc.exact:
                # TLS: let a twin that is behind catch up before comparing.
                for _ in range(20):
                    ahead = [t for t in TWINS if got[t] in TERMINAL]
                    if len(ahead) != 1:
                        break
                    (behind,) = set(TWINS) - set(ahead)
                    got[behind] = self._wait_and_poll(cc, behind)
                assert (got["python"] in TERMINAL) == (got["c"] in TERMINAL), got
                if got["python"] not in TERMINAL:
                    return
            assert got["python"] == got["c"], f"twins disagree: {got}"
            status = got["python"]
            if cc.kind == "refused":
                assert status == PollingStatus.FAILED
            else:
                assert status != PollingStatus.FAILED
            if status == PollingStatus.OK:
                cc.state = "done"
            elif status == PollingStatus.FAILED:
                cc.state = "failed"
            return
        got = self.both(cc, lambda o: o.poll())
        if cc.state == "done":
            self.expect(got, ("ok", PollingStatus.OK))
        elif cc.state == "failed":
            self.expect(got, ("ok", PollingStatus.FAILED))
        else:  # allocated (never started, or reset) or finished
            self.expect(got, ("raise", InterfaceError))

    @rule(cc=cancels)
    def poll_to_end(self, cc: CancelPair) -> None:
        """Poll until OK or FAILED, as a waiter does (reaches the end states sooner)."""
        for _ in range(30):
            if cc.state != "started":
                break
            self.poll(cc)
        assert cc.state != "started", "the cancel never ended"

    @rule(cc=cancels)
    def blocking(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return
        got = self.both(cc, lambda o: o.blocking())
        if cc.state != "allocated":
            self.expect(got, ("raise", InterfaceError))
        elif cc.kind == "refused":
            self.expect(got, ("raise", CancelError))
            cc.state = "failed"
        else:
            self.expect(got, ("ok", None))
            cc.state = "done"

    @rule(cc=cancels)
    def reset(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return
        got = self.both(cc, lambda o: o.reset())
        if cc.state == "finished":
            self.expect(got, ("raise", InterfaceError))
        else:
            self.expect(got, ("ok", None))
            cc.state = "allocated"

    @rule(cc=cancels)
    def finish(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return
        self.expect(self.both(cc, lambda o: o.finish()), ("ok", None))
        assert all(o.closed for o in cc.objs.values())
        cc.state = "finished"

    @rule(cc=cancels)
    def status(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return

        def norm(o: Any) -> Any:
            status = o.status
            assert isinstance(status, ConnStatus)
            return "in progress" if (status in IN_PROGRESS and not cc.exact) else status

        got = self.both(cc, norm)
        expected = {
            "allocated": [("ok", ConnStatus.ALLOCATED)],
            "done": [("ok", ConnStatus.OK)],
            "failed": [("ok", ConnStatus.BAD)],
            "finished": [("raise", InterfaceError)],
            "started": [("ok", s) for s in IN_PROGRESS] + [("ok", "in progress")],
        }[cc.state]
        if cc.state == "started":
            # Polled to its end by one twin's catch-up: OK / BAD are possible too.
            expected += [("ok", ConnStatus.OK), ("ok", ConnStatus.BAD)]
        self.expect(got, *expected)

    @rule(cc=cancels)
    def socket(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return
        got = self.both(cc, lambda o: o.socket >= 0)
        if cc.state == "finished":
            self.expect(got, ("raise", InterfaceError))
        elif cc.state in ("allocated", "done", "failed"):
            self.expect(got, ("ok", False))
        else:
            self.expect(got, ("ok", True), ("ok", False))

    @rule(cc=cancels)
    def error_message(self, cc: CancelPair) -> None:
        if not self.usable(cc):
            return

        def norm(o: Any) -> bool:
            message = o.error_message
            assert isinstance(message, str)
            return bool(message)

        got = self.both(cc, norm)
        if cc.state == "finished":
            self.expect(got, ("raise", InterfaceError))
        elif cc.state == "failed":
            self.expect(got, ("ok", True))
        elif cc.state == "done":
            self.expect(got, ("ok", False))

    @rule(cc=consumes(cancels))
    def drop(self, cc: CancelPair) -> None:
        """Leave the objects to the garbage collector (which finishes them)."""
        if cc in self.all_cancels:
            self.all_cancels.remove(cc)
        cc.objs.clear()
        gc.collect()

    def teardown(self) -> None:
        for cc in self.all_cancels:
            for obj in cc.objs.values():
                obj.finish()
        for conn in self.all_conns:
            for obj in conn.objs.values():
                obj.finish()
            if conn.proxy is not None:
                conn.proxy.close()


@pytest.mark.long(30)
def test_cancel_objects_state_machine(pg_server: Any, libpq: Any) -> None:
    CancelStateMachine.server = pg_server
    CancelStateMachine.libpq_path = libpq.path
    test_case = CancelStateMachine.TestCase
    test_case.settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=20,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    test_case().runTest()
