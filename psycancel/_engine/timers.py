"""One timer thread for the whole process: ``cancel_after`` blocks cost no thread each.

A block that is entered adds an entry to a heap; a block that ends in time
marks its entry dead, and nothing else happens: the thread is not woken (it
sleeps until the earliest entry it knew of, and skips dead entries when it
wakes), so a block that never fires costs a lock, a heap push and a flag.
The thread is woken only when an entry earlier than the one it waits for is
added. Dead entries are dropped as they reach the top of the heap, and the
heap is rebuilt without them when they outnumber the live ones (long
``seconds``, many short blocks), so that memory stays bounded.

Callbacks run in the timer thread and must return quickly (start a thread,
shut a socket down); an exception from one is logged, never fatal to the
thread. After ``fork`` the child starts with no entries and no thread (one
is started again on its first use).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

from .plan import MAX_WAIT

__all__ = ["TimerEntry", "call_at", "pending"]

_logger = logging.getLogger("psycancel")

_REBUILD_MIN = 1024
"""Dead entries tolerated in the heap before a rebuild is considered."""


class TimerEntry:
    """One scheduled callback; :meth:`cancel` makes it dead (idempotent, any thread)."""

    __slots__ = ("callback", "dead", "seq", "when")

    def __init__(self, when: float, seq: int, callback: Callable[[], object]) -> None:
        self.when = when
        self.seq = seq
        self.callback = callback
        self.dead = False

    def __lt__(self, other: TimerEntry) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)

    def cancel(self) -> None:
        """Never run the callback (if it has not started yet)."""
        if not self.dead:
            _TIMERS.kill(self)


class _Timers:
    """The heap, its lock and condition, and the thread that serves them."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[TimerEntry] = []
        self._dead = 0
        self._seq = itertools.count()
        self._wake_at = float("inf")
        """When the thread will wake by itself (inf: it waits for a notify)."""
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerEntry:
        with self._cond:
            entry = TimerEntry(when, next(self._seq), callback)
            heapq.heappush(self._heap, entry)
            if self._thread is None:
                self._start()
            elif when < self._wake_at:
                self._cond.notify()
            if self._dead > _REBUILD_MIN and self._dead > len(self._heap) // 2:
                self._heap = [e for e in self._heap if not e.dead]
                heapq.heapify(self._heap)
                self._dead = 0
            return entry

    def kill(self, entry: TimerEntry) -> None:
        with self._cond:
            if not entry.dead:
                entry.dead = True
                self._dead += 1

    def pending(self) -> int:
        with self._cond:
            return len(self._heap) - self._dead

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="psycancel-timer", daemon=True)
        thread.start()
        self._thread = thread

    def _due(self) -> TimerEntry | None:
        """The next entry to run now (lock held); None after waiting for the next one."""
        heap = self._heap
        while heap and heap[0].dead:
            heapq.heappop(heap)
            self._dead -= 1
        if not heap:
            self._wake_at = float("inf")
            self._cond.wait(MAX_WAIT)
            return None
        now = time.monotonic()
        head = heap[0]
        if head.when <= now:
            heapq.heappop(heap)
            head.dead = True  # ran: a later cancel() is a no-op
            return head
        self._wake_at = head.when
        self._cond.wait(min(head.when - now, MAX_WAIT))
        self._wake_at = float("inf")
        return None

    def _run(self) -> None:
        while True:
            with self._cond:
                entry = self._due()
            if entry is None:
                continue
            try:
                entry.callback()
            except BaseException:  # one block's failure must not stop the others' timers
                _logger.exception("psycancel timer callback failed")


_TIMERS = _Timers()

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_TIMERS._reset)


def call_at(when: float, callback: Callable[[], object]) -> TimerEntry:
    """Run ``callback()`` in the timer thread at ``when`` (``time.monotonic()`` seconds)."""
    return _TIMERS.call_at(when, callback)


def pending() -> int:
    """How many live entries wait (for tests and leak checks)."""
    return _TIMERS.pending()
