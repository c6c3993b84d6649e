"""psycancel against its peers, side by side in one run: medians and ratios.

    python benchmarks/run.py            # everything (a few minutes)
    python benchmarks/run.py --quick    # smoke form for CI: correctness only

Sections (all against one throwaway PostgreSQL 18 with TLS, on loopback):

1. single-cancel latency, plain and TLS: psycancel (both twins, sync, async
   inline and offloaded), psycopg 3 ``cancel_safe``, psycopg2 ``cancel``, and
   the raw floor (a hand-written CancelRequest over a socket, with and
   without TLS);
2. event-loop stall (largest gap between ticks of a busy coroutine) and total
   time while N concurrent TLS cancels run (also asyncpg's cancel);
3. the legacy path (libpq < 17): loop stall with 10 concurrent cancels
   through a proxy adding 10 ms each way;
4. the GIL: main-thread progress while a thread runs a blocking cancel
   through a proxy adding 200 ms each way;
5. client CPU per cancel.

By default psycancel uses the same libpq file as psycopg (its binary
package's bundled libpq 18 and OpenSSL), so that the comparison measures the
drivers of the cancel, not two OpenSSL releases; ``--libpq server`` uses the
libpq built with the server instead (linked with the system's OpenSSL).

Every cancel targets an idle connection: the server does the same work
(fork, read, look up the backend) whether a query runs or not, and idle
connections can be cancelled again and again. Contenders are interleaved
within each repetition so machine noise hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    Env,
    Ticker,
    environment,
    median,
    openssl_of,
    other_process_cancels,
    peer_libpq_path,
    pinned,
    progress_ratio,
    proxy_process,
)

import psycancel
from psycancel.pq import import_twin
from testing import client

TWINS = {"c": import_twin("c"), "python": import_twin("python")}
CANCEL_REQUEST_CODE = 80877102
SSL_REQUEST = struct.pack("!ii", 8, 80877103)


# ------------------------------------------------------------------ connections


def pgconn(twin: str, dsn: str, libpq_path: str) -> Any:
    """A client connection (``testing.client``) whose ``pgconn`` is of the given twin."""
    mod = TWINS[twin]
    return client.connect(dsn, libpq=mod.Libpq.load(libpq_path))


def raw_cancel(host: str, port: int, pid: int, tls: bool) -> None:
    """The floor: one CancelRequest (wrong key: same server work), wait for EOF."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as libpq does
    try:
        packet = struct.pack("!iiii", 16, CANCEL_REQUEST_CODE, pid, 0)
        if tls:
            sock.sendall(SSL_REQUEST)
            assert sock.recv(1) == b"S"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(sock) as tsock:
                tsock.sendall(packet)
                while tsock.recv(64):
                    pass
        else:
            sock.sendall(packet)
            while sock.recv(64):
                pass
    finally:
        sock.close()


# ------------------------------------------------------------------ 1. latency


def bench_latency(env: Env, samples: int, repeat: int) -> dict[str, dict[str, float]]:
    """Median wall time (ms) of one cancel, per contender, plain and TLS."""
    import psycopg
    import psycopg2

    out: dict[str, dict[str, float]] = {}
    loop = asyncio.new_event_loop()
    try:
        for label, sslmode in (("plain", "disable"), ("TLS", "require")):
            dsn = env.server.dsn(sslmode)
            conns = {t: pgconn(t, dsn, env.libpq_path) for t in TWINS}
            pg3 = psycopg.connect(dsn, autocommit=True)
            apg3 = loop.run_until_complete(psycopg.AsyncConnection.connect(dsn, autocommit=True))
            pg2 = psycopg2.connect(dsn)
            pid = conns["c"].backend_pid

            def timed_async(make: Callable[[], Awaitable[None]]) -> Callable[[], None]:
                async def once() -> None:
                    await make()

                return lambda: loop.run_until_complete(once())

            contenders: dict[str, Callable[[], None]] = {}
            for t, conn in conns.items():
                contenders[f"psycancel-{t} sync"] = lambda c=conn.pgconn: psycancel.cancel(c)
                contenders[f"psycancel-{t} async"] = timed_async(
                    lambda c=conn.pgconn: psycancel.cancel_async(c, offload=False)
                )
                contenders[f"psycancel-{t} async offload"] = timed_async(
                    lambda c=conn.pgconn: psycancel.cancel_async(c, offload=True)
                )
            contenders["psycopg cancel_safe"] = pg3.cancel_safe
            contenders["psycopg async cancel_safe"] = timed_async(apg3.cancel_safe)
            contenders["psycopg2 cancel (clear text)"] = pg2.cancel
            contenders["raw floor"] = lambda pid=pid, tls=sslmode != "disable": raw_cancel(
                env.server.host, env.server.port, pid, tls
            )
            times: dict[str, list[float]] = {name: [] for name in contenders}
            for fn in contenders.values():
                fn()  # warm up
            order = list(contenders.items())
            shuffle = random.Random(f"latency-{label}").shuffle
            for _ in range(repeat):
                # Rounds of one cancel per contender, each round in a new random
                # order: a noisy stretch hits every contender alike, and no
                # contender always follows the same one (a cancel leaves the
                # server busy for a moment: a fixed order would bias the next).
                one: dict[str, list[float]] = {name: [] for name in contenders}
                for _ in range(samples):
                    shuffle(order)
                    for name, fn in order:
                        t0 = time.perf_counter()
                        fn()
                        one[name].append(time.perf_counter() - t0)
                for name, values in one.items():
                    times[name].append(median(values))
            out[label] = {name: 1000 * median(v) for name, v in times.items()}
            for conn in conns.values():
                conn.finish()
            pg3.close()
            loop.run_until_complete(apg3.close())
            pg2.close()
    finally:
        loop.close()
    return out


# ------------------------------------------------------------------ 2. loop stall


def asyncpg_dsn(env: Env, sslmode: str) -> str:
    """The throwaway server's address in asyncpg's URL form."""
    return f"postgresql://postgres@{env.server.host}:{env.server.port}/postgres?sslmode={sslmode}"


async def asyncpg_cancel(conn: Any) -> None:
    """The cancel request asyncpg sends when a query's ``timeout`` expires.

    ``Connection._cancel`` runs ``connect_utils._cancel`` (a new connection,
    TLS when the session has it, the CancelRequest, wait for EOF) and then
    waits for the cancelled query's end; with no query running, only the first
    part applies, which is what is called here (private API: asyncpg has no
    public call that only cancels).
    """
    from asyncpg import connect_utils

    await connect_utils._cancel(
        loop=asyncio.get_running_loop(),
        addr=conn._addr,
        params=conn._params,
        backend_pid=conn._protocol.backend_pid,
        backend_secret=conn._protocol.backend_secret,
    )


async def _stall(make_cancels: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    async with Ticker() as ticker:
        t0 = time.perf_counter()
        await make_cancels()
        total = time.perf_counter() - t0
    return ticker.max_gap * 1000, total * 1000


ASYNCPG = "asyncpg (its timeout's cancel)"
"""asyncpg's cancel: what ``fetch(..., timeout=)`` sends (asyncio streams, Python ssl)."""

FLOOR = "floor: the same cancels in another process"
"""The stall a loop sees when none of the cancels' work runs in its process."""


def bench_stall(
    env: Env, sizes: list[int], repeat: int, pin: bool = False
) -> dict[str, dict[int, dict[str, float]]]:
    """Largest loop gap and total time (ms) for N concurrent TLS cancels.

    ``pin``: the loop thread gets CPU 0 to itself; the server and every other
    thread share the other CPUs (see :func:`_common.pinned`).
    """
    import asyncpg
    import psycopg

    dsn = env.server.dsn("require")
    pool = 20

    async def main() -> dict[str, dict[int, dict[str, float]]]:
        conns = {t: [pgconn(t, dsn, env.libpq_path) for _ in range(pool)] for t in TWINS}
        pg3 = [await psycopg.AsyncConnection.connect(dsn, autocommit=True) for _ in range(pool)]
        apg = [await asyncpg.connect(asyncpg_dsn(env, "require")) for _ in range(pool)]
        for t in TWINS:  # start the offload threads before any pinning
            await psycancel.cancel_async(conns[t][0].pgconn, offload=True)

        def ours(t: str, offload: bool, n: int) -> Callable[[], Awaitable[object]]:
            return lambda: asyncio.gather(
                *(
                    psycancel.cancel_async(conns[t][i % pool].pgconn, offload=offload)
                    for i in range(n)
                )
            )

        def theirs(n: int) -> Callable[[], Awaitable[object]]:
            return lambda: asyncio.gather(*(pg3[i % pool].cancel_safe() for i in range(n)))

        def asyncpgs(n: int) -> Callable[[], Awaitable[object]]:
            return lambda: asyncio.gather(*(asyncpg_cancel(apg[i % pool]) for i in range(n)))

        names = [
            f"psycancel-{t}{' offload' if off else ''}" for t in TWINS for off in (False, True)
        ]
        names += ["psycopg cancel_safe", ASYNCPG, FLOOR]
        raw: dict[str, dict[int, dict[str, list[float]]]] = {
            name: {n: {"stall": [], "total": [], "idle_total": []} for n in sizes} for name in names
        }
        async with other_process_cancels(dsn, pool) as elsewhere:
            with pinned(env, enabled=pin):
                for _ in range(repeat):
                    for n in sizes:
                        runs: dict[str, Callable[[], Awaitable[object]]] = {}
                        for t in TWINS:
                            runs[f"psycancel-{t}"] = ours(t, False, n)
                            runs[f"psycancel-{t} offload"] = ours(t, True, n)
                        runs["psycopg cancel_safe"] = theirs(n)
                        runs[ASYNCPG] = asyncpgs(n)
                        runs[FLOOR] = lambda n=n: elsewhere(n)
                        for name, make in runs.items():
                            stall, total = await _stall(make)
                            raw[name][n]["stall"].append(stall)
                            raw[name][n]["total"].append(total)
                            # The same without the busy coroutine: total time when
                            # the loop thread idles (as a real loop mostly does).
                            t0 = time.perf_counter()
                            await make()
                            raw[name][n]["idle_total"].append(1000 * (time.perf_counter() - t0))
        for cs in conns.values():
            for c in cs:
                c.finish()
        for a in pg3:
            await a.close()
        for b in apg:
            await b.close()
        return {
            name: {n: {k: median(v) for k, v in per.items()} for n, per in by_n.items()}
            for name, by_n in raw.items()
        }

    return asyncio.run(main())


# ------------------------------------------------------------------ 3. legacy stall


def bench_legacy(env: Env, repeat: int, concurrency: int = 10) -> dict[str, float]:
    """Loop stall (ms): 10 legacy cancels through a 10 ms-each-way proxy."""
    import psycopg2

    with proxy_process(env, 0.010) as port:
        dsn = env.server.dsn("disable", port=port)
        ours = [pgconn("c", dsn, env.legacy_libpq_path) for _ in range(concurrency)]
        assert not ours[0].libpq.has_cancel_conn
        theirs = [psycopg2.connect(dsn) for _ in range(concurrency)]

        async def psycancel_legacy() -> None:
            await asyncio.gather(*(psycancel.cancel_async(c.pgconn) for c in ours))

        async def psycopg2_in_loop() -> None:
            for c in theirs:
                c.cancel()

        async def psycopg2_in_thread() -> None:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, c.cancel) for c in theirs))

        contenders: dict[str, Callable[[], Awaitable[None]]] = {
            "psycancel (legacy libpq, worker threads)": psycancel_legacy,
            "psycopg2 cancel() in the loop": psycopg2_in_loop,
            "psycopg2 cancel() in threads": psycopg2_in_thread,
        }
        results: dict[str, list[float]] = {name: [] for name in [*contenders, FLOOR]}

        async def main() -> None:
            async with other_process_cancels(dsn, concurrency, "psycopg2") as elsewhere:
                contenders[FLOOR] = lambda: elsewhere(concurrency)
                for _ in range(repeat):
                    for name, fn in contenders.items():
                        async with Ticker() as ticker:
                            await fn()
                        results[name].append(ticker.max_gap * 1000)

        asyncio.run(main())
        for c in ours:
            c.finish()
        for c in theirs:
            c.close()
    return {name: median(v) for name, v in results.items()}


# ------------------------------------------------------------------ 4. GIL


def bench_gil(env: Env, repeat: int) -> dict[str, float]:
    """Main-thread progress (% of baseline) during a blocking cancel (200 ms each way)."""
    import psycopg2

    with proxy_process(env, 0.2) as port:
        dsn = env.server.dsn("disable", port=port)
        conns = {t: pgconn(t, dsn, env.libpq_path) for t in TWINS}
        pg2 = psycopg2.connect(dsn)
        contenders: dict[str, Callable[[], object]] = {
            f"psycancel-{t} cancel()": (lambda c=c.pgconn: psycancel.cancel(c))
            for t, c in conns.items()
        }
        contenders["psycopg2 cancel()"] = pg2.cancel
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeat):
            for name, fn in contenders.items():
                ratio, _elapsed = progress_ratio(fn)
                results[name].append(100 * ratio)
        for c in conns.values():
            c.finish()
        pg2.close()
    return {name: median(v) for name, v in results.items()}


# ------------------------------------------------------------------ 5. CPU


def bench_cpu(env: Env, cancels: int, repeat: int) -> dict[str, dict[str, float]]:
    """Client CPU microseconds per complete cancel (this process, all threads)."""
    import psycopg

    out: dict[str, dict[str, float]] = {}
    for label, sslmode in (("plain", "disable"), ("TLS", "require")):
        dsn = env.server.dsn(sslmode)
        conns = {t: pgconn(t, dsn, env.libpq_path) for t in TWINS}
        pg3 = psycopg.connect(dsn, autocommit=True)
        contenders: dict[str, Callable[[], None]] = {
            f"psycancel-{t}": (lambda c=c.pgconn: psycancel.cancel(c)) for t, c in conns.items()
        }
        contenders["psycopg cancel_safe"] = pg3.cancel_safe
        results: dict[str, list[float]] = {name: [] for name in contenders}
        for fn in contenders.values():
            fn()  # warm up
        # Batches of a tenth of the cancels, contenders in a new random order
        # each round (as for latency); the median over all batches.
        order = list(contenders.items())
        shuffle = random.Random(f"cpu-{label}").shuffle
        batch = max(1, cancels // 10)
        for _ in range(repeat * 10):
            shuffle(order)
            for name, fn in order:
                c0 = time.process_time()
                for _ in range(batch):
                    fn()
                results[name].append((time.process_time() - c0) / batch * 1e6)
        out[label] = {name: median(v) for name, v in results.items()}
        for c in conns.values():
            c.finish()
        pg3.close()
    return out


# ------------------------------------------------------------------ report


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def report(results: dict[str, Any]) -> str:
    """The Markdown tables and the verdict on each target."""
    parts: list[str] = []
    if "libpq" in results:
        lib = results["libpq"]
        parts.append(f"psycancel's libpq: `{lib['path']}` ({lib['openssl']})\n")
    lat = results["latency"]
    names = list(lat["plain"])
    rows = []
    for name in names:
        p, t = lat["plain"][name], lat["TLS"][name]
        rows.append(
            [
                name,
                f"{p:.2f}",
                f"{p / lat['plain']['raw floor']:.2f}x",
                f"{t:.2f}",
                f"{t / lat['TLS']['raw floor']:.2f}x",
            ]
        )
    parts.append("### 1. Single-cancel latency (ms, median)\n")
    parts.append(_table(["contender", "plain", "vs floor", "TLS", "vs floor"], rows))
    stall = results["stall"]
    sizes = sorted({int(n) for per in stall.values() for n in per})
    for key, title in (
        ("stall", "every thread and process anywhere (the OS decides)"),
        ("stall_pinned", "the loop thread alone on CPU 0, the rest on the others"),
    ):
        if key not in results:
            continue
        rows = []
        for name, per in results[key].items():
            rows.append(
                [name]
                + [
                    f"{per[n]['stall']:.1f} / {per[n]['total']:.0f} / {per[n]['idle_total']:.0f}"
                    for n in sizes
                ]
            )
        parts.append(
            f"\n### 2. Loop stall / total / total with an idle loop (ms), N concurrent TLS "
            f"cancels: {title}\n"
        )
        parts.append(_table(["contender"] + [f"N={n}" for n in sizes], rows))
    parts.append("\n### 3. Legacy path: loop stall (ms), 10 cancels, 10 ms each way\n")
    parts.append(
        _table(["contender", "stall"], [[k, f"{v:.1f}"] for k, v in results["legacy"].items()])
    )
    parts.append("\n### 4. GIL: main-thread progress during a blocking cancel (200 ms each way)\n")
    parts.append(
        _table(["contender", "progress"], [[k, f"{v:.0f}%"] for k, v in results["gil"].items()])
    )
    cpu = results["cpu"]
    parts.append("\n### 5. Client CPU per cancel (us)\n")
    parts.append(
        _table(
            ["contender", "plain", "TLS"],
            [[k, f"{cpu['plain'][k]:.0f}", f"{cpu['TLS'][k]:.0f}"] for k in cpu["plain"]],
        )
    )
    parts.append("\n### Targets\n")
    parts.extend(f"- {line}" for line in targets(results))
    return "\n".join(parts)


def targets(results: dict[str, Any]) -> list[str]:
    """Each target of the benchmark issue, with the measured figures."""
    out = []

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    default = "psycancel-c offload"  # what cancel_async() does for a TLS connection
    for key, how in (("stall", "unpinned"), ("stall_pinned", "loop thread pinned")):
        if key not in results:
            continue
        stall = results[key]
        sizes = sorted(int(k) for k in stall["psycopg cancel_safe"])
        n = 50 if 50 in sizes else sizes[-1]  # the target is stated for 50
        ours, theirs = stall[default][n], stall["psycopg cancel_safe"][n]
        floor = stall[FLOOR][n]
        out.append(
            f"loop stall, {n} TLS cancels, {how} ({default}): {ours['stall']:.1f} ms "
            f"(<= 3: {verdict(ours['stall'] <= 3)}) vs psycopg {theirs['stall']:.1f} ms = "
            f"{ours['stall'] / theirs['stall']:.2f}x (<= 0.2x: "
            f"{verdict(ours['stall'] <= 0.2 * theirs['stall'])}); machine floor "
            f"{floor['stall']:.1f} ms; total {ours['total']:.0f} vs {theirs['total']:.0f} ms "
            f"(no worse: {verdict(ours['total'] <= theirs['total'])}); with an idle loop "
            f"{ours['idle_total']:.0f} vs {theirs['idle_total']:.0f} ms "
            f"(no worse: {verdict(ours['idle_total'] <= theirs['idle_total'])})"
        )
    lat = results["latency"]
    for label in ("plain", "TLS"):
        best = min(lat[label][k] for k in ("psycancel-c sync", "psycancel-c async"))
        psy = lat[label]["psycopg cancel_safe"]
        floor = lat[label]["raw floor"]
        out.append(
            f"latency {label}: psycancel-c {best:.2f} ms = {best / psy:.2f}x psycopg, "
            f"{best / floor:.2f}x floor: {verdict(best <= 1.05 * psy and best <= 1.05 * floor)}"
        )
    leg = results["legacy"]["psycancel (legacy libpq, worker threads)"]
    floor = results["legacy"].get(FLOOR, float("nan"))
    out.append(
        f"legacy loop stall: {leg:.1f} ms (machine floor {floor:.1f} ms): {verdict(leg <= 3)}"
    )
    for k, v in results["gil"].items():
        if k.startswith("psycancel"):
            out.append(f"GIL, {k}: {v:.0f}% of baseline: {verdict(v >= 90)}")
    cpu = results["cpu"]
    for label in ("plain", "TLS"):
        r = cpu[label]["psycancel-c"] / cpu[label]["psycancel-python"]
        out.append(f"CPU per cancel {label}: c/ctypes = {r:.2f}x: {verdict(r <= 0.8)}")
    return out


def plot(results: dict[str, Any], path: Path) -> bool:
    """Loop stall vs concurrency, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        (key, title)
        for key, title in (
            ("stall", "unpinned"),
            ("stall_pinned", "loop thread on a CPU of its own"),
        )
        if key in results
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for name, per in results[key].items():
            sizes = sorted(per, key=int)
            style = "--" if name == FLOOR else "-"
            ax.plot(
                [int(n) for n in sizes],
                [per[n]["stall"] for n in sizes],
                style,
                marker="o",
                label=name,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent TLS cancels")
        ax.set_ylabel("largest event-loop gap (ms, median)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("asyncio loop stall while cancelling (PostgreSQL 18, loopback, TLS, 2 CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    """Run every section and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke form (CI): tiny sizes")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument(
        "--libpq",
        choices=["peer", "server"],
        default="peer",
        help="psycancel's libpq: psycopg's own (default) or the one built with the server",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results.json")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    t0 = time.monotonic()
    with environment() as env:
        results: dict[str, Any] = {}
        if args.libpq == "peer":
            env.libpq_path = peer_libpq_path(env.server.dsn("disable"))
        results["libpq"] = {"path": env.libpq_path, "openssl": openssl_of(env.libpq_path)}
        print(f"psycancel's libpq: {env.libpq_path} ({results['libpq']['openssl']})")
        print("1/5 latency...", file=sys.stderr)
        results["latency"] = bench_latency(env, samples=3 if args.quick else 30, repeat=repeat)
        print("2/5 loop stall...", file=sys.stderr)
        sizes = [1, 10] if args.quick else [1, 10, 50, 200]
        results["stall"] = bench_stall(env, sizes, repeat=repeat)
        if len(os.sched_getaffinity(0)) >= 2:
            print("2/5 loop stall, loop thread pinned...", file=sys.stderr)
            results["stall_pinned"] = bench_stall(env, sizes, repeat=repeat, pin=True)
        print("3/5 legacy...", file=sys.stderr)
        results["legacy"] = bench_legacy(env, repeat=repeat)
        print("4/5 GIL...", file=sys.stderr)
        results["gil"] = bench_gil(env, repeat=repeat)
        print("5/5 CPU...", file=sys.stderr)
        results["cpu"] = bench_cpu(env, cancels=10 if args.quick else 200, repeat=repeat)
    results["seconds"] = time.monotonic() - t0
    print(report(results))
    print(f"\n(ran in {results['seconds']:.0f} s)")
    if not args.quick:
        args.out.write_text(json.dumps(results, indent=1))
        png = args.out.with_name("stall.png")
        if plot(results, png):
            print(f"plot: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
