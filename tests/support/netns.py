"""A path to the test server through a network namespace: a kernel-level black hole.

The user-space :class:`~tests.support.proxy.TcpProxy` can only stop answering;
the kernel still acknowledges what the client sends. :class:`NetnsPath` puts a
network namespace (created by the test, deleted at the end) on the path, so
that the test can make the path drop every packet, both ways, for the
connections already established: the client's kernel retransmits, nothing
answers, nothing is reset -- a network that went away.

Layout (one private ``/30`` in ``10.200.0.0/13`` per path)::

    client (host)                         namespace NS
      --> NS_ADDR:port ---- veth ---->  relay (child process, ``ip netns exec``)
                                          --> HOST_ADDR:hport ---- veth ---->
    relay (thread, on the host-side veth address)  --> server (127.0.0.1)

Both relays are :class:`TcpProxy` in forward mode. :meth:`NetnsPath.blackhole`
inserts ``-j DROP`` into the namespace's ``INPUT`` and ``OUTPUT`` chains (the
client's packets, and the replies, die in the namespace; a new ``connect()``
times out instead of being refused); :meth:`NetnsPath.restore` deletes them.
No rule is ever added outside the namespace. :meth:`NetnsPath.close` ends the
child, the relay and the veth pair, and deletes the namespace; leftovers of a
crashed earlier run (a namespace whose creating process is gone) are swept at
the next start.

Needs root, iproute2 and iptables (``tools/install_test_services.sh``).
Run as ``python -m tests.support.netns relay ...`` this module is the
namespace's relay (the child process).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import selectors
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import pytest

from testing import ConninfoValue, make_conninfo, parse_conninfo
from tests.support.proxy import ServerLike, TcpProxy

__all__ = [
    "NAME_PREFIX",
    "ROOT",
    "NetnsPath",
    "link_exists",
    "namespaces",
    "netns_missing",
    "netns_path",
    "process_alive",
    "sweep_stale",
]

ROOT = Path(__file__).resolve().parents[2]

NAME_PREFIX = "psycancel-"
"""Namespaces made here are named ``psycancel-<creator pid>-<token>``."""

_NAME_RE = re.compile(rf"^{NAME_PREFIX}(\d+)-([0-9a-f]{{6}})$")
_SUPERNET = ipaddress.IPv4Network("10.200.0.0/13")  # 10.200.0.0 - 10.207.255.255
_IPTABLES = ("iptables", "iptables-nft", "iptables-legacy")
_COMMAND_TIMEOUT = 30.0
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 5.0
_DROP_RULES = (("INPUT", "-j", "DROP"), ("OUTPUT", "-j", "DROP"))


# -- small helpers ------------------------------------------------------------------------


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (no shell), capturing its output; raise on failure if *check*."""
    result = subprocess.run(
        list(args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=_COMMAND_TIMEOUT,
        check=False,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
        )
    return result


def process_alive(pid: int) -> bool:
    """Whether process *pid* exists and is not a zombie (Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def namespaces() -> list[str]:
    """The names of every named network namespace (``ip netns list``)."""
    out = _run(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def link_exists(name: str) -> bool:
    """Whether a network interface *name* exists in the host's namespace."""
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def netns_missing() -> str | None:
    """Why a :class:`NetnsPath` cannot be made here (None when it can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no ip command (iproute2; run tools/install_test_services.sh)"
    if not any(shutil.which(cmd) for cmd in _IPTABLES):
        return "no iptables command (run tools/install_test_services.sh)"
    return None


def _veth_names(token: str) -> tuple[str, str]:
    """(host side, namespace side) of the veth pair of *token* (<= 15 characters)."""
    return f"pcn{token}h", f"pcn{token}n"


def sweep_stale() -> list[str]:
    """Delete namespaces (and veth pairs) left by processes that are gone; their names."""
    swept = []
    for name in namespaces():
        match = _NAME_RE.match(name)
        if match is None or process_alive(int(match.group(1))):
            continue
        host_veth, _ = _veth_names(match.group(2))
        _run(["ip", "link", "del", "dev", host_veth], check=False)
        _run(["ip", "netns", "del", name], check=False)
        swept.append(name)
    return swept


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of an address or a route of the host's namespace."""
    found: list[ipaddress.IPv4Network] = []
    for entry in json.loads(_run(["ip", "-j", "-4", "addr", "show"]).stdout or "[]"):
        for info in entry.get("addr_info", []):
            found.append(ipaddress.IPv4Network(f"{info['local']}/{info['prefixlen']}", False))
    for route in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout):
        dst = route.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst, strict=False))
    return found


def _pick_network() -> ipaddress.IPv4Network:
    """A free /30 in 10.200.0.0/13 (random, so that parallel runs rarely collide)."""
    in_use = _networks_in_use()
    blocks = _SUPERNET.num_addresses // 4
    for _ in range(100):
        first = _SUPERNET.network_address + 4 * random.randrange(blocks)
        net = ipaddress.IPv4Network(f"{first}/30")
        if not any(net.overlaps(other) for other in in_use):
            return net
    raise RuntimeError(f"no free /30 in {_SUPERNET}")


# -- the path -----------------------------------------------------------------------------


class NetnsPath:
    """A TCP path to *server* through a network namespace that can become a black hole.

    Use as a context manager (or :meth:`start` / :meth:`close`). The client
    connects to :attr:`address`:\\ :attr:`port` (see :meth:`dsn`).
    """

    def __init__(self, server: ServerLike) -> None:
        self.server = server
        token = secrets.token_hex(3)
        self.namespace = f"{NAME_PREFIX}{os.getpid()}-{token}"
        """The network namespace's name."""
        self.host_veth, self.ns_veth = _veth_names(token)
        """The veth pair: the host's end, and the end inside :attr:`namespace`."""
        self.network: ipaddress.IPv4Network | None = None
        """The path's private /30 (set by :meth:`start`)."""
        self.host_address = ""
        """The host-side veth address (where :attr:`relay` listens)."""
        self.address = ""
        """The namespace's address: clients connect here."""
        self._relay: TcpProxy | None = None
        self._relay_closed = False
        self._child: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._iptables: str | None = None
        self._blackholed = False
        self._lock = threading.Lock()
        self._created = False

    # -- information

    @property
    def port(self) -> int:
        """The port clients connect to, on :attr:`address` (inside the namespace)."""
        if self._port is None:
            raise RuntimeError("the path has not been started")
        return self._port

    @property
    def relay(self) -> TcpProxy:
        """The host-side relay (a :class:`TcpProxy` towards the server): its connections.

        Still readable after :meth:`close` (closed, with every connection finished).
        """
        if self._relay is None:
            raise RuntimeError("the path has not been started")
        return self._relay

    @property
    def blackholed(self) -> bool:
        """Whether the namespace drops every packet now."""
        return self._blackholed

    def dsn(self, sslmode: str = "disable", **params: ConninfoValue) -> str:
        """``server.dsn(sslmode, **params)``, rewritten to go through the namespace.

        ``hostaddr`` becomes :attr:`address` and ``port`` :attr:`port`; ``host``
        is kept, so ``verify-full`` still checks the server's name.
        """
        conninfo: dict[str, ConninfoValue] = dict(
            parse_conninfo(self.server.dsn(sslmode, **params))
        )
        conninfo["hostaddr"] = self.address
        conninfo["port"] = self.port
        conninfo.setdefault("host", self.address)
        return make_conninfo(conninfo)

    # -- the fault

    def blackhole(self) -> None:
        """Drop every packet in the namespace, both ways (iptables ``DROP``); idempotent.

        Established connections stay open and silent: the client retransmits,
        nothing is reset. A new connection's SYN is dropped too (connect times out).
        """
        with self._lock:
            if self._blackholed:
                return
            for rule in _DROP_RULES:
                self._ip_tables("-I", *rule)
            self._blackholed = True

    def restore(self) -> None:
        """Delete the ``DROP`` rules: packets flow again (TCP recovers at its next retransmit)."""
        with self._lock:
            if not self._blackholed:
                return
            for rule in _DROP_RULES:
                self._ip_tables("-D", *rule)
            self._blackholed = False

    @property
    def iptables(self) -> str:
        """The iptables front end in use (``iptables``, else ``iptables-legacy``...)."""
        if self._iptables is None:
            raise RuntimeError("the path has not been started")
        return self._iptables

    def rules(self) -> str:
        """The namespace's filter rules (``iptables -S``)."""
        return self._ip_tables("-S").stdout

    def _ns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.namespace, *args], check=check)

    def _ip_tables(self, *args: str) -> subprocess.CompletedProcess[str]:
        if self._iptables is None:
            raise RuntimeError("the path has not been started")
        return self._ns(self._iptables, "-w", "-t", "filter", *args)

    def _find_iptables(self) -> str:
        """The first iptables front end that works in the namespace (nft, else legacy)."""
        errors = []
        for cmd in _IPTABLES:
            if shutil.which(cmd) is None:
                continue
            result = self._ns(cmd, "-w", "-t", "filter", "-S", check=False)
            if result.returncode == 0:
                return cmd
            errors.append(f"{cmd}: {result.stderr.strip()}")
        raise RuntimeError(f"no working iptables in a namespace: {'; '.join(errors)}")

    # -- lifecycle

    def start(self) -> NetnsPath:
        """Create the namespace, the veth pair and both relays; returns self."""
        if self._created:
            raise RuntimeError("the path was already started")
        missing = netns_missing()
        if missing is not None:
            raise RuntimeError(missing)
        sweep_stale()
        try:
            self._setup_network()
            self._iptables = self._find_iptables()
            relay = TcpProxy(self.server.host, self.server.port)
            relay.host = self.host_address
            self._relay = relay.start()
            self._start_child()
        except BaseException:
            self.close()
            raise
        return self

    def _setup_network(self) -> None:
        net = _pick_network()
        host_ip, ns_ip = list(net.hosts())
        self.network = net
        self.host_address, self.address = str(host_ip), str(ns_ip)
        _run(["ip", "netns", "add", self.namespace])
        self._created = True
        _run(
            [
                *("ip", "link", "add", self.host_veth, "type", "veth"),
                *("peer", "name", self.ns_veth, "netns", self.namespace),
            ]
        )
        _run(["ip", "addr", "add", f"{host_ip}/30", "dev", self.host_veth])
        _run(["ip", "link", "set", self.host_veth, "up"])
        _run(["ip", "-n", self.namespace, "addr", "add", f"{ns_ip}/30", "dev", self.ns_veth])
        _run(["ip", "-n", self.namespace, "link", "set", self.ns_veth, "up"])
        _run(["ip", "-n", self.namespace, "link", "set", "lo", "up"])

    def _start_child(self) -> None:
        """Start the namespace's relay and read the port it listens on."""
        child = subprocess.Popen(
            [
                *("ip", "netns", "exec", self.namespace, sys.executable, "-m", __name__),
                *("relay", self.address, self.host_address, str(self.relay.port)),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._child = child
        assert child.stdout is not None
        line = _read_line(child.stdout.fileno(), _START_TIMEOUT)
        if not line.strip().isdigit():
            raise RuntimeError(f"the namespace relay did not start (said {line!r})")
        self._port = int(line)

    def close(self) -> None:
        """End the relays, delete the veth pair and the namespace; idempotent.

        Raises (after doing everything it can) if something could not be removed.
        """
        errors: list[str] = []
        child, self._child = self._child, None
        if child is not None:
            _stop_child(child)
        if self._relay is not None and not self._relay_closed:
            self._relay_closed = True
            self._relay.close()
        if self._created:
            self._created = False
            self._blackholed = False
            for args in (
                ["ip", "link", "del", "dev", self.host_veth],
                ["ip", "netns", "del", self.namespace],
            ):
                _run(args, check=False)
            errors = self.leftovers()
        if errors:
            raise RuntimeError(f"{self!r} left: {', '.join(errors)}")

    def leftovers(self) -> list[str]:
        """What of this path still exists (after :meth:`close`: nothing)."""
        left = []
        if self.namespace in namespaces():
            left.append(f"namespace {self.namespace}")
        if link_exists(self.host_veth):
            left.append(f"link {self.host_veth}")
        if self._child is not None and self._child.poll() is None:
            left.append(f"relay process {self._child.pid}")
        return left

    @property
    def child_pid(self) -> int | None:
        """The process id of the namespace's relay (None once ended)."""
        return None if self._child is None else self._child.pid

    def __enter__(self) -> NetnsPath:
        if not self._created:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<NetnsPath {self.namespace} {self.address}:{self._port} -> "
            f"{self.host_address} -> {self.server.host}:{self.server.port}"
            f"{' BLACKHOLED' if self._blackholed else ''}>"
        )


def _read_line(fd: int, timeout: float) -> str:
    """Read one line from a pipe, waiting at most *timeout* seconds in all."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                break
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace")


def _stop_child(child: subprocess.Popen[bytes]) -> None:
    """End the relay child: close its stdin (it exits), then terminate, then kill."""
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    try:
        child.wait(_STOP_TIMEOUT)
        return
    except subprocess.TimeoutExpired:
        child.terminate()
    try:
        child.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


# -- the fixture --------------------------------------------------------------------------


@pytest.fixture
def netns_path(pg_server: ServerLike) -> Iterator[NetnsPath]:
    """A started :class:`NetnsPath` to ``pg_server``; removed at teardown, even on failure."""
    missing = netns_missing()
    if missing is not None:
        pytest.skip(f"{missing} (tools/install_test_services.sh)")
    with NetnsPath(pg_server) as path:
        yield path


# -- the namespace's relay (the child process) --------------------------------------------


def _relay_main(listen: str, target_host: str, target_port: int) -> None:
    """Forward ``listen:<free port>`` to the target until stdin closes; print the port."""
    relay = TcpProxy(target_host, target_port)
    relay.host = listen
    with relay.start():
        sys.stdout.write(f"{relay.port}\n")
        sys.stdout.flush()
        while sys.stdin.buffer.read(4096):  # EOF: the parent closed it, or is gone
            pass


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "relay":
        sys.exit("usage: python -m tests.support.netns relay LISTEN TARGET_HOST TARGET_PORT")
    _relay_main(sys.argv[2], sys.argv[3], int(sys.argv[4]))
