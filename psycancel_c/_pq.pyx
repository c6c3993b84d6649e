# cython: language_level=3, auto_pickle=False, freethreading_compatible=True
"""The compiled twin of ``psycancel.pq``: libpq through dlopen/dlsym.

It implements the interface and the contract of ``psycancel.pq.abc`` (the
ctypes twin, ``psycancel.pq._ctypes``, is its other implementation; the
parity tests hold the two in line), with the error texts of
``psycancel.pq.messages``. What is particular to this twin:

* **Borrowed connections only**: a ``PGconn`` wraps a pointer that a
  driver's libpq made (``from_ptr``); psycancel never connects, queries or
  finishes one.
* **No libpq at build or link time**: no libpq header is included, nothing
  but the C library is linked. Every function
  is a ``noexcept nogil`` function-pointer type (``libpq.pxd``) resolved
  with ``dlsym`` on a handle from ``dlopen(path, RTLD_NOW | RTLD_LOCAL)``,
  so two libpqs (say 15 and 18) can live in one process; a missing
  ``PQcancel*`` symbol means ``has_cancel_conn`` is False. Handles are never
  closed: every object keeps its :class:`Libpq`, which the cache keeps.
* **The GIL** is released explicitly (``nogil``) around every libpq call
  that can block or do network / TLS work; cheap getters keep it.
* **Locking**: a ``cython.pymutex`` per object, taken only after the GIL is
  released, and a lock-free path for cheap calls while the GIL suffices
  (``_common.pyx``); on a free-threaded CPython every call locks, and the
  module declares itself free-threading compatible (the GIL stays off).
* **The fork generation** is a C counter bumped in the child by
  ``os.register_at_fork``.
* **A C driver**, ``NATIVE_DRIVER`` (``Libpq.native_driver``): whole cancels
  without the GIL, in the calling thread or in an offload engine's thread
  (``_driver.pyx``, ``_engine.pyx``, ``docs/offload.md``).

One extension module built from this file and the files it includes:
``_common.pyx`` (text decoding, enum members, fork generation, locking helpers),
``_library.pyx`` (``Libpq``), ``_pgconn.pyx`` (``PGconn``), ``_cancel.pyx``
(``PGcancelConn``, ``PGcancel``), ``_driver.pyx`` (``run_blocking``,
``NATIVE_DRIVER``) and ``_engine.pyx`` (``OffloadEngine``).
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EINTR, errno
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free
from libc.string cimport strcmp, strdup, strerror, strlen
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlerror, dlopen, dlsym

from psycancel_c.libpq cimport (
    POLLIN, POLLOUT, Functions, PGcancel_t, PGcancelConn_t, PGconn_t, PQconninfoOption_t,
    fn_cancel, fn_cancel_create, fn_cc_int, fn_cc_text, fn_cc_void, fn_conn_int, fn_conn_text,
    fn_conninfo, fn_conninfo_free, fn_free_cancel, fn_get_cancel, fn_lib_version,
    fn_ssl_attribute, nfds_t, poll, pollfd,
)

import os
import threading

from psycancel.errors import CancelError, InterfaceError
from psycancel.pq import messages as M
from psycancel.pq.enums import ConnStatus, PollingStatus
from psycancel.pq.libfind import default_libpq_path, library_file_of

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn"]

include "_common.pyx"
include "_library.pyx"
include "_pgconn.pyx"
include "_cancel.pyx"
include "_driver.pyx"
include "_engine.pyx"
