"""psycopg2 connections (sync and ``async_=True``), through the libpq of ``psycopg2._psycopg``."""

from __future__ import annotations

import sys
from typing import Any

from ..pq import PGconn
from .adapter import Adapter, borrow, closed
from .owner import libpq_of_extension

__all__ = ["ADAPTERS", "MODULE", "psycopg2_pgconn"]

MODULE = "psycopg2._psycopg"
"""psycopg2's extension module: it defines ``connection`` and links psycopg2's libpq."""


def psycopg2_pgconn(conn: Any) -> PGconn:
    """The borrowed ``PGconn`` of an open psycopg2 ``connection``."""
    what = "psycopg2 connection"
    if conn.closed:
        raise closed(what)
    return borrow(conn.pgconn_ptr, libpq_of_extension(sys.modules[MODULE]), what)


ADAPTERS = (Adapter(MODULE, "connection", psycopg2_pgconn),)
