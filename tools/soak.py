#!/usr/bin/env python3
"""Soak test: many cancel cycles; memory, fds and cancel objects must stay flat.

    python tools/soak.py --cycles 20000          # the full form: each twin in turn
    python tools/soak.py --cycles 2000 --impl c  # one twin
    python tools/soak.py --help

Each cycle is one call of the public API, drawn (with a fixed seed) from a mix:
an idle session (plain, ``require`` or ``verify-full``; ``cancel`` or
``cancel_async``), a running ``pg_sleep`` (cancelled, checked to end with
SQLSTATE 57014), or a black-holed cancel that must raise
``CancellationTimeout``. After a warm-up, it checks: RSS growth below the
limit (5 MB), the same number of open fds at the end as at the start, no
socket towards the server left behind (sampled), nothing registered on the
asyncio loop after any async cycle, and every ``PGcancelConn`` the API made
finished when the call returns. It prints the figures and exits non-zero if a
check fails.

Without ``--impl`` (or with ``--impl both``) each twin runs in its own child
process, one after the other, each with its own throwaway server. The test
suite runs a short form in-process (``tests/reliability/test_soak.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_MAX_GROWTH_MB = 5.0
WEIGHTS = {"idle": 70, "query": 15, "timeout": 15}
TIMEOUT = 0.01
"""Seconds allowed to a black-holed cancel (the cycle's cost)."""


def rss_kb() -> int:
    """The resident set size of this process, in kB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass
class SoakReport:
    twin: str
    cycles: int
    warmup: int
    kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    rss_start_kb: int = 0
    rss_end_kb: int = 0
    rss_max_kb: int = 0
    rss_samples_kb: list[int] = field(default_factory=list)
    fds_start: int = 0
    fds_end: int = 0
    cancel_objects: int = 0
    unfinished: int = 0
    loop_leaks: int = 0
    socket_leaks: int = 0
    errors: list[str] = field(default_factory=list)
    max_growth_kb: int = int(DEFAULT_MAX_GROWTH_MB * 1024)

    @property
    def growth_kb(self) -> int:
        return self.rss_end_kb - self.rss_start_kb

    @property
    def failures(self) -> list[str]:
        out = []
        if self.growth_kb >= self.max_growth_kb:
            out.append(f"RSS grew by {self.growth_kb} kB (limit {self.max_growth_kb} kB)")
        if self.fds_end != self.fds_start:
            out.append(f"open fds {self.fds_start} -> {self.fds_end}")
        if self.unfinished:
            out.append(f"{self.unfinished} cancel objects left unfinished")
        if self.loop_leaks:
            out.append(f"{self.loop_leaks} async cycles left an fd registered on the loop")
        if self.socket_leaks:
            out.append(f"{self.socket_leaks} samples found a socket left towards the server")
        if self.errors:
            out.append(f"{len(self.errors)} unexpected outcomes, first: {self.errors[0]}")
        return out

    @property
    def ok(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        rate = self.cycles / self.seconds if self.seconds else 0.0
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.kinds.items()))
        lines = [
            f"twin {self.twin}: {self.cycles} cycles (+{self.warmup} warm-up) in "
            f"{self.seconds:.1f} s ({rate:.0f}/s)",
            f"  mix: {kinds}",
            f"  RSS: {self.rss_start_kb} kB -> {self.rss_end_kb} kB "
            f"(growth {self.growth_kb:+d} kB, max {self.rss_max_kb} kB, "
            f"limit {self.max_growth_kb} kB)",
            f"  RSS samples (kB): {' '.join(str(s) for s in self.rss_samples_kb)}",
            f"  fds: {self.fds_start} -> {self.fds_end}; sockets left towards the server: "
            f"{self.socket_leaks}; loop registrations left: {self.loop_leaks}",
            f"  cancel objects: {self.cancel_objects} made, {self.unfinished} unfinished",
            f"  unexpected outcomes: {len(self.errors)}",
            f"  result: {'OK' if self.ok else 'FAILED: ' + '; '.join(self.failures)}",
        ]
        return "\n".join(lines)


def run_soak(
    server: Any,
    libpq: Any,
    cycles: int,
    *,
    seed: int = 1,
    warmup: int | None = None,
    max_growth_mb: float = DEFAULT_MAX_GROWTH_MB,
    progress: Callable[[str], None] | None = None,
) -> SoakReport:
    """Run the soak against ``server`` (a ThrowawayServer-like object) in this process."""
    import psycancel
    from psycancel import pq
    from psycancel._engine import plan as _plan
    from testing import client
    from tests.support.fds import loop_fds, sockets_to
    from tests.support.proxy import TcpProxy
    from tests.support.queries import QUERY_CANCELED, drain, wait_until_active

    if warmup is None:
        warmup = min(max(cycles // 10, 50), 1000)
    report = SoakReport(twin=pq.__impl__, cycles=cycles, warmup=warmup)
    report.max_growth_kb = int(max_growth_mb * 1024)
    rng = random.Random(seed)
    say = progress or (lambda _: None)

    # Spy: the cancel object of the current cycle (only one at a time).
    current: list[Any] = []
    original_new = _plan.new_cancel_conn

    def spy(pgconn: Any) -> Any:
        cc = original_new(pgconn)
        current.append(cc)
        return cc

    def connect(dsn: str) -> Any:
        return client.connect(dsn, libpq=libpq)

    px = TcpProxy(server.host, server.port).start()
    sessions: list[Any] = []
    loop = asyncio.new_event_loop()
    try:
        idle = {
            "plain": connect(server.dsn("disable")),
            "require": connect(server.dsn("require")),
            "verify-full": connect(server.dsn("verify-full")),
        }
        victims = {"plain": connect(server.dsn("disable")), "tls": connect(server.dsn("require"))}
        monitor = connect(server.dsn("disable"))
        holes = {
            "plain": connect(px.dsn(server, sslmode="disable")),
            "tls": connect(px.dsn(server, sslmode="require")),
        }
        sessions = [*idle.values(), *victims.values(), monitor, *holes.values()]
        px.blackhole()  # for the connections accepted from now on: the cancels
        server_sockets = sockets_to(server.port)
        hole_sockets = sockets_to(px.port)

        def call(how: str, conn: Any, **kwargs: Any) -> None:
            if how == "sync":
                psycancel.cancel(conn, **kwargs)
                return
            before = loop_fds(loop)
            try:
                loop.run_until_complete(psycancel.cancel_async(conn, **kwargs))
            finally:
                if loop_fds(loop) != before:
                    report.loop_leaks += 1

        def cycle(i: int) -> str:
            kind = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
            how = rng.choice(["sync", "async"])
            if kind == "idle":
                which = rng.choice(list(idle))
                call(how, idle[which], timeout=10)
            elif kind == "query":
                which = rng.choice(list(victims))
                conn = victims[which]
                conn.send_query("select pg_sleep(30)")
                wait_until_active(monitor, conn.backend_pid)
                call(how, conn, timeout=10)
                res = drain(conn)
                if res.sqlstate != QUERY_CANCELED:
                    report.errors.append(f"cycle {i}: query ended with {res.sqlstate}")
            else:
                which = rng.choice(list(holes))
                try:
                    call(how, holes[which], timeout=TIMEOUT)
                except psycancel.CancellationTimeout:
                    pass
                else:
                    report.errors.append(f"cycle {i}: no timeout from the black hole")
            return f"{kind}-{which}-{how}"

        def one(i: int) -> str:
            try:
                name = cycle(i)
            except Exception as ex:
                name = "error"
                report.errors.append(f"cycle {i}: {type(ex).__name__}: {ex}")
            for cc in current:
                report.cancel_objects += 1
                if not cc.closed:
                    report.unfinished += 1
            current.clear()
            return name

        def settle() -> None:
            # Forget the proxy's finished connections (its list would grow) and
            # wait until the black hole has seen every cancel socket close.
            deadline = time.monotonic() + 10
            while px.active_connections > len(holes) and time.monotonic() < deadline:
                time.sleep(0.01)
            with px._lock:
                px._connections = [c for c in px._connections if c.active]

        _plan.new_cancel_conn = spy
        for i in range(warmup):
            one(-1 - i)
        settle()
        gc.collect()
        report.cancel_objects = report.unfinished = 0
        report.rss_start_kb = report.rss_max_kb = rss_kb()
        report.fds_start = fd_count()
        sample_every = max(cycles // 20, 1)
        kinds: Counter[str] = Counter()
        t0 = time.monotonic()
        for i in range(cycles):
            kinds[one(i).split("-")[0]] += 1
            if (i + 1) % 100 == 0:
                settle()
                if sockets_to(server.port) != server_sockets or sockets_to(px.port) != hole_sockets:
                    report.socket_leaks += 1
            if (i + 1) % sample_every == 0:
                rss = rss_kb()
                report.rss_max_kb = max(report.rss_max_kb, rss)
                report.rss_samples_kb.append(rss)
                say(f"[{report.twin}] {i + 1}/{cycles} cycles, RSS {rss} kB")
        report.seconds = time.monotonic() - t0
        settle()
        gc.collect()
        report.rss_end_kb = rss_kb()
        report.rss_max_kb = max(report.rss_max_kb, report.rss_end_kb)
        report.fds_end = fd_count()
        report.kinds = dict(kinds)
    finally:
        _plan.new_cancel_conn = original_new
        loop.close()
        for conn in sessions:
            conn.finish()
        px.close()
    return report


def _run_one(cycles: int, seed: int, max_growth_mb: float, json_out: str | None) -> int:
    from psycancel.pq import Libpq
    from testing import ThrowawayServer, find_postgres_prefix

    with ThrowawayServer(find_postgres_prefix()) as server:
        path = os.environ.get("PSYCANCEL_LIBPQ") or str(server.libpq_path)
        libpq = Libpq.load(path)
        report = run_soak(
            server, libpq, cycles, seed=seed, max_growth_mb=max_growth_mb,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )  # fmt: skip
    print(report.summary(), flush=True)
    if json_out:
        data = asdict(report)
        data.update(growth_kb=report.growth_kb, ok=report.ok, failures=report.failures)
        Path(json_out).write_text(json.dumps(data, indent=2))
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000, help="cycles per twin (2000)")
    parser.add_argument(
        "--impl", choices=["both", "c", "python"], default="both",
        help="which twin (default: both, each in a child process)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-growth-mb", type=float, default=DEFAULT_MAX_GROWTH_MB)
    parser.add_argument("--json", metavar="FILE", help="write the figures as JSON")
    args = parser.parse_args(argv)
    if args.impl != "both":
        os.environ["PSYCANCEL_IMPL"] = args.impl
        return _run_one(args.cycles, args.seed, args.max_growth_mb, args.json)
    status = 0
    results = {}
    for impl in ("c", "python"):
        out = Path(f"/tmp/psycancel-soak-{os.getpid()}-{impl}.json")
        cmd = [
            sys.executable, __file__, "--impl", impl, "--cycles", str(args.cycles),
            "--seed", str(args.seed), "--max-growth-mb", str(args.max_growth_mb),
            "--json", str(out),
        ]  # fmt: skip
        print(f"== PSYCANCEL_IMPL={impl}", flush=True)
        proc = subprocess.run(cmd, env=dict(os.environ, PSYCANCEL_IMPL=impl), check=False)
        status = status or proc.returncode
        if out.exists():
            results[impl] = json.loads(out.read_text())
            out.unlink()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return status


if __name__ == "__main__":
    sys.exit(main())
