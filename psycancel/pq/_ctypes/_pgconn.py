"""The ctypes twin's ``PGconn``: a borrowed connection (a pointer made by a driver's libpq).

psycancel never makes, queries or finishes a connection: it wraps one that a
driver made (``from_ptr``), reads what a cancel needs (status, socket,
encryption, one connection option), and makes its cancel objects. ``finish()`` only forgets the
pointer.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any, NoReturn

from ...errors import InterfaceError
from .. import messages as M
from ..enums import ConnStatus, conn_status
from ._cancel import PGcancel, PGcancelConn
from ._common import fork, message, refuse_to_pickle
from ._library import Libpq, check_libpq

__all__ = ["PGconn"]

_MAX_ADDRESS = 2 ** (8 * ctypes.sizeof(ctypes.c_void_p)) - 1


class PGconn:
    """A borrowed libpq connection (ctypes twin); see :class:`psycancel.pq.abc.PGconn`."""

    _ptr: int
    _libpq: Libpq
    _f: Any
    _lock: threading.Lock
    _generation: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use PGconn.from_ptr()")

    def __reduce__(self) -> NoReturn:
        refuse_to_pickle(self)

    @classmethod
    def from_ptr(cls, ptr: int, libpq: Libpq) -> PGconn:
        """Wrap a ``PGconn*`` made by ``libpq`` elsewhere; never finished here."""
        lib = check_libpq(libpq)
        if isinstance(ptr, bool) or not isinstance(ptr, int):
            raise InterfaceError(M.pointer_not_int(ptr))
        if ptr <= 0:
            raise InterfaceError(M.POINTER_NULL)
        if ptr > _MAX_ADDRESS:
            raise InterfaceError(M.pointer_not_address(ptr))
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = lib
        self._f = lib.f
        self._lock = threading.Lock()
        self._generation = fork.generation
        return self

    def _check_process(self) -> None:
        """Refuse the parent's object in a forked child (before taking the lock,
        which a thread of the parent may have held at the fork)."""
        if self._generation != fork.generation:
            raise InterfaceError(M.CONN_FORKED)

    def _p(self) -> int:
        """The pointer (the caller holds the lock)."""
        ptr = self._ptr
        if not ptr:
            raise InterfaceError(M.CONN_CLOSED)
        return ptr

    def _int_call(self, func: Any) -> int:
        self._check_process()
        with self._lock:
            return int(func(self._p()))

    @property
    def libpq(self) -> Libpq:
        """The libpq this connection belongs to."""
        return self._libpq

    @property
    def pgconn_ptr(self) -> int:
        """The address of the ``PGconn`` struct."""
        self._check_process()
        return self._p()

    @property
    def closed(self) -> bool:
        """True once :meth:`finish` has run."""
        return not self._ptr

    @property
    def status(self) -> ConnStatus:
        """``PQstatus``."""
        return conn_status(self._int_call(self._f.PQstatus))

    @property
    def error_message(self) -> str:
        """``PQerrorMessage``."""
        self._check_process()
        with self._lock:
            return message(self._f.PQerrorMessage(self._p()))

    @property
    def socket(self) -> int:
        """``PQsocket``."""
        return self._int_call(self._f.PQsocket)

    @property
    def ssl_in_use(self) -> bool:
        """``PQsslInUse``."""
        return bool(self._int_call(self._f.PQsslInUse))

    @property
    def backend_pid(self) -> int:
        """``PQbackendPID``."""
        return self._int_call(self._f.PQbackendPID)

    @property
    def gss_enc_in_use(self) -> bool:
        """``PQgssEncInUse``; False without it (libpq < 12)."""
        func = self._f.PQgssEncInUse
        return func is not None and bool(self._int_call(func))

    def conninfo_option(self, keyword: str) -> str | None:
        """One option of ``PQconninfo``; None if unset or unknown."""
        key = keyword.encode()
        f = self._f
        self._check_process()
        with self._lock:
            options = f.PQconninfo(self._p())
            if not options:
                raise MemoryError("PQconninfo returned NULL")
            try:
                # The array follows libpq's fixed option table: look where the
                # keyword was last time first (one ctypes access, not a scan).
                index = f.conninfo_index.get(key)
                if index is None or options[index].keyword != key:
                    i = 0
                    while (keyword := options[i].keyword) is not None and keyword != key:
                        i += 1
                    if keyword is None:
                        return None
                    f.conninfo_index[key] = index = i
                value: bytes | None = options[index].val
                return value.decode() if value is not None else None
            finally:
                f.PQconninfoFree(options)

    def cancel_conn(self) -> PGcancelConn:
        """A new ``PGcancelConn`` (``PQcancelCreate``)."""
        lib = self._libpq
        if not lib.has_cancel_conn:
            raise InterfaceError(M.no_cancel_conn_api(lib.version, lib.path))
        self._check_process()
        with self._lock:
            ptr = self._f.PQcancelCreate(self._p())
        if not ptr:
            raise MemoryError(M.OOM_CANCEL_CONN)
        return PGcancelConn._wrap(ptr, lib)

    def get_cancel(self) -> PGcancel:
        """A legacy cancel handle (``PQgetCancel``)."""
        self._check_process()
        with self._lock:
            ptr = self._f.PQgetCancel(self._p())
        if not ptr:
            raise InterfaceError(M.NO_CANCEL_INFO)
        return PGcancel._wrap(ptr, self._libpq)

    def finish(self) -> None:
        """Forget the pointer (the connection stays open: its maker finishes it); idempotent."""
        if self._generation != fork.generation:
            self._ptr = 0
            return
        with self._lock:  # no libpq call of another thread is under way after this
            self._ptr = 0

    def __repr__(self) -> str:
        if self._generation != fork.generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "closed"
        return f"<PGconn {state} ptr=0x{self._ptr:x} (ctypes)>"
