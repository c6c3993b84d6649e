"""How long an asyncio loop waits for the GIL on this interpreter (no psycancel).

A 1 ms ticker runs on the loop while other threads relay a ping-pong through
two socket pairs, each chunk delayed 0.3 s (the test proxy's shape). It prints
the largest gap between two ticks. Run it on a free-threaded build with the GIL
on and off, beside two CPU hogs (``sh -c 'while :; do :; done'``):

    PYTHON_GIL=1 python tools/ft_gil_gap.py   # 3.13.15t: ~120 ms
    PYTHON_GIL=0 python tools/ft_gil_gap.py   # 3.13.15t: 7-11 ms
    python tools/ft_gil_gap.py                # a default build: 5-12 ms

This is why tools/matrix.sh runs the free-threaded suites with PYTHON_GIL=0
(psycopg2's import would turn the GIL on): the loop-gap tests measure
psycancel, not the interpreter's GIL hand-over.
"""

from __future__ import annotations

import asyncio
import queue
import socket
import sys
import threading
import time

DELAY = 0.3
ROUND_TRIPS = 6


def relay(src: socket.socket, dst: socket.socket, stop: threading.Event) -> None:
    """Forward src -> dst with DELAY per chunk: a reader and a writer thread."""
    pending: queue.Queue[tuple[float, bytes]] = queue.Queue()

    def reader() -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            pending.put((time.monotonic() + DELAY, data))
            if not data:
                return

    def writer() -> None:
        while True:
            try:
                due, data = pending.get(timeout=0.1)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            wait = due - time.monotonic()
            if (wait > 0 and stop.wait(wait)) or not data:
                return
            dst.sendall(data)

    for target in (reader, writer):
        threading.Thread(target=target, daemon=True).start()


def echo(sock: socket.socket) -> None:
    """Send back whatever arrives, until EOF."""
    while data := sock.recv(65536):
        sock.sendall(data)


async def largest_gap() -> tuple[float, int]:
    """(the largest gap between ticks in seconds, the number of ticks)."""
    stop = threading.Event()
    near, relay_a = socket.socketpair()
    relay_b, far = socket.socketpair()
    relay(relay_a, relay_b, stop)
    relay(relay_b, relay_a, stop)
    threading.Thread(target=echo, args=(far,), daemon=True).start()
    near.setblocking(False)
    loop = asyncio.get_running_loop()

    async def ping() -> None:
        for _ in range(ROUND_TRIPS):
            await loop.sock_sendall(near, b"x" * 100)
            await loop.sock_recv(near, 65536)

    pinger = asyncio.create_task(ping())
    gap, ticks, last = 0.0, 0, time.perf_counter()
    while not pinger.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        gap, last, ticks = max(gap, now - last), now, ticks + 1
    stop.set()
    return gap, ticks


def main() -> None:
    """Print the interpreter, whether its GIL is on, and the largest loop gap."""
    gap, ticks = asyncio.run(largest_gap())
    gil = getattr(sys, "_is_gil_enabled", lambda: True)()
    print(
        f"{sys.version.split()[0]} GIL {'on' if gil else 'off'}: "
        f"largest loop gap {gap * 1000:.1f} ms ({ticks} ticks)"
    )


if __name__ == "__main__":
    main()
