"""psycopg2 connections (sync and ``async_=True``), through the libpq of ``psycopg2._psycopg``."""

from __future__ import annotations

import sys
from typing import Any

from ..pq import Libpq, PGconn
from .adapter import Adapter, borrow
from .owner import libpq_of_extension

__all__ = ["ADAPTERS", "MODULE", "driver_libpq", "psycopg2_pgconn"]

MODULE = "psycopg2._psycopg"
"""psycopg2's extension module: it defines ``connection`` and links psycopg2's libpq."""


def driver_libpq() -> Libpq:
    """The libpq of psycopg2's connections (``psycopg2._psycopg`` must be imported)."""
    return libpq_of_extension(sys.modules[MODULE])


def psycopg2_pgconn(conn: Any) -> PGconn | None:
    """The borrowed ``PGconn`` of a psycopg2 ``connection``; None once it is closed."""
    if conn.closed:  # 1: closed, 2: broken
        return None
    return borrow(conn.pgconn_ptr, driver_libpq(), "psycopg2 connection")


ADAPTERS = (Adapter(MODULE, "connection", pgconn=psycopg2_pgconn),)
