"""psycopg 3 connections (sync or async) and their ``pgconn``, whatever the implementation.

psycopg's ``pq`` layer has three implementations (binary, c, python); each
defines its own ``PGconn`` and links (or loads) its own libpq.
"""

from __future__ import annotations

import sys
from typing import Any

from ..errors import InterfaceError
from ..pq import Libpq, PGconn
from .adapter import Adapter, borrow
from .owner import libpq_of_cdll, libpq_of_extension

__all__ = ["ADAPTERS", "libpq_of_pq_module"]

_CTYPES_PQ = "psycopg.pq.pq_ctypes"
"""psycopg's python implementation: its libpq is the ctypes library of ``_pq_ctypes``."""


def libpq_of_pq_module(module_name: str) -> Libpq:
    """The libpq of the psycopg ``pq`` implementation whose ``PGconn`` is in ``module_name``.

    ``psycopg.pq.PGconn.__module__`` names the implementation in use (which
    must be imported): ``psycopg_binary.pq``, ``psycopg_c.pq`` or
    ``psycopg.pq.pq_ctypes``.
    """
    if module_name == _CTYPES_PQ:
        lib_module = sys.modules.get("psycopg.pq._pq_ctypes")
        dll = getattr(lib_module, "pq", None)
        if dll is None:
            raise InterfaceError("psycopg's python implementation has no loaded libpq")
        return libpq_of_cdll(dll, "psycopg's python implementation (psycopg.pq._pq_ctypes)")
    return libpq_of_extension(sys.modules[module_name])


def _pgconn_of_psycopg_pgconn(pgconn: Any, what: str) -> PGconn | None:
    libpq = libpq_of_pq_module(type(pgconn).__module__)
    return borrow(pgconn.pgconn_ptr, libpq, what)


def _connection_pgconn(conn: Any) -> PGconn | None:
    if conn.closed:
        return None
    return _pgconn_of_psycopg_pgconn(conn.pgconn, "psycopg connection")


def _pgconn_pgconn(pgconn: Any) -> PGconn | None:
    return _pgconn_of_psycopg_pgconn(pgconn, "psycopg PGconn")


ADAPTERS = (
    Adapter("psycopg", "BaseConnection", pgconn=_connection_pgconn),
    Adapter("psycopg_binary.pq", "PGconn", pgconn=_pgconn_pgconn),
    Adapter("psycopg_c.pq", "PGconn", pgconn=_pgconn_pgconn),
    Adapter(_CTYPES_PQ, "PGconn", pgconn=_pgconn_pgconn),
)
