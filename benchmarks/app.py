"""What a service feels: /fast latency while a burst of /slow queries is cancelled.

    python benchmarks/app.py            # the table (a few minutes); writes app.json, app.png
    python benchmarks/app.py --quick    # smoke form for CI: correctness only, no timing checks

Two processes besides the throwaway PostgreSQL 18 (TLS, loopback):

* **the service** (``app.py --serve``, started by this script): one aiohttp
  worker, a connection pool per contender (psycopg ``AsyncConnectionPool``;
  asyncpg's own pool for asyncpg), endpoints ``/fast`` (``select 1``) and
  ``/slow`` (``select pg_sleep(10)`` under a client-side deadline of 100 ms:
  on expiry the query is cancelled, the handler waits for the query's end
  and the connection goes back to the pool);
* **the load generator** (this process): an open-loop stream of ``/fast``
  requests at a fixed rate (latency measured from each request's *intended*
  send time, so a stalled service cannot hide it) and, after a quiet
  stretch, a burst of N concurrent ``/slow`` requests.

Contenders (one pool at a time, interleaved in rounds in a new random order):
``psycancel.cancel_async`` (default offload rule), ``psycancel.cancel_after``,
psycopg ``cancel_safe``, asyncpg ``fetch(..., timeout=)``, no cancel (the
connection is closed, as aiopg does: the server query keeps running), and two
references: the server-side ``pg_cancel_backend`` from a connection of the
service, and a floor (the same burst of queries that end by themselves at
100 ms: no cancel at all, only the burst's own request handling).

The pool holds N + 8 connections, so /fast never waits for a connection: what
it feels is the work the burst and its cancels put on the loop and the CPUs.
Figures per contender: /fast p50/p99/max during the burst (from its start
until the pool is whole again) vs the quiet stretch just before (same load,
no burst); the time until the pool is whole again (every connection idle in
the pool, reconnected ones included); slow queries still running on the
server afterwards (pg_stat_activity); unexpected 57014 on /fast.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

DEADLINE = 0.100
"""The /slow endpoint's client-side deadline (seconds)."""
SLOW_SQL = "select pg_sleep(10)"
FLOOR_SQL = "select pg_sleep(0.1)"
FAST_HEADROOM = 8
"""Pool connections beyond the burst's N: /fast never waits for a connection."""
SLOW_QUERY_LIKE = "select pg_sleep(10)"

CONTENDERS = {
    "psycancel": "psycancel cancel_async",
    "cancel_after": "psycancel cancel_after",
    "cancel_safe": "psycopg cancel_safe",
    "asyncpg": "asyncpg fetch(timeout=)",
    "close": "no cancel: close (aiopg)",
    "pg_cancel_backend": "ref: server pg_cancel_backend",
    "floor": "ref: floor, no cancel needed",
}
"""Key (as the service knows it) -> label in the tables."""

EXPECTED_OUTCOME = {
    "psycancel": "canceled",
    "cancel_after": "canceled",
    "cancel_safe": "canceled",
    "asyncpg": "canceled",
    "close": "closed",
    "pg_cancel_backend": "canceled",
    "floor": "finished",
}


# ====================================================================== the service


def serve(port_file: str | None) -> None:
    """The service process: aiohttp on loopback, one pool at a time (see /setup)."""
    import asyncpg
    import psycopg
    from aiohttp import web
    from psycopg_pool import AsyncConnectionPool

    import psycancel

    # The pool's "discarding closed connection" is the no-cancel contender's normal.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    state: dict[str, Any] = {"key": None, "pool": None, "admin": None, "size": 0}
    counters = {"slow_done": 0, "fast_57014": 0}
    profiler: Any = None

    async def close_current() -> None:
        pool, admin = state["pool"], state["admin"]
        state.update(key=None, pool=None, admin=None)
        if pool is not None:
            await pool.close()
        if admin is not None:
            await admin.close()

    async def setup(request: web.Request) -> web.Response:
        q = request.query
        await close_current()
        key, size, dsn, url = q["c"], int(q["size"]), q["dsn"], q["url"]
        if key == "asyncpg":
            pool: Any = await asyncpg.create_pool(url, min_size=size, max_size=size)
        else:
            pool = AsyncConnectionPool(
                dsn,
                min_size=size,
                max_size=size,
                kwargs={"autocommit": True},
                open=False,
                num_workers=4,
            )
            await pool.open(wait=True, timeout=120)
        if key == "pg_cancel_backend":
            state["admin"] = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        state.update(key=key, pool=pool, size=size)
        counters.update(slow_done=0, fast_57014=0)
        return web.json_response({"ok": True})

    def pool_whole() -> bool:
        pool, size = state["pool"], state["size"]
        if state["key"] == "asyncpg":
            return bool(pool.get_size() == size and pool.get_idle_size() == size)
        stats = pool.get_stats()
        return bool(stats["pool_size"] == size and stats["pool_available"] == size)

    async def fast(request: web.Request) -> web.Response:
        pool = state["pool"]
        try:
            if state["key"] == "asyncpg":
                async with pool.acquire() as conn:
                    await conn.fetchval("select 1")
            else:
                async with pool.connection() as conn:
                    cur = await conn.execute("select 1")
                    await cur.fetchone()
        except (psycopg.errors.QueryCanceled, asyncpg.exceptions.QueryCanceledError):
            counters["fast_57014"] += 1
            return web.Response(text="57014")
        return web.Response(text="ok")

    async def cancel_psycancel(conn: Any) -> None:
        await psycancel.cancel_async(conn)

    async def cancel_safe(conn: Any) -> None:
        await conn.cancel_safe()

    async def cancel_server(conn: Any) -> None:
        await state["admin"].execute("select pg_cancel_backend(%s)", [conn.info.backend_pid])

    async def close_it(conn: Any) -> None:
        await conn.close()  # no cancel request: the server query runs on

    cancellers: dict[str, Callable[[Any], Awaitable[None]]] = {
        "psycancel": cancel_psycancel,
        "cancel_safe": cancel_safe,
        "pg_cancel_backend": cancel_server,
        "close": close_it,
    }

    async def slow_psycopg(key: str) -> str:
        async with state["pool"].connection() as conn:
            if key == "floor":
                await conn.execute(FLOOR_SQL)
                return "finished"
            if key == "cancel_after":
                try:
                    async with psycancel.cancel_after(conn, DEADLINE):
                        await conn.execute(SLOW_SQL)
                except psycancel.QueryTimeout:
                    return "canceled"
                return "finished"
            task = asyncio.ensure_future(conn.execute(SLOW_SQL))
            done, _ = await asyncio.wait({task}, timeout=DEADLINE)
            if not done:
                await cancellers[key](conn)
                if key == "close":
                    # The task waits on a socket that is gone: end it (psycopg
                    # sends no cancel for a closed connection).
                    task.cancel()
            try:
                await task
            except psycopg.errors.QueryCanceled:
                return "canceled"
            except (psycopg.OperationalError, asyncio.CancelledError):
                return "closed"
            return "finished"

    async def slow_asyncpg() -> str:
        async with state["pool"].acquire() as conn:
            try:
                await conn.fetch(SLOW_SQL, timeout=DEADLINE)
            except asyncio.TimeoutError:
                return "canceled"
            return "finished"

    async def slow(request: web.Request) -> web.Response:
        key = state["key"]
        try:
            outcome = await (slow_asyncpg() if key == "asyncpg" else slow_psycopg(key))
        except Exception as ex:
            outcome = f"error: {type(ex).__name__}: {ex}"
        counters["slow_done"] += 1
        return web.Response(text=outcome)

    async def whole(request: web.Request) -> web.Response:
        """Wait for n /slow requests to be done, then for the pool to be whole."""
        n = int(request.query["n"])
        while counters["slow_done"] < n:
            await asyncio.sleep(0.002)
        while not pool_whole():
            await asyncio.sleep(0.002)
        return web.json_response({"t": time.monotonic(), **counters})

    async def profile(request: web.Request) -> web.Response:
        nonlocal profiler
        if request.query.get("stop"):
            profiler.stop()
            text = profiler.output_text(unicode=False, color=False, show_all=False)
            profiler = None
            return web.Response(text=text)
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")
        profiler.start()
        return web.Response(text="ok")

    async def shutdown(request: web.Request) -> web.Response:
        await close_current()
        asyncio.get_running_loop().call_later(0.05, stop.set)
        return web.Response(text="bye")

    stop = asyncio.Event()

    async def main() -> None:
        app = web.Application()
        app.add_routes(
            [
                web.get("/fast", fast),
                web.get("/slow", slow),
                web.get("/whole", whole),
                web.post("/setup", setup),
                web.post("/profile", profile),
                web.post("/shutdown", shutdown),
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        print(port, flush=True)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())


# ====================================================================== the load generator


class Http:
    """A keep-alive HTTP/1.1 client connection (minimal: what aiohttp answers)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> Http:
        """A new connection to the service."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str) -> tuple[int, str]:
        """Send one request, read its response: (status, body)."""
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: s\r\nContent-Length: 0\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = 0
        for line in lines[1:]:
            if line.lower().startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        body = await self.reader.readexactly(length)
        return status, body.decode()

    def close(self) -> None:
        """Close the connection."""
        self.writer.close()


@dataclass
class Turn:
    """What one burst with one contender measured."""

    quiet: list[float] = field(default_factory=list)
    burst: list[float] = field(default_factory=list)
    whole_ms: float = 0.0
    burst_ms: float = 0.0
    still_running: int = 0
    fast_57014: int = 0
    fast_errors: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


class FastStream:
    """Open-loop /fast requests at ``rate`` per second; latency from the intended time."""

    def __init__(self, port: int, rate: float) -> None:
        self.port, self.period = port, 1.0 / rate
        self.samples: list[tuple[float, float, str]] = []
        self._idle: list[Http] = []
        self._all: list[Http] = []
        self._stop = False
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self, connections: int = 16) -> None:
        """Open the connections before measuring."""
        for _ in range(connections):
            c = await Http.open(self.port)
            self._idle.append(c)
            self._all.append(c)

    async def _one(self, conn: Http, intended: float) -> None:
        try:
            _, body = await conn.request("GET", "/fast")
        except Exception as ex:
            body = f"error: {ex}"
        self.samples.append((intended, time.monotonic() - intended, body))
        self._idle.append(conn)

    async def run(self) -> None:
        """Issue requests until :meth:`stop`."""
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        i = 0
        while not self._stop:
            i += 1
            intended = t0 + i * self.period
            delay = intended - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._idle:
                conn = self._idle.pop()
            else:
                conn = await Http.open(self.port)
                self._all.append(conn)
            task = loop.create_task(self._one(conn, intended))
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)

    async def stop(self) -> None:
        """Stop issuing, wait for the requests in flight, close."""
        self._stop = True
        if self._inflight:
            await asyncio.wait(set(self._inflight))
        for c in self._all:
            c.close()


def pct(values: list[float], q: float) -> float:
    """The q-quantile (nearest rank) of ``values``."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * len(s) + 0.5) - 1))]


def slow_queries_running(admin: Any) -> int:
    """How many /slow queries the server is still running."""
    row = admin.execute(
        "select count(*) from pg_stat_activity where state = 'active' and query = %s",
        [SLOW_QUERY_LIKE],
    ).fetchone()
    return int(row[0])


def end_slow_queries(admin: Any) -> None:
    """Terminate what the no-cancel contender left running (frees the server's slots)."""
    admin.execute(
        "select pg_terminate_backend(pid) from pg_stat_activity "
        "where state = 'active' and query = %s",
        [SLOW_QUERY_LIKE],
    )
    for _ in range(500):
        if not slow_queries_running(admin):
            return
        time.sleep(0.01)


async def run_turn(
    port: int,
    key: str,
    n: int,
    dsn: str,
    url: str,
    admin: Any,
    rate: float,
    quiet: float,
) -> Turn:
    """One contender, one burst of ``n`` /slow requests during a steady /fast stream."""
    from urllib.parse import quote

    ctl = await Http.open(port)
    status, body = await ctl.request(
        "POST", f"/setup?c={key}&size={n + FAST_HEADROOM}&dsn={quote(dsn)}&url={quote(url)}"
    )
    assert status == 200, body
    slow_conns = [await Http.open(port) for _ in range(n)]
    whole_conn = await Http.open(port)
    stream = FastStream(port, rate)
    await stream.start()
    runner = asyncio.get_running_loop().create_task(stream.run())
    await asyncio.sleep(0.2)  # warm up
    t_quiet = time.monotonic()
    await asyncio.sleep(quiet)
    t_burst = time.monotonic()
    slow = [asyncio.ensure_future(c.request("GET", "/slow")) for c in slow_conns]
    whole = asyncio.ensure_future(whole_conn.request("GET", f"/whole?n={n}"))
    responses = await asyncio.gather(*slow)
    t_last_slow = time.monotonic()
    _, wbody = await whole
    w = json.loads(wbody)
    t_end = max(w["t"], t_last_slow)
    await asyncio.sleep(0.05)
    await stream.stop()
    runner.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    turn = Turn(whole_ms=1000 * (w["t"] - t_burst), burst_ms=1000 * (t_end - t_burst))
    for intended, latency, fbody in stream.samples:
        if fbody == "57014":
            turn.fast_57014 += 1
        elif fbody != "ok":
            turn.fast_errors += 1
        if t_quiet <= intended < t_burst:
            turn.quiet.append(1000 * latency)
        elif t_burst <= intended <= t_end:
            turn.burst.append(1000 * latency)
    for _, text in responses:
        turn.outcomes[text] = turn.outcomes.get(text, 0) + 1
    turn.still_running = slow_queries_running(admin)
    if turn.still_running:
        end_slow_queries(admin)
    for c in [*slow_conns, whole_conn, ctl]:
        c.close()
    return turn


def asyncpg_url(host: str, port: int, sslmode: str) -> str:
    """The asyncpg form of the throwaway server's conninfo."""
    return f"postgresql://postgres@{host}:{port}/postgres?sslmode={sslmode}"


def summarize(turns: list[Turn]) -> dict[str, Any]:
    """Medians over the repetitions of one (mode, N, contender)."""

    def med(f: Callable[[Turn], float]) -> float:
        return statistics.median(f(t) for t in turns)

    return {
        "quiet_p50": med(lambda t: pct(t.quiet, 0.50)),
        "quiet_p99": med(lambda t: pct(t.quiet, 0.99)),
        "quiet_max": med(lambda t: max(t.quiet, default=float("nan"))),
        "burst_p50": med(lambda t: pct(t.burst, 0.50)),
        "burst_p99": med(lambda t: pct(t.burst, 0.99)),
        "burst_max": med(lambda t: max(t.burst, default=float("nan"))),
        "ratio_p99": med(lambda t: pct(t.burst, 0.99) / pct(t.quiet, 0.99)),
        "whole_ms": med(lambda t: t.whole_ms),
        "burst_ms": med(lambda t: t.burst_ms),
        "still_running": max(t.still_running for t in turns),
        "fast_57014": sum(t.fast_57014 for t in turns),
        "fast_errors": sum(t.fast_errors for t in turns),
        "samples": sum(len(t.burst) for t in turns),
        "outcomes": {
            k: sum(t.outcomes.get(k, 0) for t in turns) for t in turns for k in t.outcomes
        },
        "repeat": len(turns),
    }


def check(key: str, n: int, s: dict[str, Any]) -> list[str]:
    """Correctness of one summary (what --quick asserts): a list of problems."""
    problems = []
    expected = EXPECTED_OUTCOME[key]
    if set(s["outcomes"]) != {expected}:
        problems.append(f"/slow outcomes {s['outcomes']}, expected all {expected!r}")
    if s["fast_57014"]:
        problems.append(f"{s['fast_57014']} unexpected 57014 on /fast")
    if s["fast_errors"]:
        problems.append(f"{s['fast_errors']} /fast errors")
    if key != "close" and s["still_running"]:
        problems.append(f"{s['still_running']} slow queries still running on the server")
    # No cancel: the server runs the queries on; unless the pool could not refill
    # before they ended (their backends held the server's slots: max_connections).
    if key == "close" and s["still_running"] != n and s["whole_ms"] < 1000 * 10:
        problems.append(f"no cancel: {s['still_running']} slow queries left running, not {n}")
    return problems


async def bench(
    env: Any,
    keys: list[str],
    sizes: list[int],
    modes: list[str],
    repeat: int,
    rate: float,
    quiet: float,
    profile: str | None,
) -> dict[str, Any]:
    """Start the service, run every turn, return the summaries."""
    import psycopg

    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    server = env.server
    raw: dict[str, dict[int, dict[str, list[Turn]]]] = {}
    try:
        admin = psycopg.connect(server.dsn("disable"), autocommit=True)
        for mode in modes:
            sslmode = "require" if mode == "TLS" else "disable"
            dsn = server.dsn(sslmode)
            url = asyncpg_url(server.host, server.port, sslmode)
            raw[mode] = {}
            for n in sizes:
                raw[mode][n] = {k: [] for k in keys}
                shuffle = random.Random(f"{mode}-{n}").shuffle
                for r in range(repeat):
                    order = list(keys)
                    shuffle(order)
                    for key in order:
                        print(f"  {mode} N={n} round {r + 1}/{repeat}: {key}", file=sys.stderr)
                        if profile == key:
                            ctl = await Http.open(port)
                            await ctl.request("POST", "/profile")
                        turn = await run_turn(port, key, n, dsn, url, admin, rate, quiet)
                        if profile == key:
                            _, text = await ctl.request("POST", "/profile?stop=1")
                            print(text, file=sys.stderr)
                            ctl.close()
                        raw[mode][n][key].append(turn)
        admin.close()
        ctl = await Http.open(port)
        await ctl.request("POST", "/shutdown")
        ctl.close()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {
        mode: {n: {k: summarize(ts) for k, ts in by_key.items()} for n, by_key in by_n.items()}
        for mode, by_n in raw.items()
    }


# ====================================================================== report


def report(results: dict[str, Any]) -> str:
    """The Markdown tables and the verdict on the targets."""
    parts = []
    for mode, by_n in results["app"].items():
        for n, by_key in by_n.items():
            parts.append(f"\n### {mode} to the database, burst of N={n} /slow\n")
            parts.append(
                "| contender | quiet p50 / p99 / max | burst p50 / p99 / max | p99 ratio "
                "| pool whole after | slow left running | /fast 57014 |"
            )
            parts.append("|---|---|---|---|---|---|---|")
            for key, s in by_key.items():
                parts.append(
                    f"| {CONTENDERS[key]} | {s['quiet_p50']:.1f} / {s['quiet_p99']:.1f} / "
                    f"{s['quiet_max']:.1f} | {s['burst_p50']:.1f} / {s['burst_p99']:.1f} / "
                    f"{s['burst_max']:.1f} | {s['ratio_p99']:.2f}x | {s['whole_ms']:.0f} ms | "
                    f"{s['still_running']} | {s['fast_57014']} |"
                )
    parts.append("\n### Targets (TLS, N=50)\n")
    parts.extend(f"- {line}" for line in targets(results))
    return "\n".join(parts)


def targets(results: dict[str, Any]) -> list[str]:
    """The issue's targets on psycancel's rows."""
    tls = results["app"].get("TLS", {})
    n = 50 if 50 in tls else (max(tls) if tls else None)
    if n is None:
        return ["no TLS run"]
    rows = tls[n]
    out = []
    theirs = rows.get("cancel_safe")
    for key in ("psycancel", "cancel_after"):
        if key not in rows:
            continue
        s = rows[key]
        line = (
            f"{CONTENDERS[key]}, N={n}: burst p99 {s['burst_p99']:.1f} ms = "
            f"{s['ratio_p99']:.2f}x its quiet p99 ({'met' if s['ratio_p99'] <= 1.2 else 'MISSED'} "
            "<= 1.2x)"
        )
        if theirs:
            r = s["burst_p99"] / theirs["burst_p99"]
            line += f"; {r:.2f}x psycopg cancel_safe's ({'met' if r <= 0.5 else 'MISSED'} <= 0.5x)"
        line += (
            f"; unexpected 57014: {s['fast_57014']} ({'met' if not s['fast_57014'] else 'MISSED'})"
        )
        out.append(line)
    if "floor" in rows:
        out.append(
            "floor (the same burst, no cancel needed): burst p99 "
            f"{rows['floor']['burst_p99']:.1f} ms = {rows['floor']['ratio_p99']:.2f}x quiet"
        )
    return out


def plot(results: dict[str, Any], path: Path) -> bool:
    """/fast p99 during the burst vs burst size, one line per contender, per mode."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    modes = list(results["app"])
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), squeeze=False)
    for ax, mode in zip(axes[0], modes, strict=True):
        by_n = results["app"][mode]
        sizes = sorted(by_n, key=int)
        keys = list(by_n[sizes[0]])
        for key in keys:
            style = "--" if key in ("floor", "pg_cancel_backend") else "-"
            ax.plot(
                [int(n) for n in sizes],
                [by_n[n][key]["burst_p99"] for n in sizes],
                style,
                marker="o",
                label=CONTENDERS[key],
            )
        quiet = statistics.median(by_n[n][k]["quiet_p99"] for n in sizes for k in keys)
        ax.axhline(quiet, color="grey", linewidth=0.8, linestyle=":", label="no burst (median)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent /slow requests cancelled at 100 ms")
        ax.set_ylabel("/fast p99 during the burst (ms, median of rounds)")
        ax.set_title(f"{mode} to the database")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("aiohttp service, one worker: /fast latency under a cancel storm (2 shared CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    """Run the benchmark (or, with --serve, be the service)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="smoke form (CI): correctness only")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sizes", default="10,50,200")
    parser.add_argument("--modes", default="plain,TLS")
    parser.add_argument("--only", default="", help="comma-separated contender keys")
    parser.add_argument("--rate", type=float, default=200.0, help="/fast requests per second")
    parser.add_argument("--quiet", type=float, default=0.6, help="seconds of no-burst load")
    parser.add_argument("--profile", default=None, help="pyinstrument the service for this key")
    parser.add_argument("--out", type=Path, default=HERE / "app.json")
    args = parser.parse_args()
    if args.serve:
        serve(None)
        return 0
    from _common import environment

    keys = [k for k in args.only.split(",") if k] or list(CONTENDERS)
    sizes = [10] if args.quick else [int(n) for n in args.sizes.split(",")]
    repeat = 1 if args.quick else args.repeat
    quiet = 0.3 if args.quick else args.quiet
    modes = args.modes.split(",")
    t0 = time.monotonic()
    with environment() as env:
        if max(sizes) + FAST_HEADROOM + 20 > 190:
            import psycopg

            with psycopg.connect(env.server.dsn("disable"), autocommit=True) as c:
                c.execute(f"alter system set max_connections = {max(sizes) + 100}")
            env.server.restart()
        app = asyncio.run(bench(env, keys, sizes, modes, repeat, args.rate, quiet, args.profile))
    results = {
        "app": app,
        "seconds": time.monotonic() - t0,
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "rate": args.rate,
    }
    print(report(results))
    print(f"\n(ran in {results['seconds']:.0f} s, load average {os.getloadavg()[0]:.1f})")
    problems = [
        f"{mode} N={n} {key}: {p}"
        for mode, by_n in app.items()
        for n, by_key in by_n.items()
        for key, s in by_key.items()
        for p in check(key, n, s)
    ]
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    if not args.quick and not args.only:
        args.out.write_text(json.dumps(results, indent=1))
        if plot(results, args.out.with_suffix(".png")):
            print(f"plot: {args.out.with_suffix('.png')}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
