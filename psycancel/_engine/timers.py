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
thread. The service is made on first use, not at import (gevent: see
:func:`_timers`). After ``fork`` the child starts with no entries and no
thread (one is started again on its first use).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeAlias

__all__ = ["TimerEntry", "call_at", "cancel", "pending"]

_logger = logging.getLogger("psycancel")

_REBUILD_MIN = 1024
"""Dead entries tolerated in the heap before a rebuild is considered."""

_LONGEST_SLEEP = 3600.0
"""The longest the thread sleeps towards its next entry (seconds), then looks again:
an entry may be far away (``cancel_after``'s ``seconds`` is not capped, unlike a
cancel's timeout) and ``Condition.wait`` refuses more than ``threading.TIMEOUT_MAX``."""


TimerEntry: TypeAlias = list[Any]
"""One scheduled callback: ``[when, seq, callback, dead]`` (see :func:`cancel`); a list
because it is made, and compared in the heap, fastest (``seq`` is unique: the
callbacks are never compared)."""

_WHEN, _SEQ, _CALLBACK, _DEAD = 0, 1, 2, 3


class _Timers:
    """The heap, its lock and condition, and the thread that serves them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._heap: list[TimerEntry] = []
        self._dead = 0
        self._seq = itertools.count()
        self._wake_at = float("inf")
        """When the thread will wake by itself (inf: it waits for a notify)."""
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerEntry:
        with self._lock:  # (the condition's lock: held, so notify() is allowed)
            entry = [when, next(self._seq), callback, False]
            heapq.heappush(self._heap, entry)
            if when < self._wake_at:
                if self._thread is None:
                    self._start()
                else:
                    self._cond.notify()
            if self._dead > _REBUILD_MIN and self._dead > len(self._heap) // 2:
                self._heap = [e for e in self._heap if not e[_DEAD]]
                heapq.heapify(self._heap)
                self._dead = 0
            return entry

    def kill(self, entry: TimerEntry) -> None:
        with self._lock:
            if not entry[_DEAD]:
                entry[_DEAD] = True
                self._dead += 1

    def pending(self) -> int:
        with self._lock:
            return len(self._heap) - self._dead

    def _start(self) -> None:
        thread = threading.Thread(target=self._run, name="psycancel-timer", daemon=True)
        thread.start()
        self._thread = thread

    def _due(self) -> TimerEntry | None:
        """The next entry to run now (lock held); None after waiting for the next one."""
        heap = self._heap
        while heap and heap[0][_DEAD]:
            heapq.heappop(heap)
            self._dead -= 1
        if not heap:
            self._wake_at = float("inf")
            self._cond.wait()  # until call_at() notifies
            return None
        now = time.monotonic()
        head = heap[0]
        if head[_WHEN] <= now:
            heapq.heappop(heap)
            head[_DEAD] = True  # ran: a later cancel() is a no-op
            return head
        self._wake_at = head[_WHEN]
        self._cond.wait(min(head[_WHEN] - now, _LONGEST_SLEEP))
        self._wake_at = float("inf")
        return None

    def _run(self) -> None:
        while True:
            with self._lock:
                entry = self._due()
            if entry is None:
                continue
            try:
                entry[_CALLBACK]()
            except BaseException:  # one block's failure must not stop the others' timers
                _logger.exception("psycancel timer callback failed")


_service: _Timers | None = None
"""The process's timer service, made on first use (see :func:`_timers`)."""
_service_lock = threading.Lock()


def _timers() -> _Timers:
    """The timer service, made on first use rather than at import.

    So that its lock, condition and thread come from the ``threading`` module
    as it is when the first block runs: a program that imports psycancel and
    only then calls gevent's ``patch_all()`` gets greenlet-friendly ones (a
    real lock waited on by a greenlet would freeze the hub).
    """
    global _service
    service = _service
    if service is None:
        with _service_lock:
            if _service is None:
                _service = _Timers()
            service = _service
    return service


def _after_fork_in_child() -> None:
    """The child of a ``fork`` has no timer thread: start afresh on its first use."""
    global _service, _service_lock
    _service = None
    _service_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def call_at(when: float, callback: Callable[[], object]) -> TimerEntry:
    """Run ``callback()`` in the timer thread at ``when`` (``time.monotonic()`` seconds)."""
    return _timers().call_at(when, callback)


def cancel(entry: TimerEntry) -> None:
    """Never run ``entry``'s callback (if it has not started yet); idempotent, any thread."""
    if not entry[_DEAD]:
        _timers().kill(entry)


def pending() -> int:
    """How many live entries wait (for tests and leak checks)."""
    return _timers().pending()
