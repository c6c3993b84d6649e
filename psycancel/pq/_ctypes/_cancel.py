"""The ctypes twin's cancel objects: ``PGcancelConn`` (libpq >= 17) and legacy ``PGcancel``."""

from __future__ import annotations

import ctypes
import threading
from typing import Any, NoReturn

from ...errors import CancelError, InterfaceError
from .. import messages as M
from ..enums import ConnStatus, PollingStatus, conn_status, polling_status
from ._common import fork, message, refuse_to_pickle
from ._library import Libpq

__all__ = ["PGcancel", "PGcancelConn"]

_CANCEL_ERRBUF = 256


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
        refuse_to_pickle(self)

    @classmethod
    def _wrap(cls, ptr: int, libpq: Libpq) -> PGcancelConn:
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = libpq
        self._f = libpq.f
        self._started = False
        self._lock = threading.Lock()
        self._generation = fork.generation
        return self

    def __del__(self) -> None:
        if getattr(self, "_ptr", 0):
            self.finish()

    def _check_process(self) -> None:
        if self._generation != fork.generation:
            raise InterfaceError(M.CANCEL_CONN_FORKED)

    def _p(self) -> int:
        """The pointer (the caller holds the lock)."""
        ptr = self._ptr
        if not ptr:
            raise InterfaceError(M.CANCEL_CONN_FINISHED)
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
            return message(self._f.PQcancelErrorMessage(self._p()))

    def _check_allocated(self, ptr: int, what: str) -> None:
        status = self._f.PQcancelStatus(ptr)
        if status == ConnStatus.BAD and not self._started:
            raise CancelError(message(self._f.PQcancelErrorMessage(ptr)))
        if status != ConnStatus.ALLOCATED or self._started:
            raise InterfaceError(M.needs_allocated(what, conn_status(status).name))

    def start(self) -> None:
        """``PQcancelStart``."""
        f = self._f
        self._check_process()
        with self._lock:
            ptr = self._p()
            self._check_allocated(ptr, "start")
            self._started = True
            if not f.PQcancelStart(ptr):
                raise CancelError(message(f.PQcancelErrorMessage(ptr)))

    def poll(self) -> PollingStatus:
        """``PQcancelPoll``."""
        self._check_process()
        with self._lock:
            ptr = self._p()
            if not self._started:
                raise InterfaceError(M.POLL_BEFORE_START)
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
                raise CancelError(message(f.PQcancelErrorMessage(ptr)))

    def reset(self) -> None:
        """``PQcancelReset``."""
        self._check_process()
        with self._lock:
            self._f.PQcancelReset(self._p())
            self._started = False

    def finish(self) -> None:
        """``PQcancelFinish``; idempotent."""
        if self._generation != fork.generation:
            self._ptr = 0  # the parent's: forget it, never PQcancelFinish here
            return
        with self._lock:
            ptr, self._ptr = self._ptr, 0
        if ptr:
            self._f.PQcancelFinish(ptr)

    def __repr__(self) -> str:
        if self._generation != fork.generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "finished"
        return f"<PGcancelConn {state} (ctypes)>"


class PGcancel:
    """The legacy cancel handle (ctypes twin)."""

    _ptr: int
    _libpq: Libpq
    _lock: threading.Lock
    _generation: int

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use PGconn.get_cancel()")

    def __reduce__(self) -> NoReturn:
        refuse_to_pickle(self)

    @classmethod
    def _wrap(cls, ptr: int, libpq: Libpq) -> PGcancel:
        self = object.__new__(cls)
        self._ptr = ptr
        self._libpq = libpq
        self._lock = threading.Lock()
        self._generation = fork.generation
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
        if self._generation != fork.generation:
            raise InterfaceError(M.CANCEL_FORKED)
        buf = ctypes.create_string_buffer(_CANCEL_ERRBUF)
        with self._lock:
            ptr = self._ptr
            if not ptr:
                raise InterfaceError(M.CANCEL_FREED)
            ok = self._libpq.f.PQcancel(ptr, buf, _CANCEL_ERRBUF)
        if not ok:
            raise CancelError(message(buf.value) or "PQcancel failed")

    def free(self) -> None:
        """``PQfreeCancel``; idempotent."""
        if self._generation != fork.generation:
            self._ptr = 0  # the parent's: forget it
            return
        with self._lock:
            ptr, self._ptr = self._ptr, 0
        if ptr:
            self._libpq.f.PQfreeCancel(ptr)

    def __repr__(self) -> str:
        if self._generation != fork.generation:
            return "<PGcancel of the parent process (ctypes)>"
        return f"<PGcancel {'freed' if self.closed else 'ready'} (ctypes)>"
