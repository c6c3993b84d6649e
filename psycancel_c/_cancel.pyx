# Included by _pq.pyx: the cancel objects, ``PGcancelConn`` (libpq >= 17) and
# the legacy ``PGcancel``.

cdef enum:
    _CANCEL_ERRBUF = 256  # PQcancel's error buffer (the customary size)


# =====================================================================================
# PGcancelConn
# =====================================================================================


@cython.no_gc_clear
cdef class PGcancelConn:
    """A ``PGcancelConn`` (compiled twin); see :class:`psycancel.pq.abc.PGcancelConn`."""

    cdef PGcancelConn_t* _ptr
    cdef Libpq _libpq
    cdef Functions* _f
    cdef bint _started
    cdef int _inflight
    cdef unsigned int _generation
    cdef cython.pymutex _lock
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("use PGconn.cancel_conn()")

    @staticmethod
    cdef PGcancelConn _wrap(PGcancelConn_t* ptr, Libpq lib):
        cdef PGcancelConn self = PGcancelConn.__new__(PGcancelConn)
        self._ptr = ptr
        self._libpq = lib
        self._f = &lib._f
        self._generation = _fork_generation
        return self

    def __dealloc__(self):
        cdef PGcancelConn_t* ptr = self._ptr
        self._ptr = NULL
        if ptr == NULL or self._f == NULL or self._generation != _fork_generation:
            return  # nothing, or the parent's: never PQcancelFinish it here
        with nogil:
            self._f.PQcancelFinish(ptr)

    cdef inline int _check_process(self) except -1:
        if self._generation != _fork_generation:
            raise InterfaceError(M.CANCEL_CONN_FORKED)
        return 0

    cdef inline PGcancelConn_t* _p(self) except NULL:
        if self._generation != _fork_generation:
            raise InterfaceError(M.CANCEL_CONN_FORKED)
        if self._ptr == NULL:
            raise InterfaceError(M.CANCEL_CONN_FINISHED)
        return self._ptr

    cdef int _int_call(self, bint want_socket) except? -2:
        """PQcancelStatus / PQcancelSocket, with the pointer to this thread alone."""
        cdef PGcancelConn_t* ptr
        cdef int value = 0
        if _gil_is_enough(self._inflight):
            ptr = self._p()
            return self._f.PQcancelSocket(ptr) if want_socket else self._f.PQcancelStatus(ptr)
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    value = (self._f.PQcancelSocket(ptr) if want_socket
                             else self._f.PQcancelStatus(ptr))
        _count_out(&self._inflight)
        if ptr == NULL:
            raise InterfaceError(M.CANCEL_CONN_FINISHED)
        return value

    @property
    def closed(self):
        """True once :meth:`finish` has run."""
        return self._ptr == NULL

    @property
    def status(self):
        """``PQcancelStatus``."""
        return _conn_status(self._int_call(False))

    @property
    def socket(self):
        """``PQcancelSocket``."""
        return self._int_call(True)

    @property
    def error_message(self):
        """``PQcancelErrorMessage``."""
        cdef PGcancelConn_t* ptr
        cdef char* msg = NULL
        if _gil_is_enough(self._inflight):
            return _message(self._f.PQcancelErrorMessage(self._p()))
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    msg = _dup(self._f.PQcancelErrorMessage(ptr))
        _count_out(&self._inflight)
        text = _take(msg)
        if ptr == NULL:
            raise InterfaceError(M.CANCEL_CONN_FINISHED)
        return text

    cdef int _send_locked(self, bint blocking, int* status, char** msg) noexcept nogil:
        """start()/blocking() (the lock is held): check the state, then send."""
        cdef PGcancelConn_t* ptr = self._ptr
        cdef int ok
        if ptr == NULL:
            return R_CLOSED
        status[0] = self._f.PQcancelStatus(ptr)
        if status[0] == _CONNECTION_BAD and not self._started:
            msg[0] = _dup(self._f.PQcancelErrorMessage(ptr))
            return R_BAD
        if status[0] != _CONNECTION_ALLOCATED or self._started:
            return R_NOT_ALLOCATED
        self._started = True
        ok = self._f.PQcancelBlocking(ptr) if blocking else self._f.PQcancelStart(ptr)
        if not ok:
            msg[0] = _dup(self._f.PQcancelErrorMessage(ptr))
            return R_FAILED
        return R_OK

    cdef int _send(self, bint blocking) except -1:
        cdef int rc
        cdef int status = 0
        cdef char* msg = NULL
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                rc = self._send_locked(blocking, &status, &msg)
        _count_out(&self._inflight)
        if rc == R_OK:
            return 0
        return _raise_for(
            rc, status, msg, M.CANCEL_CONN_FINISHED,
            "blocking" if blocking else "start", CancelError,
        )

    def start(self):
        """``PQcancelStart``."""
        self._send(False)

    def poll(self):
        """``PQcancelPoll``."""
        cdef PGcancelConn_t* ptr
        cdef int rc = R_OK
        cdef int value = 0
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr == NULL:
                    rc = R_CLOSED
                elif not self._started:
                    rc = R_NOT_STARTED
                else:
                    value = self._f.PQcancelPoll(ptr)
        _count_out(&self._inflight)
        if rc != R_OK:
            _raise_for(rc, 0, NULL, M.CANCEL_CONN_FINISHED, "poll", CancelError)
        return _polling_status(value)

    def blocking(self):
        """``PQcancelBlocking`` (the GIL is released while it waits)."""
        self._send(True)

    def reset(self):
        """``PQcancelReset``."""
        cdef PGcancelConn_t* ptr
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    self._f.PQcancelReset(ptr)
                    self._started = False
        _count_out(&self._inflight)
        if ptr == NULL:
            raise InterfaceError(M.CANCEL_CONN_FINISHED)

    def finish(self):
        """``PQcancelFinish``; idempotent."""
        cdef PGcancelConn_t* ptr
        if self._generation != _fork_generation:
            self._ptr = NULL  # the parent's: forget it, never PQcancelFinish here
            return
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                self._ptr = NULL
            if ptr != NULL:
                self._f.PQcancelFinish(ptr)
        _count_out(&self._inflight)

    def __repr__(self):
        if self._generation != _fork_generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "finished"
        return f"<PGcancelConn {state} (c)>"


# =====================================================================================
# PGcancel (legacy)
# =====================================================================================


@cython.no_gc_clear
cdef class PGcancel:
    """The legacy cancel handle (compiled twin)."""

    cdef PGcancel_t* _ptr
    cdef Libpq _libpq
    cdef Functions* _f
    cdef unsigned int _generation
    cdef cython.pymutex _lock
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("use PGconn.get_cancel()")

    @staticmethod
    cdef PGcancel _wrap(PGcancel_t* ptr, Libpq lib):
        cdef PGcancel self = PGcancel.__new__(PGcancel)
        self._ptr = ptr
        self._libpq = lib
        self._f = &lib._f
        self._generation = _fork_generation
        return self

    def __dealloc__(self):
        cdef PGcancel_t* ptr = self._ptr
        self._ptr = NULL
        if ptr != NULL and self._f != NULL and self._generation == _fork_generation:
            self._f.PQfreeCancel(ptr)

    @property
    def closed(self):
        """True once :meth:`free` has run."""
        return self._ptr == NULL

    def cancel(self):
        """``PQcancel`` (blocking, GIL released); :class:`CancelError` on failure."""
        cdef char errbuf[_CANCEL_ERRBUF]
        cdef PGcancel_t* ptr
        cdef int ok = 0
        if self._generation != _fork_generation:
            raise InterfaceError(M.CANCEL_FORKED)
        errbuf[0] = 0
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    ok = self._f.PQcancel(ptr, errbuf, _CANCEL_ERRBUF)
        if ptr == NULL:
            raise InterfaceError(M.CANCEL_FREED)
        if not ok:
            errbuf[_CANCEL_ERRBUF - 1] = 0
            raise CancelError(_message(errbuf) or "PQcancel failed")

    def free(self):
        """``PQfreeCancel``; idempotent."""
        cdef PGcancel_t* ptr
        if self._generation != _fork_generation:
            self._ptr = NULL  # the parent's: forget it
            return
        with nogil:
            with self._lock:
                ptr = self._ptr
                self._ptr = NULL
            if ptr != NULL:
                self._f.PQfreeCancel(ptr)

    def __repr__(self):
        if self._generation != _fork_generation:
            return "<PGcancel of the parent process (c)>"
        return f"<PGcancel {'freed' if self._ptr == NULL else 'ready'} (c)>"
