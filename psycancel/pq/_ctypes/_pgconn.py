"""The ctypes twin's ``PGconn``: a connection, owned or borrowed, and its queries.

``get_result()`` waits for its socket in slices of ``_WAIT_SLICE`` seconds
with the object's lock released (the locking rule of ``psycancel.pq.abc``),
and re-checks under the lock after each slice that no other thread finished
the connection meanwhile.
"""

from __future__ import annotations

import contextlib
import ctypes
import select
import socket
import threading
from typing import Any, NoReturn

from ...errors import InterfaceError, OperationalError
from .. import messages as M
from ..abc import QueryResult
from ..enums import ConnStatus, ExecStatus, PollingStatus, conn_status, polling_status
from ._cancel import PGcancel, PGcancelConn
from ._common import fork, message, refuse_to_pickle, value
from ._library import Libpq, check_libpq

__all__ = ["PGconn"]

_MAX_ADDRESS = 2 ** (8 * ctypes.sizeof(ctypes.c_void_p)) - 1
_PG_DIAG_SQLSTATE = ord("C")
_WAIT_SLICE = 0.5
"""Seconds: the longest single wait of ``get_result()`` for its socket, after
which it checks again (under the lock) that the connection was not finished
by another thread meanwhile."""

if hasattr(select, "poll"):
    _POLLIN = select.POLLIN
    _POLLOUT = select.POLLOUT
    _SLICE_MS = int(_WAIT_SLICE * 1000)

    def _wait_socket(fd: int, write: bool) -> None:
        """Wait (GIL released) until ``fd`` is readable (or writable), at most a slice."""
        poller = select.poll()
        poller.register(fd, _POLLIN | _POLLOUT if write else _POLLIN)
        poller.poll(_SLICE_MS)  # a closed fd reports POLLNVAL at once

else:  # pragma: no cover - platforms without poll()

    def _wait_socket(fd: int, write: bool) -> None:
        """Wait (GIL released) until ``fd`` is readable (or writable), at most a slice."""
        with contextlib.suppress(OSError, ValueError):  # closed meanwhile: checked later
            select.select([fd], [fd] if write else [], [fd], _WAIT_SLICE)


def _shutdown_read(fd: int) -> None:
    """Wake the threads waiting for ``fd`` to be readable (``shutdown(SHUT_RD)``).

    Writing stays possible, so ``PQfinish`` still sends Terminate.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    finally:
        sock.detach()


class PGconn:
    """A libpq connection (ctypes twin); see :class:`psycancel.pq.abc.PGconn`."""

    _ptr: int
    _libpq: Libpq
    _f: Any
    _borrowed: bool
    _lock: threading.Lock
    _waiters: int
    _generation: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use PGconn.connect(), connect_start() or from_ptr()")

    def __reduce__(self) -> NoReturn:
        refuse_to_pickle(self)

    @classmethod
    def _wrap(cls, ptr: int, libpq: Libpq, borrowed: bool) -> PGconn:
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = libpq
        self._f = libpq.f
        self._borrowed = borrowed
        self._lock = threading.Lock()
        self._waiters = 0  # threads waiting in get_result(); changed under the lock
        self._generation = fork.generation
        return self

    @classmethod
    def connect(cls, conninfo: str, *, libpq: Libpq | None = None) -> PGconn:
        """Connect and wait (``PQconnectdb``); :class:`OperationalError` on failure."""
        lib = check_libpq(libpq) if libpq is not None else Libpq.load()
        ptr = lib.f.PQconnectdb(conninfo.encode())
        return cls._checked_new(ptr, lib)

    @classmethod
    def connect_start(cls, conninfo: str, *, libpq: Libpq | None = None) -> PGconn:
        """Begin a non-blocking connection; drive it with :meth:`connect_poll`."""
        lib = check_libpq(libpq) if libpq is not None else Libpq.load()
        ptr = lib.f.PQconnectStart(conninfo.encode())
        return cls._checked_new(ptr, lib)

    @classmethod
    def _checked_new(cls, ptr: int | None, lib: Libpq) -> PGconn:
        if not ptr:
            raise MemoryError(M.OOM_CONN)
        if lib.f.PQstatus(ptr) == ConnStatus.BAD:
            text = message(lib.f.PQerrorMessage(ptr))
            lib.f.PQfinish(ptr)
            raise OperationalError(M.connection_failed(text))
        return cls._wrap(ptr, lib, False)

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
        return cls._wrap(ptr, lib, True)

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0) and not self._borrowed:
            self.finish()

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
    def borrowed(self) -> bool:
        """True when psycancel never finishes the pointer."""
        return self._borrowed

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
    def backend_pid(self) -> int:
        """``PQbackendPID``."""
        return self._int_call(self._f.PQbackendPID)

    @property
    def ssl_in_use(self) -> bool:
        """``PQsslInUse``."""
        return bool(self._int_call(self._f.PQsslInUse))

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

    def connect_poll(self) -> PollingStatus:
        """``PQconnectPoll``."""
        return polling_status(self._int_call(self._f.PQconnectPoll))

    def send_query(self, query: str) -> None:
        """``PQsendQuery``; :class:`OperationalError` on failure."""
        data = query.encode()
        f = self._f
        self._check_process()
        with self._lock:
            ptr = self._p()
            if not f.PQsendQuery(ptr, data):
                raise OperationalError(message(f.PQerrorMessage(ptr)))

    def consume_input(self) -> None:
        """``PQconsumeInput``; :class:`OperationalError` on failure."""
        f = self._f
        self._check_process()
        with self._lock:
            ptr = self._p()
            if not f.PQconsumeInput(ptr):
                raise OperationalError(message(f.PQerrorMessage(ptr)))

    def is_busy(self) -> bool:
        """``PQisBusy``."""
        return bool(self._int_call(self._f.PQisBusy))

    def get_result(self) -> QueryResult | None:
        """The next result, copied out and freed; None when there are no more.

        Waits for the server without holding the connection's lock: under the
        lock it only makes calls that do not wait (``PQflush``,
        ``PQconsumeInput``, ``PQisBusy``, and ``PQgetResult`` once
        ``PQisBusy`` says that it will not block); between them it waits for
        the socket with the lock released, so other threads can cancel,
        read the getters or finish the connection meanwhile. If another
        thread finishes the connection, this one raises
        :class:`InterfaceError` (at once for an owned connection, whose
        socket is shut down for reading first; within a short slice for a
        borrowed one). A signal handler that raises interrupts the wait.
        """
        f = self._f
        self._check_process()
        waiting = False
        try:
            while True:
                with self._lock:
                    if waiting:
                        self._waiters -= 1
                        waiting = False
                    ptr = self._p()
                    if not f.PQisBusy(ptr):
                        res = f.PQgetResult(ptr)  # does not block now
                        break
                    flushed = f.PQflush(ptr)
                    consumed = f.PQconsumeInput(ptr)
                    if not f.PQisBusy(ptr):
                        res = f.PQgetResult(ptr)
                        break
                    fd = f.PQsocket(ptr) if consumed and flushed >= 0 else -1
                    if fd < 0:
                        raise OperationalError(
                            message(f.PQerrorMessage(ptr)) or "the connection has no socket"
                        )
                    self._waiters += 1
                    waiting = True
                _wait_socket(fd, flushed > 0)
        finally:
            if waiting:
                with self._lock:
                    self._waiters -= 1
        if not res:
            return None
        return _copy_result(f, res)

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
        """``PQfinish`` for an owned connection; idempotent."""
        if self._generation != fork.generation:
            self._ptr = 0  # the parent's connection: forget it, never PQfinish here
            return
        f = self._f
        fd = -1
        with self._lock:
            ptr, self._ptr = self._ptr, 0
            if ptr and not self._borrowed and self._waiters:
                fd = f.PQsocket(ptr)
        # The pointer is this thread's alone now: no lock needed.
        if ptr and not self._borrowed:
            if fd >= 0:
                _shutdown_read(fd)  # wake the threads in get_result()
            f.PQfinish(ptr)

    def __repr__(self) -> str:
        if self._generation != fork.generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "closed"
        return f"<PGconn {state} ptr=0x{self._ptr:x} borrowed={self._borrowed} (ctypes)>"


def _copy_result(f: Any, res: int) -> QueryResult:
    """A ``QueryResult`` copied out of ``res``, which is cleared."""
    try:
        nrows, ncols = f.PQntuples(res), f.PQnfields(res)
        rows = tuple(
            tuple(
                None if f.PQgetisnull(res, r, c) else value(f.PQgetvalue(res, r, c))
                for c in range(ncols)
            )
            for r in range(nrows)
        )
        sqlstate = f.PQresultErrorField(res, _PG_DIAG_SQLSTATE)
        return QueryResult(
            status=ExecStatus(f.PQresultStatus(res)),
            sqlstate=sqlstate.decode() if sqlstate else None,
            message=message(f.PQresultErrorMessage(res)),
            rows=rows,
        )
    finally:
        f.PQclear(res)
