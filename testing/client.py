"""The tests' query client: connect, run queries, read results.

This is the seam every test, benchmark and tool uses to *make* a connection
(psycancel only ever borrows connections made by someone else). For now it
re-exports the package's ``PGconn`` query methods; the lean-core work moves
the query client here, out of the installed package, and every caller keeps
using ``connect``/``connect_start`` from this module.
"""

from __future__ import annotations

from psycancel.pq import Libpq, PGconn

__all__ = ["Client", "connect", "connect_start"]

Client = PGconn


def connect(conninfo: str, *, libpq: Libpq | None = None) -> PGconn:
    """A connection made (blocking) with ``libpq`` (default: the twin's default)."""
    return PGconn.connect(conninfo, libpq=libpq)


def connect_start(conninfo: str, *, libpq: Libpq | None = None) -> PGconn:
    """A connection started without blocking; drive it with ``connect_poll()``."""
    return PGconn.connect_start(conninfo, libpq=libpq)
