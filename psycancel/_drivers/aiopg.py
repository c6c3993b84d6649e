"""aiopg connections: the psycopg2 connection each wraps (``Connection.raw``)."""

from __future__ import annotations

from typing import Any

from ..errors import InterfaceError
from ..pq import PGconn
from .adapter import Adapter
from .psycopg2 import ADAPTERS as PSYCOPG2
from .psycopg2 import psycopg2_pgconn

__all__ = ["ADAPTERS"]


def _aiopg_pgconn(conn: Any) -> PGconn | None:
    if conn.closed:
        return None
    raw = conn.raw
    if not any(adapter.matches(raw) for adapter in PSYCOPG2):
        raise InterfaceError(f"aiopg connection wraps a {type(raw).__name__}, not psycopg2's")
    return psycopg2_pgconn(raw)


ADAPTERS = (Adapter("aiopg", "Connection", pgconn=_aiopg_pgconn),)
