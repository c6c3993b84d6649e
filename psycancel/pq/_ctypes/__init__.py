"""The pure-Python twin of ``psycancel.pq``: libpq through ctypes.

It implements the interface and the contract of ``psycancel.pq.abc`` (the
compiled twin, ``psycancel_c._pq``, is its other implementation; the parity
tests hold the two in line). How this twin keeps the contract:

* ctypes releases the GIL around every foreign call (``CDLL``, not
  ``PyDLL``), so blocking libpq calls never stop other Python threads;
* each object's lock is a ``threading.Lock`` taken around *every* libpq call
  on it, getters included;
* the fork generation is a counter that ``os.register_at_fork`` bumps in the
  child (``_common.fork``);
* it has no C driver (``Libpq.native_driver`` is None): its cancels are
  driven by the engine's Python waiters and reactor.

Modules: ``_functions`` (libpq's declarations), ``_library`` (``Libpq``),
``_pgconn`` (``PGconn``), ``_cancel`` (``PGcancelConn``, ``PGcancel``).
"""

from __future__ import annotations

from ._cancel import PGcancel, PGcancelConn
from ._library import Libpq
from ._pgconn import PGconn

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn"]
