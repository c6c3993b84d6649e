"""psycancel: cancel a running PostgreSQL query safely.

Encrypted when the connection is, never blocking an event loop or other
threads, bounded by a timeout. See the README for the full story.
"""

from __future__ import annotations

from ._after import cancel_after, cancel_on_cancellation
from ._api import DEFAULT_TIMEOUT, cancel, cancel_async
from ._canceller import Canceller
from ._interrupt import cancel_on_interrupt
from ._psycopg2_wait import make_psycopg2_wait_callback, psycopg2_wait_callback
from ._typing import Cancellable, SupportsPsycancelPgconn
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

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TIMEOUT",
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
    "psycopg2_wait_callback",
]
