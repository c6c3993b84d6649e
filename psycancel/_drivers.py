"""Adapters: a driver's connection -> (PGconn pointer, the libpq that owns it).

Supported: psycopg2 connections (sync and ``async_=True``), hence aiopg's
(``Connection`` or its ``raw``), and psycopg 3 connections (sync or async,
whatever ``psycopg.pq`` implementation is active) and their ``pgconn``.

A driver is recognised only if the program imported it already: every check
starts from ``sys.modules``, so dispatch never imports a driver (nor pays for
its import).
"""

from __future__ import annotations

import sys
from typing import Any

from ._owner import libpq_of_cdll, libpq_of_extension
from .errors import InterfaceError
from .pq import Libpq, PGconn

__all__ = ["driver_pgconn"]

_PSYCOPG_PQ_MODULES = ("psycopg_binary.pq", "psycopg_c.pq", "psycopg.pq.pq_ctypes")
"""Where psycopg 3 defines its ``PGconn`` (binary, c and python implementations)."""


def _closed(what: str) -> InterfaceError:
    return InterfaceError(f"the {what} is closed")


def _borrow(ptr: object, libpq: Libpq, what: str) -> PGconn:
    if ptr is None or ptr == 0:
        raise _closed(what)
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise InterfaceError(f"the {what} gave a PGconn pointer of type {type(ptr).__name__}")
    return PGconn.from_ptr(ptr, libpq)


def _instance_of(conn: object, module_name: str, attr: str) -> bool:
    module = sys.modules.get(module_name)
    cls = getattr(module, attr, None) if module is not None else None
    return isinstance(cls, type) and isinstance(conn, cls)


def _psycopg2(conn: Any) -> PGconn:
    what = "psycopg2 connection"
    if conn.closed:
        raise _closed(what)
    ext = sys.modules["psycopg2._psycopg"]
    return _borrow(conn.pgconn_ptr, libpq_of_extension(ext), what)


def _psycopg_pgconn(pgconn: Any, what: str) -> PGconn:
    """psycopg 3's own ``pq.PGconn`` (any implementation)."""
    module_name = type(pgconn).__module__
    if module_name == "psycopg.pq.pq_ctypes":
        lib_module = sys.modules.get("psycopg.pq._pq_ctypes")
        dll = getattr(lib_module, "pq", None)
        if dll is None:
            raise InterfaceError("psycopg's python implementation has no loaded libpq")
        libpq = libpq_of_cdll(dll, "psycopg's python implementation (psycopg.pq._pq_ctypes)")
    else:
        libpq = libpq_of_extension(sys.modules[module_name])
    return _borrow(pgconn.pgconn_ptr, libpq, what)


def _is_psycopg_pgconn(obj: object) -> bool:
    cls = type(obj)
    return cls.__name__ == "PGconn" and cls.__module__ in _PSYCOPG_PQ_MODULES


def driver_pgconn(conn: object) -> PGconn | None:
    """A borrowed ``PGconn`` for a known driver's connection; None if not one.

    :class:`InterfaceError` for a recognised connection that is closed or whose
    libpq cannot be determined.
    """
    if _instance_of(conn, "psycopg2._psycopg", "connection"):
        return _psycopg2(conn)
    if _instance_of(conn, "psycopg", "BaseConnection"):
        what = "psycopg connection"
        if conn.closed:  # type: ignore[attr-defined]
            raise _closed(what)
        return _psycopg_pgconn(conn.pgconn, what)  # type: ignore[attr-defined]
    if _is_psycopg_pgconn(conn):
        return _psycopg_pgconn(conn, "psycopg PGconn")
    if _instance_of(conn, "aiopg", "Connection"):
        if conn.closed:  # type: ignore[attr-defined]
            raise _closed("aiopg connection")
        raw = conn.raw  # type: ignore[attr-defined]
        if not _instance_of(raw, "psycopg2._psycopg", "connection"):
            raise InterfaceError(f"aiopg connection wraps a {type(raw).__name__}, not psycopg2's")
        return _psycopg2(raw)
    return None
