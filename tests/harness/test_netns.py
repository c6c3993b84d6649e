"""The network-namespace path (tests/support/netns.py): a kernel black hole.

A session through the namespace works (plain and TLS); after ``blackhole()``
the kernel drops its packets both ways: a query gets no answer, the client's
TCP retransmits and stays established, a new connect times out (not refused);
``shutdown(SHUT_RDWR)`` of the client's socket from another thread (what
psycancel's deadline does) gives the blocked driver call back at once with
the driver's OperationalError; ``restore()`` lets the session go on. Nothing
is left behind: no namespace, veth, process, or host firewall rule.
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.drivers import need
from tests.support.netns import (
    ROOT,
    NetnsPath,
    link_exists,
    namespaces,
    netns_missing,
    process_alive,
    sweep_stale,
)
from tests.support.netns import netns_path as _netns_path
from tests.support.proxy import ServerLike

netns_path = _netns_path  # the fixture, by name (an import would trip F811 below)

psycopg2 = need("psycopg2")
psycopg = need("psycopg")

SILENCE = 2.0
"""How long a black-holed query must stay unanswered."""
WAKE_MARGIN = 1.5
"""How soon after the shutdown the blocked call must have returned (generous)."""
RECOVERY = 20.0
"""How long TCP may take to resume after restore() (a few backed-off retransmits)."""

TCP_ESTABLISHED = 1

SSLMODES = pytest.mark.parametrize("sslmode", ["disable", "require"])


class Call:
    """Run ``func()`` in a thread; ``done`` is set when it returned or raised."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.ended_at = 0.0
        self._func = func
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.value = self._func()
        except BaseException as ex:
            self.error = ex
        finally:
            self.ended_at = time.monotonic()
            self.done.set()

    def join(self, timeout: float) -> None:
        """Wait for the call; fail if it is still running after *timeout*."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the call still runs after {timeout} s"


def peer_of(fd: int) -> tuple[str, int]:
    """The address the socket ``fd`` is connected to (the descriptor is not closed)."""
    sock = socket.socket(fileno=fd)
    try:
        peer: tuple[str, int] = sock.getpeername()
        return peer
    finally:
        sock.detach()


def tcp_state(fd: int) -> tuple[int, int]:
    """(state, consecutive unrecovered retransmission timeouts) of the socket ``fd`` (TCP_INFO)."""
    sock = socket.socket(fileno=fd)
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
    finally:
        sock.detach()
    state, _ca_state, retransmits = struct.unpack_from("BBB", info)
    return state, retransmits


def shutdown_fd(fd: int) -> None:
    """``shutdown(fd, SHUT_RDWR)`` without closing the descriptor (as psycancel's breaker)."""
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()


def host_rules(iptables: str = "iptables") -> str:
    """The host's filter rules (``iptables -S``; the namespace's never show here)."""
    out = subprocess.run([iptables, "-w", "-S"], capture_output=True, text=True, check=True)
    return out.stdout


# -- the two drivers, behind one small interface ------------------------------------------


class Session:
    """A driver connection through the path: run a query, its socket, its broken flag."""

    def __init__(self, driver: str, dsn: str) -> None:
        self.driver = driver
        self.conn: Any = (psycopg2 if driver == "psycopg2" else psycopg).connect(dsn)
        if driver == "psycopg2":
            self.conn.autocommit = True
            self.error_type: type[BaseException] = psycopg2.OperationalError
        else:
            self.conn.autocommit = True
            self.error_type = psycopg.OperationalError

    def query(self, sql: str) -> Any:
        """Run *sql*; its first row."""
        with self.conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchone()

    def fileno(self) -> int:
        """The connection's socket."""
        fd: int = self.conn.fileno()
        return fd

    @property
    def broken(self) -> bool:
        """Whether the driver marked the connection broken (what pools check)."""
        if self.driver == "psycopg2":
            return bool(self.conn.closed == 2)
        return bool(self.conn.broken)

    def close(self) -> None:
        """Close the connection (whatever state it is in)."""
        self.conn.close()


@pytest.fixture
def session(netns_path: NetnsPath) -> Iterator[Callable[..., Session]]:
    """A factory of driver sessions through ``netns_path``; all closed at teardown."""
    made: list[Session] = []

    def make(driver: str = "psycopg2", sslmode: str = "disable") -> Session:
        made.append(Session(driver, netns_path.dsn(sslmode)))
        return made[-1]

    yield make
    for s in made:
        s.close()


# -- the tests ----------------------------------------------------------------------------


@SSLMODES
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_query_through_the_namespace(
    netns_path: NetnsPath, session: Callable[..., Session], driver: str, sslmode: str
) -> None:
    s = session(driver, sslmode)
    assert s.query("select 41 + 1") == (42,)
    assert s.query("select ssl from pg_stat_ssl where pid = pg_backend_pid()") == (
        sslmode == "require",
    )
    assert peer_of(s.fileno()) == (netns_path.address, netns_path.port)
    assert netns_path.relay.accepted == 1, "the session crossed the host-side relay"
    assert netns_path.address != netns_path.host_address
    assert netns_path.namespace in namespaces()


@SSLMODES
def test_blackhole_silences_an_established_session(
    netns_path: NetnsPath, session: Callable[..., Session], sslmode: str
) -> None:
    s = session("psycopg2", sslmode)
    assert s.query("select 1") == (1,)
    netns_path.blackhole()
    call = Call(lambda: s.query("select 2"))
    try:
        assert not call.done.wait(SILENCE), f"answered while black-holed: {call.error!r}"
        state, retransmits = tcp_state(s.fileno())
        assert state == TCP_ESTABLISHED, "the kernel must not reset or close the session"
        assert retransmits >= 1, "the client's kernel retransmits into the black hole"
    finally:
        shutdown_fd(s.fileno())  # end the call, whatever happened
        call.join(10.0)


def test_blackhole_rules_live_only_in_the_namespace(netns_path: NetnsPath) -> None:
    before = host_rules(netns_path.iptables)
    assert "DROP" not in netns_path.rules()
    netns_path.blackhole()
    netns_path.blackhole()  # idempotent: one rule per chain
    rules = netns_path.rules()
    assert rules.count("-A INPUT -j DROP") == 1
    assert rules.count("-A OUTPUT -j DROP") == 1
    assert netns_path.blackholed
    assert host_rules(netns_path.iptables) == before
    netns_path.restore()
    assert "DROP" not in netns_path.rules()
    assert not netns_path.blackholed


def test_new_connection_times_out_not_refused(netns_path: NetnsPath) -> None:
    target = (netns_path.address, netns_path.port)
    socket.create_connection(target, timeout=10.0).close()  # the path accepts
    netns_path.blackhole()
    with pytest.raises(TimeoutError):  # a refusal would be ConnectionRefusedError
        socket.create_connection(target, timeout=1.0)
    with pytest.raises(psycopg2.OperationalError, match="timeout expired"):
        psycopg2.connect(netns_path.dsn("disable", connect_timeout=2))


@SSLMODES
@pytest.mark.parametrize("driver", ["psycopg2", "psycopg"])
def test_shutdown_wakes_a_call_blocked_in_the_black_hole(
    netns_path: NetnsPath, session: Callable[..., Session], driver: str, sslmode: str
) -> None:
    s = session(driver, sslmode)
    assert s.query("select 1") == (1,)
    netns_path.blackhole()
    call = Call(lambda: s.query("select 2"))
    assert not call.done.wait(0.5), "answered while black-holed"
    shut_at = time.monotonic()
    shutdown_fd(s.fileno())  # from this thread, not the one blocked in the driver
    call.join(10.0)
    assert call.ended_at - shut_at < WAKE_MARGIN
    assert isinstance(call.error, s.error_type), repr(call.error)
    assert s.broken


@SSLMODES
def test_restore_lets_the_session_go_on(
    netns_path: NetnsPath, session: Callable[..., Session], sslmode: str
) -> None:
    s = session("psycopg2", sslmode)
    assert s.query("select 1") == (1,)
    netns_path.blackhole()
    call = Call(lambda: s.query("select 2"))
    try:
        assert not call.done.wait(1.0), "answered while black-holed"
        netns_path.restore()
        assert call.done.wait(RECOVERY), "TCP did not resume after restore()"
    finally:
        if not call.done.is_set():
            shutdown_fd(s.fileno())
        call.join(10.0)
    assert call.error is None, repr(call.error)
    assert call.value == (2,)
    assert s.query("select 3") == (3,)
    socket.create_connection((netns_path.address, netns_path.port), timeout=10.0).close()


# -- cleanup ------------------------------------------------------------------------------


@pytest.fixture
def need_netns() -> None:
    """Skip (a failure under PSYCANCEL_NO_SKIP) where namespaces cannot be made."""
    missing = netns_missing()
    if missing is not None:
        pytest.skip(missing)


@pytest.mark.usefixtures("need_netns")
def test_close_leaves_nothing_even_after_an_error(pg_server: ServerLike) -> None:
    path = NetnsPath(pg_server)
    with pytest.raises(ZeroDivisionError), path:
        before = host_rules(path.iptables)
        conn = psycopg2.connect(path.dsn("require"))
        path.blackhole()
        child = path.child_pid
        1 / 0  # noqa: B018 (a test failing with the session open and black-holed)
    conn.close()
    assert path.leftovers() == []
    assert path.namespace not in namespaces()
    assert not link_exists(path.host_veth)
    assert child is not None and not process_alive(child)
    assert path.relay.connections and all(c.finished.is_set() for c in path.relay.connections)
    assert host_rules(path.iptables) == before
    path.close()  # idempotent


_CRASHING_CHILD = """
import sys, time
from tests.support.netns import NetnsPath

class Server:
    host, port = "127.0.0.1", 9
    def dsn(self, sslmode="disable", **params):
        return "host=127.0.0.1 port=9"

path = NetnsPath(Server()).start()
print(path.namespace, path.host_veth, path.child_pid, flush=True)
time.sleep(600)
"""


@pytest.mark.usefixtures("need_netns")
def test_a_crashed_run_is_swept_at_the_next_start() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_CHILD],
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        namespace, veth, relay_pid = proc.stdout.readline().split()
        # Checked while the child lives: once it is gone, the next start of *any*
        # pytest-xdist worker's NetnsPath may sweep its leftovers (link first, then
        # the namespace), so a check after the kill could see half of them.
        assert namespace in namespaces() and link_exists(veth)
    finally:
        proc.send_signal(signal.SIGKILL)  # no teardown at all
        proc.wait()
    sweep_stale()  # (or another worker's start did, meanwhile: either is the next start)
    assert namespace not in namespaces()
    assert not link_exists(veth)
    deadline = time.monotonic() + 10.0  # the relay saw its stdin close
    while process_alive(int(relay_pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(int(relay_pid))
