"""The pure-Python twin: libpq through ctypes.

ctypes releases the GIL around every foreign call (``CDLL``, not ``PyDLL``),
so blocking libpq calls never stop other Python threads.

* **Locking.** Each object guards its pointer with a lock, taken around
  *every* libpq call on it (getters included), so that ``finish()`` in
  another thread can never free the object under a call. The lock is only
  held for libpq calls that do not wait for the server, except in
  ``PGcancelConn.blocking()`` and the legacy ``PGcancel.cancel()`` (nothing
  else can usefully happen to those objects meanwhile; ``finish()`` waits
  for them), and in ``send_query()`` while a query too large for the
  socket's buffer is being sent. In particular ``PGconn.get_result()`` waits for its socket with
  the lock released (see :meth:`PGconn.get_result`), so another thread can
  ``cancel_conn()``, ``get_cancel()``, read the getters or ``finish()`` the
  connection while a thread waits for a query's result.
* **fork().** Objects belong to the process that made them. After
  ``os.fork()`` the child must neither use nor free the parent's objects
  (``PQfinish`` of an inherited connection would send Terminate on the
  socket that the parent still uses and end its session; a TLS close would
  corrupt the parent's stream). Each object records the *fork generation*
  (bumped in the child by ``os.register_at_fork``) when it is made; in a
  child, ``finish()``/``free()`` and the garbage collector only forget the
  pointer, and every other use raises :class:`InterfaceError`.
* **Misuse raises**, never crashes: the classes cannot be instantiated
  directly (only through ``Libpq.load``, ``PGconn.connect``,
  ``connect_start``, ``from_ptr``, ``cancel_conn`` and ``get_cancel``), so no
  arbitrary pointer reaches libpq without ``from_ptr``'s checks.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import threading
from ctypes import POINTER, c_char, c_char_p, c_int, c_void_p
from typing import Any, ClassVar, NoReturn

from ..errors import CancelError, InterfaceError, OperationalError
from ._libfind import default_libpq_path, library_file_of
from .abc import QueryResult
from .enums import ConnStatus, ExecStatus, PollingStatus, conn_status, polling_status

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn"]

_CANCEL_ERRBUF = 256
_MAX_ADDRESS = 2 ** (8 * ctypes.sizeof(c_void_p)) - 1
_PG_DIAG_SQLSTATE = ord("C")
_WAIT_SLICE = 0.5
"""Seconds: the longest single wait of ``get_result()`` for its socket, after
which it checks again (under the lock) that the connection was not finished
by another thread meanwhile."""

# name: (restype, argtypes); the PQcancel* family is optional (libpq >= 17).
_REQUIRED: dict[str, tuple[Any, list[Any]]] = {
    "PQlibVersion": (c_int, []),
    "PQconnectdb": (c_void_p, [c_char_p]),
    "PQconnectStart": (c_void_p, [c_char_p]),
    "PQconnectPoll": (c_int, [c_void_p]),
    "PQstatus": (c_int, [c_void_p]),
    "PQerrorMessage": (c_char_p, [c_void_p]),
    "PQsocket": (c_int, [c_void_p]),
    "PQbackendPID": (c_int, [c_void_p]),
    "PQsslInUse": (c_int, [c_void_p]),
    "PQsslAttribute": (c_char_p, [c_void_p, c_char_p]),
    "PQsendQuery": (c_int, [c_void_p, c_char_p]),
    "PQflush": (c_int, [c_void_p]),
    "PQconsumeInput": (c_int, [c_void_p]),
    "PQisBusy": (c_int, [c_void_p]),
    "PQgetResult": (c_void_p, [c_void_p]),
    "PQresultStatus": (c_int, [c_void_p]),
    "PQresultErrorField": (c_char_p, [c_void_p, c_int]),
    "PQresultErrorMessage": (c_char_p, [c_void_p]),
    "PQntuples": (c_int, [c_void_p]),
    "PQnfields": (c_int, [c_void_p]),
    "PQgetvalue": (c_char_p, [c_void_p, c_int, c_int]),
    "PQgetisnull": (c_int, [c_void_p, c_int, c_int]),
    "PQclear": (None, [c_void_p]),
    "PQfinish": (None, [c_void_p]),
    "PQgetCancel": (c_void_p, [c_void_p]),
    "PQcancel": (c_int, [c_void_p, POINTER(c_char), c_int]),
    "PQfreeCancel": (None, [c_void_p]),
}
_CANCEL_CONN: dict[str, tuple[Any, list[Any]]] = {
    "PQcancelCreate": (c_void_p, [c_void_p]),
    "PQcancelStart": (c_int, [c_void_p]),
    "PQcancelBlocking": (c_int, [c_void_p]),
    "PQcancelPoll": (c_int, [c_void_p]),
    "PQcancelStatus": (c_int, [c_void_p]),
    "PQcancelSocket": (c_int, [c_void_p]),
    "PQcancelErrorMessage": (c_char_p, [c_void_p]),
    "PQcancelReset": (None, [c_void_p]),
    "PQcancelFinish": (None, [c_void_p]),
}


def _message(raw: bytes | None) -> str:
    """libpq's error message as text, without the trailing newline."""
    if not raw:
        return ""
    return raw.decode("utf-8", "replace").rstrip("\n")


def _value(raw: bytes) -> str:
    """A value of a result row, as text: decoded only, byte-exact."""
    return raw.decode("utf-8", "replace")


def _refuse_to_pickle(obj: object) -> NoReturn:
    """Copies and pickles would share (and finish twice) one libpq pointer."""
    raise TypeError(f"cannot pickle '{type(obj).__module__}.{type(obj).__qualname__}' object")


# =====================================================================================
# fork()
# =====================================================================================

_fork_generation = 0
"""Bumped in the child after every ``os.fork()``; objects record it when made."""


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _forked(what: str) -> str:
    return (
        f"the {what} belongs to the parent process (it was made before os.fork()); "
        "make a new one in this process"
    )


_CONN_FORKED = _forked("connection")
_CANCEL_CONN_FORKED = _forked("cancel connection")
_CANCEL_FORKED = _forked("cancel handle")
_CONN_CLOSED = "the connection is closed"
_CANCEL_CONN_FINISHED = "the cancel connection is finished"
_CANCEL_FREED = "the cancel handle is freed"

# =====================================================================================
# Libpq
# =====================================================================================


class Libpq:
    """A loaded libpq (ctypes). Use :meth:`load`; one instance per file."""

    _cache: ClassVar[dict[str, Libpq]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    _dll: ctypes.CDLL
    f: Any
    _path: str
    _version: int
    _has_cancel_conn: bool

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use Libpq.load() to get a Libpq")

    def __reduce__(self) -> NoReturn:
        _refuse_to_pickle(self)

    @classmethod
    def _create(cls, dll: ctypes.CDLL, path: str) -> Libpq:
        self = object.__new__(cls)
        self._dll = dll
        self.f = _Functions(dll)
        self._path = path
        self._version = int(self.f.PQlibVersion())
        self._has_cancel_conn = self.f.has_cancel_conn
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Libpq:
        """Load libpq from ``path``, ``$PSYCANCEL_LIBPQ`` or the system.

        Raises ``OSError`` if the file cannot be loaded and
        :class:`InterfaceError` if it is not a libpq.
        """
        name = os.fspath(path) if path is not None else default_libpq_path()
        with cls._cache_lock:
            cached = cls._cache.get(name)
            if cached is not None:
                return cached
            dll = ctypes.CDLL(name)
            try:
                version_func = dll.PQlibVersion
            except AttributeError:
                raise InterfaceError(f"{name} is not a libpq (no PQlibVersion)") from None
            real = library_file_of(ctypes.cast(version_func, c_void_p).value or 0)
            real_path = os.path.realpath(real) if real else name
            lib = cls._cache.get(real_path)
            if lib is None:
                lib = cls._create(dll, real_path)
                cls._cache[real_path] = lib
            cls._cache[name] = lib
            return lib

    @property
    def path(self) -> str:
        """The file the library was loaded from."""
        return self._path

    @property
    def version(self) -> int:
        """``PQlibVersion()``: major * 10000 + minor."""
        return self._version

    @property
    def has_cancel_conn(self) -> bool:
        """True if the library exports the ``PQcancelCreate`` family."""
        return self._has_cancel_conn

    @property
    def ssl_library(self) -> str | None:
        """The TLS library libpq was built with, or None."""
        raw = self.f.PQsslAttribute(None, b"library")
        return raw.decode() if raw else None

    def __repr__(self) -> str:
        return f"<Libpq {self._version} {self._path!r} (ctypes)>"


class _Functions:
    """The typed function pointers of one libpq (attributes named as in C)."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name that was not bound: a missing symbol.
        raise AttributeError(f"libpq function {name} is not available")

    def __init__(self, dll: ctypes.CDLL) -> None:
        for name, (restype, argtypes) in _REQUIRED.items():
            try:
                self._bind(dll, name, restype, argtypes)
            except AttributeError:
                raise InterfaceError(f"{dll._name} is not a usable libpq (no {name})") from None
        self.has_cancel_conn = True
        for name, (restype, argtypes) in _CANCEL_CONN.items():
            try:
                self._bind(dll, name, restype, argtypes)
            except AttributeError:
                self.has_cancel_conn = False

    def _bind(self, dll: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> None:
        func = getattr(dll, name)
        func.restype = restype
        func.argtypes = argtypes
        setattr(self, name, func)


def _check_libpq(libpq: object) -> Libpq:
    if not isinstance(libpq, Libpq):
        raise InterfaceError(
            f"expected a ctypes Libpq, got {type(libpq).__name__}: "
            "a connection is only handed to a libpq of the same twin"
        )
    return libpq


# =====================================================================================
# Waiting for a connection's socket (get_result)
# =====================================================================================

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


# =====================================================================================
# PGconn
# =====================================================================================


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
        _refuse_to_pickle(self)

    @classmethod
    def _wrap(cls, ptr: int, libpq: Libpq, borrowed: bool) -> PGconn:
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = libpq
        self._f = libpq.f
        self._borrowed = borrowed
        self._lock = threading.Lock()
        self._waiters = 0  # threads waiting in get_result(); changed under the lock
        self._generation = _fork_generation
        return self

    @classmethod
    def connect(cls, conninfo: str, *, libpq: Libpq | None = None) -> PGconn:
        """Connect and wait (``PQconnectdb``); :class:`OperationalError` on failure."""
        lib = _check_libpq(libpq) if libpq is not None else Libpq.load()
        ptr = lib.f.PQconnectdb(conninfo.encode())
        return cls._checked_new(ptr, lib)

    @classmethod
    def connect_start(cls, conninfo: str, *, libpq: Libpq | None = None) -> PGconn:
        """Begin a non-blocking connection; drive it with :meth:`connect_poll`."""
        lib = _check_libpq(libpq) if libpq is not None else Libpq.load()
        ptr = lib.f.PQconnectStart(conninfo.encode())
        return cls._checked_new(ptr, lib)

    @classmethod
    def _checked_new(cls, ptr: int | None, lib: Libpq) -> PGconn:
        if not ptr:
            raise MemoryError("libpq could not allocate a connection")
        if lib.f.PQstatus(ptr) == ConnStatus.BAD:
            message = _message(lib.f.PQerrorMessage(ptr))
            lib.f.PQfinish(ptr)
            raise OperationalError(f"connection failed: {message}")
        return cls._wrap(ptr, lib, False)

    @classmethod
    def from_ptr(cls, ptr: int, libpq: Libpq) -> PGconn:
        """Wrap a ``PGconn*`` made by ``libpq`` elsewhere; never finished here."""
        lib = _check_libpq(libpq)
        if isinstance(ptr, bool) or not isinstance(ptr, int):
            raise InterfaceError(f"pgconn pointer must be an int, got {type(ptr).__name__}")
        if ptr <= 0:
            raise InterfaceError("pgconn pointer is NULL (is the connection closed?)")
        if ptr > _MAX_ADDRESS:
            raise InterfaceError(f"pgconn pointer 0x{ptr:x} is not a valid address")
        return cls._wrap(ptr, lib, True)

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0) and not self._borrowed:
            self.finish()

    def _check_process(self) -> None:
        """Refuse the parent's object in a forked child (before taking the lock,
        which a thread of the parent may have held at the fork)."""
        if self._generation != _fork_generation:
            raise InterfaceError(_CONN_FORKED)

    def _p(self) -> int:
        """The pointer (the caller holds the lock)."""
        ptr = self._ptr
        if not ptr:
            raise InterfaceError(_CONN_CLOSED)
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
            return _message(self._f.PQerrorMessage(self._p()))

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
                raise OperationalError(_message(f.PQerrorMessage(ptr)))

    def consume_input(self) -> None:
        """``PQconsumeInput``; :class:`OperationalError` on failure."""
        f = self._f
        self._check_process()
        with self._lock:
            ptr = self._p()
            if not f.PQconsumeInput(ptr):
                raise OperationalError(_message(f.PQerrorMessage(ptr)))

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
                            _message(f.PQerrorMessage(ptr)) or "the connection has no socket"
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
            raise InterfaceError(
                f"libpq {lib.version} at {lib.path} has no PQcancelConn API (needs libpq >= 17)"
            )
        self._check_process()
        with self._lock:
            ptr = self._f.PQcancelCreate(self._p())
        if not ptr:
            raise MemoryError("libpq could not allocate a cancel connection")
        return PGcancelConn._wrap(ptr, lib)

    def get_cancel(self) -> PGcancel:
        """A legacy cancel handle (``PQgetCancel``)."""
        self._check_process()
        with self._lock:
            ptr = self._f.PQgetCancel(self._p())
        if not ptr:
            raise InterfaceError("the connection has no cancel information (not open?)")
        return PGcancel._wrap(ptr, self._libpq)

    def finish(self) -> None:
        """``PQfinish`` for an owned connection; idempotent."""
        if self._generation != _fork_generation:
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
        if self._generation != _fork_generation:
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
                None if f.PQgetisnull(res, r, c) else _value(f.PQgetvalue(res, r, c))
                for c in range(ncols)
            )
            for r in range(nrows)
        )
        sqlstate = f.PQresultErrorField(res, _PG_DIAG_SQLSTATE)
        return QueryResult(
            status=ExecStatus(f.PQresultStatus(res)),
            sqlstate=sqlstate.decode() if sqlstate else None,
            message=_message(f.PQresultErrorMessage(res)),
            rows=rows,
        )
    finally:
        f.PQclear(res)


# =====================================================================================
# PGcancelConn
# =====================================================================================


class PGcancelConn:
    """A ``PGcancelConn`` (ctypes twin); see :class:`psycancel.pq.abc.PGcancelConn`."""

    _ptr: int
    _libpq: Libpq
    _f: Any
    _started: bool
    _lock: threading.Lock
    _generation: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use PGconn.cancel_conn()")

    def __reduce__(self) -> NoReturn:
        _refuse_to_pickle(self)

    @classmethod
    def _wrap(cls, ptr: int, libpq: Libpq) -> PGcancelConn:
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = libpq
        self._f = libpq.f
        self._started = False
        self._lock = threading.Lock()
        self._generation = _fork_generation
        return self

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0):
            self.finish()

    def _check_process(self) -> None:
        if self._generation != _fork_generation:
            raise InterfaceError(_CANCEL_CONN_FORKED)

    def _p(self) -> int:
        """The pointer (the caller holds the lock)."""
        ptr = self._ptr
        if not ptr:
            raise InterfaceError(_CANCEL_CONN_FINISHED)
        return ptr

    @property
    def closed(self) -> bool:
        """True once :meth:`finish` has run."""
        return not self._ptr

    @property
    def status(self) -> ConnStatus:
        """``PQcancelStatus``."""
        self._check_process()
        with self._lock:
            return conn_status(self._f.PQcancelStatus(self._p()))

    @property
    def socket(self) -> int:
        """``PQcancelSocket``."""
        self._check_process()
        with self._lock:
            return int(self._f.PQcancelSocket(self._p()))

    @property
    def error_message(self) -> str:
        """``PQcancelErrorMessage``."""
        self._check_process()
        with self._lock:
            return _message(self._f.PQcancelErrorMessage(self._p()))

    def _check_allocated(self, ptr: int, what: str) -> None:
        status = self._f.PQcancelStatus(ptr)
        if status == ConnStatus.BAD and not self._started:
            raise CancelError(_message(self._f.PQcancelErrorMessage(ptr)))
        if status != ConnStatus.ALLOCATED or self._started:
            raise InterfaceError(
                f"{what}() needs a new or reset cancel connection "
                f"(status {conn_status(status).name})"
            )

    def start(self) -> None:
        """``PQcancelStart``."""
        f = self._f
        self._check_process()
        with self._lock:
            ptr = self._p()
            self._check_allocated(ptr, "start")
            self._started = True
            if not f.PQcancelStart(ptr):
                raise CancelError(_message(f.PQcancelErrorMessage(ptr)))

    def poll(self) -> PollingStatus:
        """``PQcancelPoll``."""
        self._check_process()
        with self._lock:
            ptr = self._p()
            if not self._started:
                raise InterfaceError("poll() before start()")
            return polling_status(self._f.PQcancelPoll(ptr))

    def blocking(self) -> None:
        """``PQcancelBlocking`` (the GIL is released while it waits)."""
        f = self._f
        self._check_process()
        with self._lock:
            ptr = self._p()
            self._check_allocated(ptr, "blocking")
            self._started = True
            if not f.PQcancelBlocking(ptr):
                raise CancelError(_message(f.PQcancelErrorMessage(ptr)))

    def reset(self) -> None:
        """``PQcancelReset``."""
        self._check_process()
        with self._lock:
            self._f.PQcancelReset(self._p())
            self._started = False

    def finish(self) -> None:
        """``PQcancelFinish``; idempotent."""
        if self._generation != _fork_generation:
            self._ptr = 0  # the parent's: forget it, never PQcancelFinish here
            return
        with self._lock:
            ptr, self._ptr = self._ptr, 0
        if ptr:
            self._f.PQcancelFinish(ptr)

    def __repr__(self) -> str:
        if self._generation != _fork_generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "finished"
        return f"<PGcancelConn {state} (ctypes)>"


# =====================================================================================
# PGcancel
# =====================================================================================


class PGcancel:
    """The legacy cancel handle (ctypes twin)."""

    _ptr: int
    _libpq: Libpq
    _lock: threading.Lock
    _generation: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use PGconn.get_cancel()")

    def __reduce__(self) -> NoReturn:
        _refuse_to_pickle(self)

    @classmethod
    def _wrap(cls, ptr: int, libpq: Libpq) -> PGcancel:
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = libpq
        self._lock = threading.Lock()
        self._generation = _fork_generation
        return self

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0):
            self.free()

    @property
    def closed(self) -> bool:
        """True once :meth:`free` has run."""
        return not self._ptr

    def cancel(self) -> None:
        """``PQcancel`` (blocking, GIL released); :class:`CancelError` on failure."""
        if self._generation != _fork_generation:
            raise InterfaceError(_CANCEL_FORKED)
        buf = ctypes.create_string_buffer(_CANCEL_ERRBUF)
        with self._lock:
            ptr = self._ptr
            if not ptr:
                raise InterfaceError(_CANCEL_FREED)
            ok = self._libpq.f.PQcancel(ptr, buf, _CANCEL_ERRBUF)
        if not ok:
            raise CancelError(_message(buf.value) or "PQcancel failed")

    def free(self) -> None:
        """``PQfreeCancel``; idempotent."""
        if self._generation != _fork_generation:
            self._ptr = 0  # the parent's: forget it
            return
        with self._lock:
            ptr, self._ptr = self._ptr, 0
        if ptr:
            self._libpq.f.PQfreeCancel(ptr)

    def __repr__(self) -> str:
        if self._generation != _fork_generation:
            return "<PGcancel of the parent process (ctypes)>"
        return f"<PGcancel {'freed' if self.closed else 'ready'} (ctypes)>"
