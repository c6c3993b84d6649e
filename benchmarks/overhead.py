"""Overhead of the two twins, side by side in one run: compiled vs ctypes.

Measures, for each twin, with the same libpq >= 17 and the same server:

* the cost of a cheap call (``PGcancelConn.status``, ``.socket``), in ns;
* the client CPU time (this process, all threads) per complete cancel of an
  idle connection, plain and TLS, through ``psycancel.cancel``;
* the cost of the ``psycancel`` logger: the same cancel with logging off
  (the default) and with DEBUG on (records go to a handler that drops them),
  and the ns of the one check a cancel pays when it is off.

Twins are interleaved within every repetition so that machine noise hits
both alike; figures are medians over the repetitions.

    python benchmarks/overhead.py [--dsn DSN] [--repeat 7] [--cancels 200]

Without ``--dsn`` a throwaway server is started (as the tests do).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycancel
from psycancel.pq import import_twin
from testing import client

TWINS = ("c", "python")


@contextlib.contextmanager
def server_dsns(dsn: str | None) -> Iterator[tuple[dict[str, str], str]]:
    """(DSNs by label, libpq path): the given server or a throwaway one."""
    if dsn is not None:
        yield {"given": dsn}, os.environ.get("PSYCANCEL_LIBPQ", "")
        return
    from testing import ThrowawayServer, find_postgres_prefix

    with ThrowawayServer(find_postgres_prefix()) as server:
        yield (
            {"plain": server.dsn_plain, "TLS": server.dsn_tls},
            os.environ.get("PSYCANCEL_LIBPQ") or str(server.libpq_path),
        )


def cheap_call_ns(twin: ModuleType, lib: Any, dsn: str, number: int) -> dict[str, float]:
    """ns per call of ``status`` and ``socket`` on an unstarted PGcancelConn."""
    conn = client.connect(dsn, libpq=lib)
    try:
        cc = conn.pgconn.cancel_conn()
        try:
            out = {}
            for attr in ("status", "socket"):
                t = timeit.timeit(f"cc.{attr}", globals={"cc": cc}, number=number)
                out[attr] = t / number * 1e9
            return out
        finally:
            cc.finish()
    finally:
        conn.finish()


def cpu_per_cancel_us(twin: ModuleType, lib: Any, dsn: str, cancels: int) -> float:
    """Client CPU microseconds per complete cancel (idle connection)."""
    conn = client.connect(dsn, libpq=lib)
    try:
        pg = conn.pgconn  # psycancel's PGconn of the twin measured
        psycancel.cancel(pg)  # warm up
        c0 = time.process_time()
        for _ in range(cancels):
            psycancel.cancel(pg)
        return (time.process_time() - c0) / cancels * 1e6
    finally:
        conn.finish()


class _Drop(logging.Handler):
    """A handler that drops every record (the cost measured is psycancel's, not I/O)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass


@contextlib.contextmanager
def debug_logging() -> Iterator[None]:
    """The ``psycancel`` logger at DEBUG, to a handler that drops the records."""
    logger = logging.getLogger("psycancel")
    handler = _Drop()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.setLevel(level)
        logger.removeHandler(handler)


def guard_ns(number: int) -> float:
    """ns per ``logger.isEnabledFor(DEBUG)`` with DEBUG off: what a cancel pays for logging."""
    logger = logging.getLogger("psycancel")
    t = timeit.timeit(
        "is_enabled(DEBUG)",
        globals={"is_enabled": logger.isEnabledFor, "DEBUG": logging.DEBUG},
        number=number,
    )
    return t / number * 1e9


def main() -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cancels", type=int, default=200)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()

    twins = {name: import_twin(name) for name in TWINS}
    with server_dsns(args.dsn) as (dsns, libpq_path):
        libs = {name: twins[name].Libpq.load(libpq_path or None) for name in TWINS}
        first_dsn = next(iter(dsns.values()))
        calls: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        logged: dict[str, list[float]] = {}
        guard: list[float] = []
        for _ in range(args.repeat):
            guard.append(guard_ns(args.calls))
            for name in TWINS:
                for attr, ns in cheap_call_ns(
                    twins[name], libs[name], first_dsn, args.calls
                ).items():
                    calls.setdefault((name, attr), []).append(ns)
                for label, dsn in dsns.items():
                    cpu.setdefault((name, label), []).append(
                        cpu_per_cancel_us(twins[name], libs[name], dsn, args.cancels)
                    )
                with debug_logging():
                    logged.setdefault(name, []).append(
                        cpu_per_cancel_us(twins[name], libs[name], first_dsn, args.cancels)
                    )
        lib = libs["c"]
        print(f"libpq {lib.version} at {lib.path}; {args.repeat} repetitions, medians")
        print()
        print("| measure | compiled (c) | ctypes (python) | c / python |")
        print("|---|---|---|---|")
        for attr in ("status", "socket"):
            c = statistics.median(calls[("c", attr)])
            p = statistics.median(calls[("python", attr)])
            print(f"| `PGcancelConn.{attr}` ns/call | {c:.0f} | {p:.0f} | {c / p:.2f}x |")
        for label in dsns:
            c = statistics.median(cpu[("c", label)])
            p = statistics.median(cpu[("python", label)])
            print(f"| client CPU per cancel, {label} (us) | {c:.0f} | {p:.0f} | {c / p:.2f}x |")
        print()
        first_label = next(iter(dsns))
        print(f"logging (client CPU per cancel, {first_label}, us; medians):")
        print()
        print("| twin | logging off (default) | DEBUG on | on / off |")
        print("|---|---|---|---|")
        for name in TWINS:
            off = statistics.median(cpu[(name, first_label)])
            on = statistics.median(logged[name])
            print(f"| {name} | {off:.0f} | {on:.0f} | {on / off:.2f}x |")
        print()
        print(
            f"the check a cancel pays with logging off (logger.isEnabledFor): "
            f"{statistics.median(guard):.0f} ns"
        )
        print()
        ratio_calls = max(
            statistics.median(calls[("c", a)]) / statistics.median(calls[("python", a)])
            for a in ("status", "socket")
        )
        ratio_cpu = max(
            statistics.median(cpu[("c", label)]) / statistics.median(cpu[("python", label)])
            for label in dsns
        )
        print(
            f"targets: cheap call >= 5x faster: {'met' if ratio_calls <= 0.2 else 'MISSED'} "
            f"({1 / ratio_calls:.1f}x); client CPU per cancel <= 0.8x: "
            f"{'met' if ratio_cpu <= 0.8 else 'MISSED'} ({ratio_cpu:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
