"""Many threads cancelling at once: the free-threading stress test (both twins).

Run as ``python -m tests.freethreading.stress [--dsn DSN] [--rounds N] [--threads T]``
with ``PSYCANCEL_IMPL`` naming the twin (on a free-threaded CPython, with
``PYTHON_GIL=0``). Without ``--dsn`` a throwaway server is started
(``testing.server``). Each round runs, with ``T`` threads released together by a
barrier:

* **shared**: ``T`` threads cancel the queries of 4 shared connections at once
  (``psycancel.cancel``, several threads on the same connection);
* **separate**: one connection per thread, each cancelled by its own thread;
* **cancellers**: one ``Canceller`` per shared connection, called by every thread;
* **offload**: 4 threads, each with an asyncio loop, gather
  ``cancel_async(..., offload=True)`` on every shared connection, 3 times over,
  while the others cancel synchronously (the offload engine under load);
* **closing**: the threads cancel in a loop while the main thread closes
  the connections under them.

A query that was cancelled must end with SQLSTATE 57014; a thread may fail
only with a ``psycancel.Error`` in the closing part (the connection went away),
never elsewhere. Every thread must end (a 120 s join: a deadlock fails), and
after the rounds the process has the file descriptors and threads it had after
the first (warm-up) round, and its RSS grew by less than ``--max-rss-growth``
MiB. The figures (threads, cancels, duration, peak and before/after fds,
threads, RSS) are printed as one JSON line (the last line of the output); the
exit status says whether every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import gc
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycancel
from psycancel.pq import Libpq, __impl__
from testing import client
from testing.client import Client

QUERY_CANCELED = "57014"
SLEEP = "select pg_sleep(60)"
N_SHARED = 4
JOIN_TIMEOUT = 120.0


def process_figures() -> tuple[int, int, int]:
    """(open fds, OS threads, RSS in KiB) of this process, from /proc."""
    fds = len(os.listdir("/proc/self/fd"))
    threads = rss = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Threads:"):
            threads = int(line.split()[1])
        elif line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return fds, threads, rss


@dataclass
class Peaks:
    """The highest figures a sampling thread saw."""

    fds: int = 0
    threads: int = 0
    rss_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        fds, threads, rss = process_figures()
        self.fds = max(self.fds, fds)
        self.threads = max(self.threads, threads)
        self.rss_kib = max(self.rss_kib, rss)

    @contextmanager
    def sampling(self) -> Iterator[None]:
        def loop() -> None:
            while not self._stop.wait(0.02):
                self.sample()

        thread = threading.Thread(target=loop, name="stress-sampler", daemon=True)
        thread.start()
        try:
            yield
        finally:
            self._stop.set()
            thread.join()
            self._stop.clear()


@dataclass
class Tally:
    """Cancels sent and failures seen, from any thread."""

    cancels: int = 0
    expected_errors: int = 0
    failures: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self, n: int = 1) -> None:
        with self._lock:
            self.cancels += n

    def fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def tolerated(self) -> None:
        with self._lock:
            self.expected_errors += 1


def run_threads(n: int, target: Callable[[int], None], tally: Tally, what: str) -> None:
    """``target(i)`` in ``n`` threads released together; a thread left running fails."""
    barrier = threading.Barrier(n)

    def body(i: int) -> None:
        try:
            barrier.wait(JOIN_TIMEOUT)
            target(i)
        except BaseException as ex:  # every failure is reported, none is lost
            tally.fail(f"{what}[{i}]: {type(ex).__name__}: {ex}")

    threads = [threading.Thread(target=body, args=(i,), name=f"{what}-{i}") for i in range(n)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + JOIN_TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    if stuck:
        faulthandler.dump_traceback(all_threads=True)
        raise SystemExit(f"deadlock: threads still running after {JOIN_TIMEOUT} s: {stuck}")


def busy(dsn: str, libpq: Libpq, n: int) -> list[Client]:
    """``n`` connections, each running SLEEP (sent, not waited for)."""
    conns = [client.connect(dsn, libpq=libpq) for _ in range(n)]
    for conn in conns:
        conn.send_query(SLEEP)
    wait_active(dsn, libpq, [c.backend_pid for c in conns])
    return conns


def wait_active(dsn: str, libpq: Libpq, pids: list[int]) -> None:
    """Until every backend of ``pids`` runs pg_sleep (a cancel before would be lost)."""
    monitor = client.connect(dsn, libpq=libpq)
    try:
        wanted = ",".join(str(p) for p in pids)
        deadline = time.monotonic() + 60
        while True:
            monitor.send_query(
                "select count(*) from pg_stat_activity"
                f" where pid in ({wanted}) and state = 'active' and query like '%pg_sleep%'"
            )
            result = monitor.get_result()
            while monitor.get_result() is not None:
                pass
            assert result is not None
            if int(result.rows[0][0]) == len(pids):
                return
            if time.monotonic() > deadline:
                raise SystemExit("the sleeping queries never became active")
            time.sleep(0.02)
    finally:
        monitor.finish()


def check_cancelled(conns: list[Client], tally: Tally, what: str) -> None:
    """Every query ended with 57014; the connections are closed."""
    for conn in conns:
        try:
            first = conn.get_result()
            while conn.get_result() is not None:
                pass
            state = first.sqlstate if first is not None else None
            if state != QUERY_CANCELED:
                tally.fail(f"{what}: the query ended with {state!r}, not {QUERY_CANCELED}")
        finally:
            conn.finish()


def round_shared(dsn: str, libpq: Libpq, n: int, tally: Tally) -> None:
    conns = busy(dsn, libpq, N_SHARED)

    def cancel(i: int) -> None:
        for k in range(N_SHARED):  # every thread on every connection, from another start
            psycancel.cancel(conns[(i + k) % N_SHARED], timeout=30)
            tally.sent()

    run_threads(n, cancel, tally, "shared")
    check_cancelled(conns, tally, "shared")


def round_separate(dsn: str, libpq: Libpq, n: int, tally: Tally) -> None:
    conns = busy(dsn, libpq, n)

    def cancel(i: int) -> None:
        psycancel.cancel(conns[i], timeout=30)
        tally.sent()

    run_threads(n, cancel, tally, "separate")
    check_cancelled(conns, tally, "separate")


def round_cancellers(dsn: str, libpq: Libpq, n: int, tally: Tally) -> None:
    conns = busy(dsn, libpq, N_SHARED)
    handles = [psycancel.Canceller(conn) for conn in conns]

    def cancel(i: int) -> None:
        for k in range(N_SHARED):
            handles[(i + k) % N_SHARED].cancel(timeout=30)
            tally.sent()

    run_threads(n, cancel, tally, "cancellers")
    check_cancelled(conns, tally, "cancellers")


def round_offload(dsn: str, libpq: Libpq, n: int, tally: Tally) -> None:
    conns = busy(dsn, libpq, N_SHARED)
    n_async = min(4, n)

    async def burst() -> None:
        for _ in range(3):
            await asyncio.gather(
                *(psycancel.cancel_async(c, timeout=30, offload=True) for c in conns)
            )
            tally.sent(len(conns))

    def cancel(i: int) -> None:
        if i < n_async:
            asyncio.run(burst())
        else:
            psycancel.cancel(conns[i % N_SHARED], timeout=30)
            tally.sent()

    run_threads(n, cancel, tally, "offload")
    check_cancelled(conns, tally, "offload")


def round_closing(dsn: str, libpq: Libpq, n: int, tally: Tally) -> None:
    conns = busy(dsn, libpq, N_SHARED)
    closing = threading.Event()

    def cancel(i: int) -> None:
        while True:
            try:
                psycancel.cancel(conns[i % N_SHARED], timeout=30)
                tally.sent()
            except psycancel.Error:
                if not closing.is_set():
                    raise
                tally.tolerated()  # the connection went away under the cancel
            if closing.is_set():
                return

    def closer() -> None:
        time.sleep(0.05)
        closing.set()
        for conn in conns:
            conn.finish()

    stopper = threading.Thread(target=closer, name="closer")
    stopper.start()
    run_threads(n, cancel, tally, "closing")
    stopper.join(JOIN_TIMEOUT)
    for conn in conns:
        conn.finish()


ROUNDS = (round_shared, round_separate, round_cancellers, round_offload, round_closing)


def one_round(dsn: str, libpq: Libpq, n: int, tally: Tally) -> None:
    for part in ROUNDS:
        part(dsn, libpq, n, tally)


def settle(expect_fds: int, expect_threads: int, timeout: float = 10.0) -> tuple[int, int, int]:
    """The figures once the helper threads of the last cancels are gone (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        figures = process_figures()
        if (figures[0] <= expect_fds and figures[1] <= expect_threads) or (
            time.monotonic() > deadline
        ):
            return figures
        time.sleep(0.05)


def gil_enabled() -> bool | None:
    """``sys._is_gil_enabled()`` (None before 3.13)."""
    probe = getattr(sys, "_is_gil_enabled", None)
    return None if probe is None else bool(probe())


def stress(dsn: str, libpq: Libpq, rounds: int, threads: int, max_rss_growth_mib: float) -> int:
    tally = Tally()
    peaks = Peaks()
    warnings.simplefilter("ignore")  # (cancels of idle connections may warn: not the point)
    t0 = time.monotonic()
    with peaks.sampling():
        one_round(dsn, libpq, threads, tally)  # warm-up: the engine threads, caches
        before = settle(0, 0, timeout=1.0)
        for _ in range(rounds):
            one_round(dsn, libpq, threads, tally)
    after = settle(before[0], before[1])
    duration = time.monotonic() - t0
    growth_mib = (after[2] - before[2]) / 1024
    checks = {
        "no thread failed": not tally.failures,
        "fds back to the warm-up figure": after[0] <= before[0],
        "threads back to the warm-up figure": after[1] <= before[1],
        f"RSS grew by less than {max_rss_growth_mib} MiB": growth_mib < max_rss_growth_mib,
    }
    if gil_enabled() is not None and os.environ.get("PYTHON_GIL") == "0":
        checks["the GIL stayed disabled"] = gil_enabled() is False
    figures: dict[str, Any] = {
        "python": sys.version.split()[0] + ("t" if gil_enabled() is False else ""),
        "gil_enabled": gil_enabled(),
        "twin": __impl__,
        "threads": threads,
        "rounds": rounds + 1,
        "cancels": tally.cancels,
        "tolerated_errors_while_closing": tally.expected_errors,
        "duration_s": round(duration, 1),
        "before": {"fds": before[0], "threads": before[1], "rss_kib": before[2]},
        "peak": {"fds": peaks.fds, "threads": peaks.threads, "rss_kib": peaks.rss_kib},
        "after": {"fds": after[0], "threads": after[1], "rss_kib": after[2]},
        "rss_growth_mib": round(growth_mib, 1),
        "checks": checks,
        "failures": tally.failures[:20],
    }
    for failure in tally.failures[:20]:
        print("FAILURE:", failure, file=sys.stderr)
    b, p, a = figures["before"], figures["peak"], figures["after"]
    gil = {None: "?", True: "on", False: "off"}[figures["gil_enabled"]]
    print(
        f"stress: {figures['python']} ({figures['twin']} twin, GIL {gil}):"
        f" {threads} threads x {rounds + 1} rounds, {tally.cancels} cancels in"
        f" {figures['duration_s']} s; fds {b['fds']}/{p['fds']}/{a['fds']},"
        f" threads {b['threads']}/{p['threads']}/{a['threads']},"
        f" RSS MiB {b['rss_kib'] // 1024}/{p['rss_kib'] // 1024}/{a['rss_kib'] // 1024}"
        " (before/peak/after)"
        + ("" if all(checks.values()) else f"; FAILED: {[k for k, v in checks.items() if not v]}"),
        flush=True,
    )
    print(json.dumps(figures), flush=True)
    return 0 if all(checks.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn", help="a server to use (default: start a throwaway one)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds after the warm-up")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--max-rss-growth", type=float, default=32.0, help="MiB")
    args = parser.parse_args(argv)
    faulthandler.enable()
    if args.dsn:
        libpq = Libpq.load(os.environ.get("PSYCANCEL_LIBPQ") or None)
        return stress(args.dsn, libpq, args.rounds, args.threads, args.max_rss_growth)
    from testing.server import ThrowawayServer

    with ThrowawayServer() as server:
        libpq = Libpq.load(str(server.libpq_path))
        return stress(server.dsn("require"), libpq, args.rounds, args.threads, args.max_rss_growth)


if __name__ == "__main__":
    sys.exit(main())
