"""The pure-Python twin: libpq through ctypes.

ctypes releases the GIL around every foreign call (``CDLL``, not ``PyDLL``),
so blocking libpq calls never stop other Python threads. Each object guards
its pointer and serialises the calls that change its state with a lock, so
misuse raises :class:`InterfaceError` instead of crashing.
"""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import POINTER, c_char, c_char_p, c_int, c_void_p
from typing import Any, ClassVar

from ..errors import CancelError, InterfaceError, OperationalError
from ._libfind import default_libpq_path, library_file_of
from .abc import QueryResult
from .enums import ConnStatus, ExecStatus, PollingStatus, conn_status, polling_status

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn"]

_CANCEL_ERRBUF = 256
_PG_DIAG_SQLSTATE = ord("C")

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


def _text(raw: bytes | None) -> str:
    """libpq's message as text, without the trailing newline."""
    if not raw:
        return ""
    return raw.decode("utf-8", "replace").rstrip("\n")


class Libpq:
    """A loaded libpq (ctypes). Use :meth:`load`; one instance per file."""

    _cache: ClassVar[dict[str, Libpq]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, dll: ctypes.CDLL, path: str) -> None:
        self._dll = dll
        self.f: Any = _Functions(dll)
        self._path = path
        self._version = int(self.f.PQlibVersion())
        self._has_cancel_conn = self.f.has_cancel_conn

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
                lib = cls(dll, real_path)
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
            self._bind(dll, name, restype, argtypes)
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


class PGconn:
    """A libpq connection (ctypes twin); see :class:`psycancel.pq.abc.PGconn`."""

    def __init__(self, ptr: int, libpq: Libpq, *, borrowed: bool) -> None:
        self._ptr = ptr
        self._libpq = libpq
        self._borrowed = borrowed
        self._lock = threading.Lock()

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
            message = _text(lib.f.PQerrorMessage(ptr))
            lib.f.PQfinish(ptr)
            raise OperationalError(f"connection failed: {message}")
        return cls(ptr, lib, borrowed=False)

    @classmethod
    def from_ptr(cls, ptr: int, libpq: Libpq) -> PGconn:
        """Wrap a ``PGconn*`` made by ``libpq`` elsewhere; never finished here."""
        lib = _check_libpq(libpq)
        if isinstance(ptr, bool) or not isinstance(ptr, int):
            raise InterfaceError(f"pgconn pointer must be an int, got {type(ptr).__name__}")
        if ptr <= 0:
            raise InterfaceError("pgconn pointer is NULL (is the connection closed?)")
        return cls(ptr, lib, borrowed=True)

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0) and not self._borrowed:
            self.finish()

    def _p(self) -> int:
        ptr = self._ptr
        if not ptr:
            raise InterfaceError("the connection is closed")
        return ptr

    @property
    def libpq(self) -> Libpq:
        """The libpq this connection belongs to."""
        return self._libpq

    @property
    def pgconn_ptr(self) -> int:
        """The address of the ``PGconn`` struct."""
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
        return conn_status(self._libpq.f.PQstatus(self._p()))

    @property
    def error_message(self) -> str:
        """``PQerrorMessage``."""
        return _text(self._libpq.f.PQerrorMessage(self._p()))

    @property
    def socket(self) -> int:
        """``PQsocket``."""
        return int(self._libpq.f.PQsocket(self._p()))

    @property
    def backend_pid(self) -> int:
        """``PQbackendPID``."""
        return int(self._libpq.f.PQbackendPID(self._p()))

    @property
    def ssl_in_use(self) -> bool:
        """``PQsslInUse``."""
        return bool(self._libpq.f.PQsslInUse(self._p()))

    def connect_poll(self) -> PollingStatus:
        """``PQconnectPoll``."""
        with self._lock:
            return polling_status(self._libpq.f.PQconnectPoll(self._p()))

    def send_query(self, query: str) -> None:
        """``PQsendQuery``; :class:`OperationalError` on failure."""
        with self._lock:
            if not self._libpq.f.PQsendQuery(self._p(), query.encode()):
                raise OperationalError(self.error_message)

    def consume_input(self) -> None:
        """``PQconsumeInput``; :class:`OperationalError` on failure."""
        with self._lock:
            if not self._libpq.f.PQconsumeInput(self._p()):
                raise OperationalError(self.error_message)

    def is_busy(self) -> bool:
        """``PQisBusy``."""
        with self._lock:
            return bool(self._libpq.f.PQisBusy(self._p()))

    def get_result(self) -> QueryResult | None:
        """The next result, copied out and freed; None when there are no more."""
        f = self._libpq.f
        with self._lock:
            res = f.PQgetResult(self._p())
        if not res:
            return None
        try:
            nrows, ncols = f.PQntuples(res), f.PQnfields(res)
            rows = tuple(
                tuple(
                    None if f.PQgetisnull(res, r, c) else _text(f.PQgetvalue(res, r, c))
                    for c in range(ncols)
                )
                for r in range(nrows)
            )
            sqlstate = f.PQresultErrorField(res, _PG_DIAG_SQLSTATE)
            return QueryResult(
                status=ExecStatus(f.PQresultStatus(res)),
                sqlstate=sqlstate.decode() if sqlstate else None,
                message=_text(f.PQresultErrorMessage(res)),
                rows=rows,
            )
        finally:
            f.PQclear(res)

    def cancel_conn(self) -> PGcancelConn:
        """A new ``PGcancelConn`` (``PQcancelCreate``)."""
        if not self._libpq.has_cancel_conn:
            raise InterfaceError(
                f"libpq {self._libpq.version} at {self._libpq.path} has no "
                "PQcancelConn API (needs libpq >= 17)"
            )
        with self._lock:
            ptr = self._libpq.f.PQcancelCreate(self._p())
        if not ptr:
            raise MemoryError("libpq could not allocate a cancel connection")
        return PGcancelConn(ptr, self._libpq)

    def get_cancel(self) -> PGcancel:
        """A legacy cancel handle (``PQgetCancel``)."""
        with self._lock:
            ptr = self._libpq.f.PQgetCancel(self._p())
        if not ptr:
            raise InterfaceError("the connection has no cancel information (not open?)")
        return PGcancel(ptr, self._libpq)

    def finish(self) -> None:
        """``PQfinish`` for an owned connection; idempotent."""
        with self._lock:
            ptr, self._ptr = self._ptr, 0
            if ptr and not self._borrowed:
                self._libpq.f.PQfinish(ptr)

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.status.name
        return f"<PGconn {state} ptr=0x{self._ptr:x} borrowed={self._borrowed} (ctypes)>"


class PGcancelConn:
    """A ``PGcancelConn`` (ctypes twin); see :class:`psycancel.pq.abc.PGcancelConn`."""

    def __init__(self, ptr: int, libpq: Libpq) -> None:
        self._ptr = ptr
        self._libpq = libpq
        self._started = False
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0):
            self.finish()

    def _p(self) -> int:
        ptr = self._ptr
        if not ptr:
            raise InterfaceError("the cancel connection is finished")
        return ptr

    @property
    def closed(self) -> bool:
        """True once :meth:`finish` has run."""
        return not self._ptr

    @property
    def status(self) -> ConnStatus:
        """``PQcancelStatus``."""
        return conn_status(self._libpq.f.PQcancelStatus(self._p()))

    @property
    def socket(self) -> int:
        """``PQcancelSocket``."""
        return int(self._libpq.f.PQcancelSocket(self._p()))

    @property
    def error_message(self) -> str:
        """``PQcancelErrorMessage``."""
        return _text(self._libpq.f.PQcancelErrorMessage(self._p()))

    def _check_allocated(self, ptr: int, what: str) -> None:
        status = self._libpq.f.PQcancelStatus(ptr)
        if status == ConnStatus.BAD and not self._started:
            raise CancelError(_text(self._libpq.f.PQcancelErrorMessage(ptr)))
        if status != ConnStatus.ALLOCATED or self._started:
            raise InterfaceError(
                f"{what}() needs a new or reset cancel connection "
                f"(status {ConnStatus(status).name})"
            )

    def start(self) -> None:
        """``PQcancelStart``."""
        f = self._libpq.f
        with self._lock:
            ptr = self._p()
            self._check_allocated(ptr, "start")
            self._started = True
            if not f.PQcancelStart(ptr):
                raise CancelError(_text(f.PQcancelErrorMessage(ptr)))

    def poll(self) -> PollingStatus:
        """``PQcancelPoll``."""
        with self._lock:
            ptr = self._p()
            if not self._started:
                raise InterfaceError("poll() before start()")
            return polling_status(self._libpq.f.PQcancelPoll(ptr))

    def blocking(self) -> None:
        """``PQcancelBlocking`` (the GIL is released while it waits)."""
        f = self._libpq.f
        with self._lock:
            ptr = self._p()
            self._check_allocated(ptr, "blocking")
            self._started = True
            if not f.PQcancelBlocking(ptr):
                raise CancelError(_text(f.PQcancelErrorMessage(ptr)))

    def reset(self) -> None:
        """``PQcancelReset``."""
        with self._lock:
            self._libpq.f.PQcancelReset(self._p())
            self._started = False

    def finish(self) -> None:
        """``PQcancelFinish``; idempotent."""
        with self._lock:
            ptr, self._ptr = self._ptr, 0
            if ptr:
                self._libpq.f.PQcancelFinish(ptr)

    def __repr__(self) -> str:
        state = "finished" if self.closed else self.status.name
        return f"<PGcancelConn {state} (ctypes)>"


class PGcancel:
    """The legacy cancel handle (ctypes twin)."""

    def __init__(self, ptr: int, libpq: Libpq) -> None:
        self._ptr = ptr
        self._libpq = libpq
        self._lock = threading.Lock()

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0):
            self.free()

    @property
    def closed(self) -> bool:
        """True once :meth:`free` has run."""
        return not self._ptr

    def cancel(self) -> None:
        """``PQcancel`` (blocking, GIL released); :class:`CancelError` on failure."""
        buf = ctypes.create_string_buffer(_CANCEL_ERRBUF)
        with self._lock:
            ptr = self._ptr
            if not ptr:
                raise InterfaceError("the cancel handle is freed")
            ok = self._libpq.f.PQcancel(ptr, buf, _CANCEL_ERRBUF)
        if not ok:
            raise CancelError(_text(buf.value) or "PQcancel failed")

    def free(self) -> None:
        """``PQfreeCancel``; idempotent."""
        with self._lock:
            ptr, self._ptr = self._ptr, 0
            if ptr:
                self._libpq.f.PQfreeCancel(ptr)

    def __repr__(self) -> str:
        return f"<PGcancel {'freed' if self.closed else 'ready'} (ctypes)>"
