"""The tests' query client: connect, run queries, read results, finish.

psycancel only ever *borrows* connections made by someone else (a driver);
the tests, benchmarks, the soak tool and the demo need something that makes
connections and runs queries, and this is it: a small ctypes client, not
installed with the package. It loads the same libpq file as the ``Libpq``
object it is given (``dlopen`` of one file returns one handle, so the
``PGconn*`` it makes belongs to that ``Libpq``), and hands its pointer to
``PGconn.from_ptr`` of that ``Libpq``'s twin: :attr:`Client.pgconn` is the
production wrapper, and ``psycancel.cancel(client)`` resolves it through the
driver protocol (``__psycancel_pgconn__``) like any driver's connection.

Threads: every libpq call on a client is made under its lock, except the
waits of :meth:`Client.get_result`, which wait for the socket with the lock
released (in slices), so another thread can cancel the query or finish the
client meanwhile (the waiter then raises ``InterfaceError``; at once, since
``finish()`` shuts the socket down for reading first). In a forked child,
``finish()`` only forgets the parent's connection.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import threading
from ctypes import c_char_p, c_int, c_void_p
from enum import IntEnum
from typing import Any, NamedTuple

from psycancel.errors import InterfaceError, OperationalError
from psycancel.pq import Libpq, import_twin
from psycancel.pq.abc import PGcancel, PGcancelConn, PGconn
from psycancel.pq.enums import ConnStatus, PollingStatus

__all__ = ["Client", "ExecStatus", "QueryResult", "connect", "connect_start", "twin_of"]

_PG_DIAG_SQLSTATE = ord("C")
_WAIT_SLICE = 0.5
"""Seconds: the longest single wait of ``get_result()`` for its socket."""

_FUNCTIONS: dict[str, tuple[Any, list[Any]]] = {
    "PQconnectdb": (c_void_p, [c_char_p]),
    "PQconnectStart": (c_void_p, [c_char_p]),
    "PQconnectPoll": (c_int, [c_void_p]),
    "PQstatus": (c_int, [c_void_p]),
    "PQerrorMessage": (c_char_p, [c_void_p]),
    "PQsocket": (c_int, [c_void_p]),
    "PQbackendPID": (c_int, [c_void_p]),
    "PQsslInUse": (c_int, [c_void_p]),
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
}


class ExecStatus(IntEnum):
    """``ExecStatusType``: the status of a query result."""

    EMPTY_QUERY = 0
    COMMAND_OK = 1
    TUPLES_OK = 2
    COPY_OUT = 3
    COPY_IN = 4
    BAD_RESPONSE = 5
    NONFATAL_ERROR = 6
    FATAL_ERROR = 7
    COPY_BOTH = 8
    SINGLE_TUPLE = 9
    PIPELINE_SYNC = 10
    PIPELINE_ABORTED = 11
    TUPLES_CHUNK = 12


class QueryResult(NamedTuple):
    """A query result, copied out of libpq's ``PGresult`` (which is freed)."""

    status: ExecStatus
    """``PQresultStatus``."""
    sqlstate: str | None
    """The SQLSTATE of an error result (``"57014"`` when cancelled), else None."""
    message: str
    """``PQresultErrorMessage`` (empty when the query succeeded)."""
    rows: tuple[tuple[str | None, ...], ...]
    """The rows as text (``None`` for SQL NULL), exactly as the server sent them."""


class _Functions:
    """The client's libpq functions, bound on the file of one ``Libpq``."""

    def __init__(self, path: str) -> None:
        dll = ctypes.CDLL(path)  # the same handle as the Libpq's: one file, one dlopen
        for name, (restype, argtypes) in _FUNCTIONS.items():
            func = getattr(dll, name)
            func.restype = restype
            func.argtypes = argtypes
            setattr(self, name, func)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)


_bound: dict[str, _Functions] = {}
_bound_lock = threading.Lock()


def _functions(libpq: Libpq) -> _Functions:
    with _bound_lock:
        f = _bound.get(libpq.path)
        if f is None:
            f = _bound[libpq.path] = _Functions(libpq.path)
        return f


def twin_of(libpq: Libpq) -> Any:
    """The twin module (``psycancel.pq._ctypes`` or ``psycancel_c._pq``) of ``libpq``.

    Only the twin that made ``libpq`` is looked at (the other is never imported).
    """
    module = type(libpq).__module__
    if module.startswith("psycancel.pq._ctypes"):
        twin = import_twin("python")
    elif module.startswith("psycancel_c."):
        twin = import_twin("c")
    else:
        raise InterfaceError(f"not a psycancel Libpq: {libpq!r}")
    if not isinstance(libpq, twin.Libpq):
        raise InterfaceError(f"not a psycancel Libpq: {libpq!r}")
    return twin


def _message(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace").rstrip("\n") if raw else ""


def _wait_socket(fd: int, write: bool) -> None:
    """Wait until ``fd`` is readable (or writable), at most a slice."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLOUT if write else select.POLLIN)
        poller.poll(int(_WAIT_SLICE * 1000))  # a closed fd reports POLLNVAL at once
        return
    with contextlib.suppress(OSError, ValueError):  # pragma: no cover
        select.select([fd], [fd] if write else [], [fd], _WAIT_SLICE)


def _shutdown_read(fd: int) -> None:
    """Wake the threads waiting for ``fd`` (``PQfinish`` can still send Terminate)."""
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


class Client:
    """One connection made by the tests' client; see the module's docstring."""

    pgconn: PGconn
    """The production wrapper of this connection (``PGconn.from_ptr`` of its twin)."""

    def __init__(self, ptr: int, libpq: Libpq) -> None:
        self._f = _functions(libpq)
        self._libpq = libpq
        self._ptr = ptr
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._waiters = 0  # threads waiting in get_result(); changed under the lock
        self.pgconn = twin_of(libpq).PGconn.from_ptr(ptr, libpq)

    @classmethod
    def _new(cls, conninfo: str, libpq: Libpq | None, start: bool) -> Client:
        lib = libpq if libpq is not None else Libpq.load()
        f = _functions(lib)
        ptr = (f.PQconnectStart if start else f.PQconnectdb)(conninfo.encode())
        if not ptr:
            raise MemoryError("libpq could not allocate a connection")
        if f.PQstatus(ptr) == ConnStatus.BAD:
            text = _message(f.PQerrorMessage(ptr))
            f.PQfinish(ptr)
            raise OperationalError(f"connection failed: {text}")
        return cls(ptr, lib)

    # The driver protocol: psycancel.cancel(client) cancels through self.pgconn.

    def __psycancel_pgconn__(self) -> PGconn:
        """The borrowed ``PGconn`` psycancel cancels (closed once :meth:`finish` ran)."""
        return self.pgconn

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0):
            self.finish()

    def _p(self) -> int:
        if self._pid != os.getpid():
            raise InterfaceError("the client connection belongs to the parent process")
        if not self._ptr:
            raise InterfaceError("the connection is closed")
        return self._ptr

    def _int_call(self, func: Any) -> int:
        with self._lock:
            return int(func(self._p()))

    @property
    def libpq(self) -> Libpq:
        """The libpq this connection was made with."""
        return self._libpq

    @property
    def closed(self) -> bool:
        """True once :meth:`finish` has run."""
        return not self._ptr

    @property
    def pgconn_ptr(self) -> int:
        """The address of the ``PGconn`` struct."""
        with self._lock:
            return self._p()

    @property
    def status(self) -> ConnStatus:
        """``PQstatus``."""
        return ConnStatus(self._int_call(self._f.PQstatus))

    @property
    def error_message(self) -> str:
        """``PQerrorMessage``."""
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

    def cancel_conn(self) -> PGcancelConn:
        """``self.pgconn.cancel_conn()``: psycancel's ``PQcancelCreate``."""
        return self.pgconn.cancel_conn()

    def get_cancel(self) -> PGcancel:
        """``self.pgconn.get_cancel()``: psycancel's ``PQgetCancel``."""
        return self.pgconn.get_cancel()

    def connect_poll(self) -> PollingStatus:
        """``PQconnectPoll``."""
        return PollingStatus(self._int_call(self._f.PQconnectPoll))

    def send_query(self, query: str) -> None:
        """``PQsendQuery``; :class:`OperationalError` on failure."""
        data = query.encode()
        with self._lock:
            ptr = self._p()
            if not self._f.PQsendQuery(ptr, data):
                raise OperationalError(_message(self._f.PQerrorMessage(ptr)))

    def consume_input(self) -> None:
        """``PQconsumeInput``; :class:`OperationalError` on failure."""
        with self._lock:
            ptr = self._p()
            if not self._f.PQconsumeInput(ptr):
                raise OperationalError(_message(self._f.PQerrorMessage(ptr)))

    def is_busy(self) -> bool:
        """``PQisBusy``."""
        return bool(self._int_call(self._f.PQisBusy))

    def get_result(self) -> QueryResult | None:
        """The next result, copied out and freed; None when there are no more.

        Waits for the socket with the lock released (see the module's docstring).
        """
        f = self._f
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

    def execute(self, query: str) -> QueryResult:
        """Run ``query`` and return its first result (later ones are read and dropped)."""
        self.send_query(query)
        first = self.get_result()
        assert first is not None
        while self.get_result() is not None:
            pass
        return first

    def finish(self) -> None:
        """``PQfinish`` (idempotent); :attr:`pgconn` then reads as closed."""
        self.pgconn.finish()  # forget the pointer first: nothing cancels a freed one
        if self._pid != os.getpid():
            self._ptr = 0  # the parent's connection: never PQfinish it here
            return
        fd = -1
        with self._lock:
            ptr, self._ptr = self._ptr, 0
            if ptr and self._waiters:
                fd = self._f.PQsocket(ptr)
        if ptr:
            if fd >= 0:
                _shutdown_read(fd)  # wake the threads in get_result()
            self._f.PQfinish(ptr)

    def __repr__(self) -> str:
        state = "closed" if not self._ptr else "open"
        return f"<testing.client.Client {state} ptr=0x{self._ptr:x} {self._libpq!r}>"


def _copy_result(f: Any, res: int) -> QueryResult:
    try:
        nrows, ncols = f.PQntuples(res), f.PQnfields(res)
        rows = tuple(
            tuple(
                None
                if f.PQgetisnull(res, r, c)
                else f.PQgetvalue(res, r, c).decode("utf-8", "replace")
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


def connect(conninfo: str, *, libpq: Libpq | None = None) -> Client:
    """A connection made (blocking, ``PQconnectdb``) with ``libpq`` (default: ``Libpq.load()``)."""
    return Client._new(conninfo, libpq, start=False)


def connect_start(conninfo: str, *, libpq: Libpq | None = None) -> Client:
    """A connection started without blocking (``PQconnectStart``); see ``connect_poll()``."""
    return Client._new(conninfo, libpq, start=True)
