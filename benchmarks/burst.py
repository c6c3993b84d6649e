"""A burst of concurrent TLS cancels of running queries: psycancel's engine niceness vs psycopg.

    python benchmarks/burst.py              # --repeat 5: the table (about a minute)
    python benchmarks/burst.py --quick      # smoke form for CI: correctness only

Each contender is a child process of this script (``--worker``) holding N
psycopg ``AsyncConnection``s (TLS) to one throwaway PostgreSQL 18 on
loopback. On each round, every contender in turn (a new random order per
round, the others idle) starts ``select pg_sleep(30)`` on its N connections,
waits until the server shows all N active (``pg_stat_activity``), and then
cancels them all at once from asyncio:

* ``psycancel nice=<n>``: ``psycancel.cancel_async(conn)`` (the default
  offload rule: a TLS cancel goes to the compiled twin's engine thread),
  the engine thread started under ``PSYCANCEL_OFFLOAD_NICE=<n>`` (read when
  that thread starts: hence a process per value);
* ``psycancel batch``: the same at the process's priority, with the engine
  thread's scheduling policy set to ``SCHED_BATCH`` after it started (an
  alternative to niceness: no wake-up preemption of the loop thread, a fair
  share of CPU);
* ``psycopg cancel_safe``: ``await conn.cancel_safe()``.

Figures per contender and round: the burst's completion time (every cancel
call returned), the largest gap between ticks of a busy coroutine meanwhile
(``_common.Ticker``; the busy coroutine keeps the loop thread on a CPU, as a
loaded service does), and the time until every query had ended; then the
same burst again with an idle loop (completion time only). Every query must
end with SQLSTATE 57014, every round (``--quick`` checks only that).
Reported: medians over the rounds and their ratios to psycopg's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import ROOT, Ticker, environment, median, peer_libpq_path  # noqa: E402

SLEEP_SQL = "select pg_sleep(30)"
QUERY_CANCELED = "57014"
ACTIVE_TIMEOUT = 30.0
"""Seconds the N queries may take to show up active before the round fails."""
QUIET = 0.2
"""Seconds of nothing between "all active" and the burst (the server settles)."""
PSYCOPG = "psycopg cancel_safe"
ENGINE_THREAD = "psycancel-offload-engine"


def label(key: str) -> str:
    """The table's name of a contender key (``nice=<n>``, ``batch``, ``psycopg``)."""
    return PSYCOPG if key == "psycopg" else f"psycancel {key}"


# ====================================================================== the worker


def _engine_thread() -> threading.Thread | None:
    return next((t for t in threading.enumerate() if t.name == ENGINE_THREAD), None)


def engine_scheduling() -> dict[str, Any]:
    """The engine thread's niceness and policy as the kernel reports them (or Nones)."""
    thread = _engine_thread()
    if thread is None or thread.native_id is None:
        return {"nice": None, "policy": None}
    tid = thread.native_id
    policy = os.sched_getscheduler(tid)
    names = {os.SCHED_OTHER: "other", os.SCHED_BATCH: "batch", os.SCHED_IDLE: "idle"}
    return {"nice": os.getpriority(os.PRIO_PROCESS, tid), "policy": names.get(policy, policy)}


async def _count_active(monitor: Any, pids: list[int]) -> int:
    cur = await monitor.execute(
        "select count(*) from pg_stat_activity where wait_event = 'PgSleep' and pid = any(%s)",
        [pids],
    )
    row = await cur.fetchone()
    return int(row[0])


async def worker(key: str, dsn: str, n: int) -> None:
    """One contender: N connections; ``burst busy|idle`` on stdin, one JSON line out."""
    import psycopg

    import psycancel

    conns = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(n)]
    monitor = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    pids = [c.info.backend_pid for c in conns]

    async def cancel(conn: Any) -> None:
        if key == "psycopg":
            await conn.cancel_safe()
        else:
            await psycancel.cancel_async(conn)

    # Warm up: the engine thread starts (under its niceness), libpq and TLS are loaded.
    await cancel(conns[0])
    if key == "batch":
        thread = _engine_thread()
        assert thread is not None and thread.native_id is not None
        os.sched_setscheduler(thread.native_id, os.SCHED_BATCH, os.sched_param(0))
    info = {"pid": os.getpid(), "process_nice": os.getpriority(os.PRIO_PROCESS, 0)}
    info |= engine_scheduling()
    print("ready " + json.dumps(info), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] != "burst":
            break
        busy = line[1] == "busy"
        queries = [asyncio.ensure_future(c.execute(SLEEP_SQL)) for c in conns]
        deadline = time.monotonic() + ACTIVE_TIMEOUT
        while (active := await _count_active(monitor, pids)) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {active} of {n} queries became active")
            await asyncio.sleep(0.005)
        await asyncio.sleep(QUIET)
        ticker = Ticker()
        if busy:
            async with ticker:  # ticking from here on
                t0 = time.perf_counter()
                await asyncio.gather(*(cancel(c) for c in conns))
                completion = time.perf_counter() - t0
        else:
            t0 = time.perf_counter()
            await asyncio.gather(*(cancel(c) for c in conns))
            completion = time.perf_counter() - t0
        outcomes = await asyncio.gather(*queries, return_exceptions=True)
        ended = time.perf_counter() - t0
        codes = [getattr(o, "sqlstate", None) or repr(o) for o in outcomes]
        result = {
            "completion_ms": 1000 * completion,
            "ended_ms": 1000 * ended,
            "stall_ms": 1000 * ticker.max_gap if busy else None,
            "canceled": sum(c == QUERY_CANCELED for c in codes),
            "other": sorted({c for c in codes if c != QUERY_CANCELED}),
        }
        print(json.dumps(result), flush=True)
    for c in [*conns, monitor]:
        await c.close()


# ====================================================================== the coordinator


class Contender:
    """A worker process: one contender's connections, driven over a pipe."""

    def __init__(self, key: str, dsn: str, n: int) -> None:
        env = dict(os.environ)
        env.pop("PSYCANCEL_OFFLOAD_NICE", None)
        if key.startswith("nice="):
            env["PSYCANCEL_OFFLOAD_NICE"] = key.split("=", 1)[1]
        elif key == "batch":
            env["PSYCANCEL_OFFLOAD_NICE"] = "0"
        self.key = key
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", key, "--dsn", dsn],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**env, "PSYCANCEL_BURST_N": str(n)},
            cwd=ROOT,
        )
        assert self.proc.stdout is not None
        ready = self.proc.stdout.readline()
        if not ready.startswith("ready "):
            raise RuntimeError(f"worker {key} did not start: {ready!r}")
        self.info: dict[str, Any] = json.loads(ready[6:])

    def burst(self, busy: bool) -> dict[str, Any]:
        """One burst (queries started, seen active, cancelled): the worker's figures."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"burst {'busy' if busy else 'idle'}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.key} ended (exit {self.proc.wait()})")
        return dict(json.loads(line))

    def close(self) -> None:
        """Ask the worker to close its connections and end."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bench(dsn: str, keys: list[str], n: int, repeat: int) -> dict[str, Any]:
    """Every contender, ``repeat`` rounds in a new random order each: raw figures."""
    contenders = [Contender(k, dsn, n) for k in keys]
    raw: dict[str, list[dict[str, Any]]] = {k: [] for k in keys}
    try:
        shuffle = random.Random("burst").shuffle
        for r in range(repeat):
            order = list(contenders)
            shuffle(order)
            for c in order:
                busy = c.burst(busy=True)
                idle = c.burst(busy=False)
                raw[c.key].append({"busy": busy, "idle": idle})
                print(
                    f"  round {r + 1}/{repeat} {label(c.key)}: "
                    f"{busy['completion_ms']:.0f} ms, stall {busy['stall_ms']:.1f} ms, "
                    f"idle loop {idle['completion_ms']:.0f} ms",
                    file=sys.stderr,
                )
    finally:
        for c in contenders:
            c.close()
    return {"raw": raw, "workers": {c.key: c.info for c in contenders}}


def summarize(raw: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Medians per contender over the rounds."""
    out = {}
    for key, rounds in raw.items():
        out[key] = {
            "completion_ms": median([r["busy"]["completion_ms"] for r in rounds]),
            "stall_ms": median([r["busy"]["stall_ms"] for r in rounds]),
            "ended_ms": median([r["busy"]["ended_ms"] for r in rounds]),
            "idle_completion_ms": median([r["idle"]["completion_ms"] for r in rounds]),
            "worst_completion_ms": max(r["busy"]["completion_ms"] for r in rounds),
            "worst_stall_ms": max(r["busy"]["stall_ms"] for r in rounds),
        }
    return out


def problems(raw: dict[str, list[dict[str, Any]]], n: int) -> list[str]:
    """Correctness (what --quick checks): every query of every burst ended with 57014."""
    out = []
    for key, rounds in raw.items():
        for i, r in enumerate(rounds):
            for kind in ("busy", "idle"):
                res = r[kind]
                if res["canceled"] != n:
                    out.append(
                        f"{label(key)} round {i + 1} ({kind} loop): {res['canceled']} of {n} "
                        f"queries ended with {QUERY_CANCELED}; others: {res['other']}"
                    )
    return out


def report(results: dict[str, Any]) -> str:
    """The Markdown table and the verdict on the targets, per contender."""
    med = results["medians"]
    ref = med["psycopg"]
    rows = [
        "| contender | engine thread | completion (busy loop) | vs psycopg | loop stall | "
        "vs psycopg | worst round: completion / stall | all queries ended | "
        "completion (idle loop) | vs psycopg | targets: completion <= 1.05x, stall <= 0.5x |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in med.items():
        info = results["workers"][key]
        engine = "-" if key == "psycopg" else f"nice {info['nice']}, {info['policy']}"
        rc = s["completion_ms"] / ref["completion_ms"]
        rs = s["stall_ms"] / ref["stall_ms"]
        ri = s["idle_completion_ms"] / ref["idle_completion_ms"]
        verdict = (
            "-"
            if key == "psycopg"
            else f"{'met' if rc <= 1.05 else 'MISSED'} / {'met' if rs <= 0.5 else 'MISSED'}"
        )
        rows.append(
            f"| {label(key)} | {engine} | {s['completion_ms']:.0f} ms | {rc:.2f}x | "
            f"{s['stall_ms']:.1f} ms | {rs:.2f}x | {s['worst_completion_ms']:.0f} / "
            f"{s['worst_stall_ms']:.1f} ms | {s['ended_ms']:.0f} ms | "
            f"{s['idle_completion_ms']:.0f} ms | {ri:.2f}x | {verdict} |"
        )
    return "\n".join(rows)


def main() -> int:
    """Run the benchmark (or, with --worker, be one contender)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke form (CI): correctness only")
    parser.add_argument("--repeat", type=int, default=5, help="rounds (medians over them)")
    parser.add_argument("--n", type=int, default=50, help="concurrent cancels per burst")
    parser.add_argument("--nice", default="0,5,10,19", help="engine niceness values to compare")
    parser.add_argument("--no-batch", action="store_true", help="leave out the SCHED_BATCH row")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args()
    if args.worker:
        n = int(os.environ["PSYCANCEL_BURST_N"])
        asyncio.run(worker(args.worker, args.dsn, n))
        return 0
    n = 5 if args.quick else args.n
    repeat = 1 if args.quick else args.repeat
    nices = ["0"] if args.quick else [v for v in args.nice.split(",") if v]
    keys = [f"nice={v}" for v in nices]
    if not args.quick and not args.no_batch:
        keys.append("batch")
    keys.append("psycopg")
    t0 = time.monotonic()
    load_before = os.getloadavg()
    with environment() as env:
        dsn = env.server.dsn("require")
        need = (n + 1) * len(keys) + 20
        if need > 190:
            import psycopg

            with psycopg.connect(env.server.dsn("disable"), autocommit=True) as c:
                c.execute(f"alter system set max_connections = {need + 50}")
            env.server.restart()
        libpq = peer_libpq_path(env.server.dsn("disable"))
        ran = bench(dsn, keys, n, repeat)
    results: dict[str, Any] = {
        **ran,
        "medians": summarize(ran["raw"]),
        "n": n,
        "repeat": repeat,
        "libpq": libpq,
        "seconds": time.monotonic() - t0,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"\n{n} concurrent TLS cancels of running queries, medians of {repeat} rounds\n")
    if args.quick:
        print("(--quick: a correctness check; its figures and verdicts mean nothing)\n")
    print(report(results))
    print(
        f"\n(ran in {results['seconds']:.0f} s; load average {load_before[0]:.2f} before, "
        f"{results['machine']['loadavg_after'][0]:.2f} after; libpq {libpq})"
    )
    found = problems(ran["raw"], n)
    for p in found:
        print(f"PROBLEM: {p}", file=sys.stderr)
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=1))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
