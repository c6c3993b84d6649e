"""psycancel: cancel a running PostgreSQL query safely.

Encrypted when the connection is, never blocking an event loop or other
threads, bounded by a timeout. See the README for the full story.

``import psycancel`` loads only this module and :mod:`psycancel.errors`: each
public name is imported from its module on first use (``__getattr__``), so
that a driver depending on psycancel adds next to nothing to its own import
(``benchmarks/import_cost.py``); asyncio, for one, is imported by the first
asynchronous cancel only.
"""

from __future__ import annotations

from .errors import (
    CancelError,
    CancellationTimeout,
    CancelNotTakenWarning,
    Error,
    InsecureCancelError,
    InsecureCancelWarning,
    InterfaceError,
    OperationalError,
    QueryCancelled,
    QueryInterrupted,
    QueryTimeout,
)

TYPE_CHECKING = False  # (typing.TYPE_CHECKING, without importing typing: mypy knows the name)
if TYPE_CHECKING:
    from typing import Any

    from . import pq as pq
    from ._after import cancel_after, cancel_on_cancellation
    from ._api import DEFAULT_TIMEOUT, cancel, cancel_async
    from ._borrowed import Borrowed
    from ._canceller import Canceller
    from ._interrupt import cancel_on_interrupt
    from ._prepared import PreparedCancel, prepare
    from ._psycopg2_wait import make_psycopg2_wait_callback, psycopg2_wait_callback
    from ._typing import Cancellable, SupportsPsycancelPgconn

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
    "Borrowed",
    "CancelError",
    "CancelNotTakenWarning",
    "Cancellable",
    "CancellationTimeout",
    "Canceller",
    "Error",
    "InsecureCancelError",
    "InsecureCancelWarning",
    "InterfaceError",
    "OperationalError",
    "PreparedCancel",
    "QueryCancelled",
    "QueryInterrupted",
    "QueryTimeout",
    "SupportsPsycancelPgconn",
    "__version__",
    "cancel",
    "cancel_after",
    "cancel_async",
    "cancel_on_cancellation",
    "cancel_on_interrupt",
    "make_psycopg2_wait_callback",
    "prepare",
    "psycopg2_wait_callback",
]

_LAZY = {
    "DEFAULT_TIMEOUT": "._api",
    "cancel": "._api",
    "cancel_async": "._api",
    "cancel_after": "._after",
    "cancel_on_cancellation": "._after",
    "Canceller": "._canceller",
    "cancel_on_interrupt": "._interrupt",
    "make_psycopg2_wait_callback": "._psycopg2_wait",
    "psycopg2_wait_callback": "._psycopg2_wait",
    "Cancellable": "._typing",
    "SupportsPsycancelPgconn": "._typing",
    "Borrowed": "._borrowed",
    "PreparedCancel": "._prepared",
    "prepare": "._prepared",
}
"""Where each public name not imported above lives (imported on first use)."""

if not TYPE_CHECKING:  # (a type checker sees the imports above, and no catch-all)

    def __getattr__(name: str) -> Any:
        """Import a public name's module on first use (PEP 562)."""
        from importlib import import_module

        if name == "pq":
            return import_module(".pq", __name__)
        where = _LAZY.get(name)
        if where is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        value = getattr(import_module(where, __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, "pq"})
