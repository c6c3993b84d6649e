"""What the engine's background threads share: their failure, and a test seam.

The engine runs work in threads of its own: the offload reactor (ctypes twin),
the offload engine and its reporter (compiled twin), the legacy spawner and
its workers. None of them may die silently: each catches whatever ends it,
settles every cancel it was responsible for with :func:`thread_failed` (a
psycancel :class:`~psycancel.errors.Error` whose ``__cause__`` is what
happened), releases what it held, and is replaced by a new one on the next
call.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import Error

__all__ = ["checkpoint", "fault_hook", "thread_failed"]

fault_hook: Callable[[str], None] | None = None
"""Tests only: ``fault_hook(where)`` runs in each background thread at the top
of every round of its loop (``where`` names the thread: ``"offload-reactor"``,
``"offload-engine"``, ``"offload-reporter"``, ``"legacy-spawner"``,
``"legacy-worker"``); an exception it raises is that thread's failure."""


def checkpoint(where: str) -> None:
    """Call :data:`fault_hook` if a test set one (a global read otherwise)."""
    hook = fault_hook
    if hook is not None:
        hook(where)


def thread_failed(what: str, cause: BaseException) -> Error:
    """The error of a cancel abandoned because the thread ``what`` failed."""
    error = Error(
        f"psycancel's {what} failed ({type(cause).__name__}: {cause}); this cancel "
        "was abandoned and its connection closed; the next cancel starts afresh"
    )
    error.__cause__ = cause
    return error
