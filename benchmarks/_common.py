"""Shared pieces of the benchmarks: server, out-of-process proxy, ticker, stats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from psycancel._server import ThrowawayServer, find_postgres_prefix  # noqa: E402


@dataclass
class Env:
    """The server and libpqs every benchmark uses."""

    server: ThrowawayServer
    libpq_path: str
    legacy_libpq_path: str


@contextlib.contextmanager
def environment() -> Iterator[Env]:
    """A throwaway TLS server, its libpq 18 and the system's legacy libpq."""
    from psycancel.pq._libfind import _system_libpq

    legacy = os.environ.get("PSYCANCEL_TEST_LEGACY_LIBPQ") or _system_libpq() or ""
    with ThrowawayServer(find_postgres_prefix()) as server:
        yield Env(server, str(server.libpq_path), legacy)


@contextlib.contextmanager
def proxy_process(env: Env, delay: float) -> Iterator[int]:
    """A delaying TCP proxy in a child process (so it never needs our GIL)."""
    code = (
        "import sys, time\n"
        "from tests.proxy import TcpProxy\n"
        f"p = TcpProxy('127.0.0.1', {env.server.port}).start()\n"
        f"p.delay = {delay!r}\n"
        "print(p.port, flush=True)\n"
        "sys.stdin.read()\n"
        "p.close()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        yield port
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def median(values: list[float]) -> float:
    """The median (benchmarks report medians of repeated runs)."""
    return statistics.median(values)


class Ticker:
    """A busy coroutine; records the largest gap between two of its ticks."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._stop = False
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        last = time.perf_counter()
        while not self._stop:
            await asyncio.sleep(0)
            now = time.perf_counter()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def __aenter__(self) -> Ticker:
        self._task = asyncio.get_running_loop().create_task(self._run())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.max_gap = 0.0
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        assert self._task is not None
        await self._task


def _spin_until(event: threading.Event) -> int:
    """Count pure-Python loop iterations until ``event`` is set."""
    count = 0
    while not event.is_set():
        count += 1
    return count


def progress_ratio(during: Callable[[], object]) -> tuple[float, float]:
    """Main-thread progress while ``during`` runs in a thread, vs. baseline.

    Returns (ratio, seconds ``during`` took). The clock starts before the
    thread does: a thread that takes the GIL at once (and keeps it) must not
    hide its stall inside ``Thread.start()``. The baseline is the same loop
    for the same time while a sleeping timer thread (no GIL) waits.
    """
    done = threading.Event()

    def target() -> None:
        try:
            during()
        finally:
            done.set()

    thread = threading.Thread(target=target)
    t0 = time.perf_counter()
    thread.start()
    count = _spin_until(done)
    elapsed = time.perf_counter() - t0
    thread.join()
    idle = threading.Event()
    timer = threading.Timer(elapsed, idle.set)
    b0 = time.perf_counter()
    timer.start()
    base = _spin_until(idle)
    base_elapsed = time.perf_counter() - b0
    timer.join()
    return (count / elapsed) / (base / base_elapsed), elapsed
