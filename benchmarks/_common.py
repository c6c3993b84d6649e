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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from testing import ThrowawayServer, find_postgres_prefix  # noqa: E402


@dataclass
class Env:
    """The server and libpqs every benchmark uses."""

    server: ThrowawayServer
    libpq_path: str
    legacy_libpq_path: str


def openssl_of(libpq_path: str) -> str:
    """The OpenSSL version a libpq file is linked with (from ``ldd``), or "?"."""
    import ctypes

    try:
        out = subprocess.run(["ldd", libpq_path], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "?"
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0].startswith("libcrypto") and "=>" in parts:
            lib = ctypes.CDLL(parts[parts.index("=>") + 1])
            lib.OpenSSL_version.restype = ctypes.c_char_p
            return str(lib.OpenSSL_version(0).decode())
    return "?"


def peer_libpq_path(dsn: str) -> str:
    """The libpq that psycopg (binary) uses: the same libpq and OpenSSL for both."""
    import psycopg

    from psycancel._drivers.resolve import as_pgconn

    with psycopg.connect(dsn) as conn:
        return as_pgconn(conn).libpq.path


@contextlib.contextmanager
def environment() -> Iterator[Env]:
    """A throwaway TLS server, its libpq 18 and the system's legacy libpq."""
    from psycancel.pq.libfind import system_libpq_path

    legacy = os.environ.get("PSYCANCEL_TEST_LEGACY_LIBPQ") or system_libpq_path() or ""
    with ThrowawayServer(find_postgres_prefix()) as server:
        yield Env(server, str(server.libpq_path), legacy)


@contextlib.contextmanager
def proxy_process(env: Env, delay: float) -> Iterator[int]:
    """A delaying TCP proxy in a child process (so it never needs our GIL)."""
    code = (
        "import sys, time\n"
        "from tests.support.proxy import TcpProxy\n"
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


_OTHER_PROCESS_CANCELS = {
    # n concurrent new-API cancels (TLS if the dsn says so), psycopg in asyncio.
    "psycopg": """
import asyncio, sys
import psycopg

async def main() -> None:
    dsn, pool = sys.argv[1], int(sys.argv[2])
    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(pool)]
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        await asyncio.gather(*(conns[i % pool].cancel_safe() for i in range(n)))
        print("done", flush=True)

asyncio.run(main())
""",
    # n concurrent legacy cancels, psycopg2 in threads.
    "psycopg2": """
import sys
from concurrent.futures import ThreadPoolExecutor
import psycopg2

dsn, pool = sys.argv[1], int(sys.argv[2])
conns = [psycopg2.connect(dsn) for _ in range(pool)]
with ThreadPoolExecutor(pool) as ex:
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        list(ex.map(lambda i: conns[i % pool].cancel(), range(n)))
        print("done", flush=True)
""",
}


@contextlib.asynccontextmanager
async def other_process_cancels(
    dsn: str, pool: int, driver: str = "psycopg"
) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """``run(n)``: n concurrent cancels in a child process (``driver``: see above).

    The loop that awaits ``run(n)`` only waits on a pipe: the stall it sees
    is what the machine imposes (CPU taken by the cancels and the server),
    the floor for any in-process design.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _OTHER_PROCESS_CANCELS[driver],
        dsn,
        str(pool),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    assert (await stdout.readline()).strip() == b"ready"

    async def run(n: int) -> None:
        stdin.write(f"{n}\n".encode())
        await stdin.drain()
        assert (await stdout.readline()).strip() == b"done"

    try:
        yield run
    finally:
        stdin.close()
        await proc.wait()


def _descendants(pid: int) -> list[int]:
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        out.append(int(child))
        out.extend(_descendants(int(child)))
    return out


def _set_affinity(pid: int, cpus: set[int]) -> None:
    """All threads of process ``pid`` (gone processes are ignored)."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), cpus)


@contextlib.contextmanager
def pinned(env: Env, enabled: bool = True) -> Iterator[None]:
    """The calling (loop) thread alone on one CPU; everything else on the others.

    "Everything else": the server's processes (and the backends it forks
    meanwhile, which inherit the postmaster's affinity), every other thread
    of this process (offload threads, executors) and this process's
    children. So the loop thread is never preempted by the work it waits
    for, as on a machine with a spare core and a remote server.
    """
    if not enabled:
        yield
        return
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        raise RuntimeError("pinning needs at least 2 CPUs")
    loop_cpu = min(cpus)
    rest = cpus - {loop_cpu}
    postmaster = int((env.server.data_dir / "postmaster.pid").read_text().split()[0])
    others = [postmaster, *_descendants(postmaster), *_descendants(os.getpid())]
    me = threading.get_native_id()
    try:
        for pid in others:
            _set_affinity(pid, rest)
        for tid in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(tid), {loop_cpu} if int(tid) == me else rest)
        yield
    finally:
        for pid in [postmaster, *_descendants(postmaster), os.getpid(), *_descendants(os.getpid())]:
            _set_affinity(pid, cpus)


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
