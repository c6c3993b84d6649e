"""The error texts both twins raise, written once.

The ctypes twin (``psycancel.pq._ctypes``) and the compiled twin
(``psycancel_c._pq``) import these, so that a test, a log or a user matching
a message sees the same words whichever twin is active.
"""

from __future__ import annotations

__all__ = [
    "CANCEL_CONN_FINISHED",
    "CANCEL_CONN_FORKED",
    "CANCEL_FORKED",
    "CANCEL_FREED",
    "CONN_CLOSED",
    "CONN_FORKED",
    "NO_CANCEL_INFO",
    "OOM_CANCEL_CONN",
    "POINTER_NULL",
    "POLL_BEFORE_START",
    "forked",
    "needs_allocated",
    "no_cancel_conn_api",
    "not_a_libpq",
    "not_usable_libpq",
    "other_twin_libpq",
    "pointer_not_address",
    "pointer_not_int",
]


def forked(what: str) -> str:
    """The text of the fork rule: ``what`` was made by the parent process."""
    return (
        f"the {what} belongs to the parent process (it was made before os.fork()); "
        "make a new one in this process"
    )


CONN_FORKED = forked("connection")
CANCEL_CONN_FORKED = forked("cancel connection")
CANCEL_FORKED = forked("cancel handle")
CONN_CLOSED = "the connection is closed"
CANCEL_CONN_FINISHED = "the cancel connection is finished"
CANCEL_FREED = "the cancel handle is freed"
POLL_BEFORE_START = "poll() before start()"
NO_CANCEL_INFO = "the connection has no cancel information (not open?)"
OOM_CANCEL_CONN = "libpq could not allocate a cancel connection"
POINTER_NULL = "pgconn pointer is NULL (is the connection closed?)"


def pointer_not_int(ptr: object) -> str:
    """``from_ptr`` was given something that is not an int."""
    return f"pgconn pointer must be an int, got {type(ptr).__name__}"


def pointer_not_address(ptr: int) -> str:
    """``from_ptr`` was given an int too large to be an address."""
    return f"pgconn pointer 0x{ptr:x} is not a valid address"


def not_a_libpq(name: str) -> str:
    """``Libpq.load`` opened a library without ``PQlibVersion``."""
    return f"{name} is not a libpq (no PQlibVersion)"


def not_usable_libpq(name: str, symbol: str) -> str:
    """``Libpq.load`` found a libpq that lacks a required symbol."""
    return f"{name} is not a usable libpq (no {symbol})"


def other_twin_libpq(kind: str, got: object) -> str:
    """A ``Libpq`` of the other twin was passed (``kind``: "ctypes" or "compiled")."""
    return (
        f"expected a {kind} Libpq, got {type(got).__name__}: "
        "a connection is only handed to a libpq of the same twin"
    )


def no_cancel_conn_api(version: int, path: str) -> str:
    """``cancel_conn()`` on a libpq < 17."""
    return f"libpq {version} at {path} has no PQcancelConn API (needs libpq >= 17)"


def needs_allocated(what: str, status_name: str) -> str:
    """``start()``/``blocking()`` on a cancel connection that is not new or reset."""
    return f"{what}() needs a new or reset cancel connection (status {status_name})"
