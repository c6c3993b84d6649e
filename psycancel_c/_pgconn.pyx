# Included by _pq.pyx: ``PGconn``, a connection (owned or borrowed) and its queries.
#
# get_result() never waits with the lock: it loops { under the lock: PQflush,
# PQconsumeInput, PQisBusy, and PQgetResult once PQisBusy says it cannot
# block; else, lock released, poll() on the socket for at most
# _WAIT_SLICE_MS }, all without the GIL. The waiting thread keeps only the
# socket's *number* outside the lock, never the pointer, so a finish() in
# another thread cannot free anything under it; the next step sees the
# connection closed and raises InterfaceError. finish() of an owned
# connection with waiters first shuts its socket down for reading
# (shutdown(SHUT_RD): writing still works, so PQfinish still sends
# Terminate), which wakes them at once; the wrapper of a borrowed pointer
# only forgets it, and its waiters notice within a slice. EINTR runs the
# Python signal handlers, which may raise (KeyboardInterrupt).

cdef enum:
    _WAIT_SLICE_MS = 500  # the longest single wait of get_result() for its socket
cdef int _PG_DIAG_SQLSTATE = ord("C")

# PGconn calls cheap enough to keep the GIL (when it suffices: "Locking", _common.pyx).
cdef enum:
    C_STATUS = 0
    C_SOCKET = 1
    C_BACKEND_PID = 2
    C_SSL_IN_USE = 3
    C_IS_BUSY = 4
    C_ERROR_MESSAGE = 5
    C_CANCEL_CREATE = 6
    C_GET_CANCEL = 7
    C_GSS_ENC_IN_USE = 8
    C_CONNINFO_OPTION = 9


cdef struct Answer:
    int value
    char* text        # C_ERROR_MESSAGE, C_CONNINFO_OPTION: a _dup() copy (or NULL)
    const char* key   # C_CONNINFO_OPTION: the option's keyword (input)
    int found         # C_CONNINFO_OPTION: 1 when PQconninfo could be read
    void* ptr         # C_CANCEL_CREATE, C_GET_CANCEL: the new object


cdef char* _conninfo_value(
    Functions* f, PGconn_t* ptr, const char* key, int* found
) noexcept nogil:
    """A _dup() copy of option ``key``'s value (NULL if unset); ``found``: 0 on OOM."""
    cdef PQconninfoOption_t* options = f.PQconninfo(ptr)
    cdef PQconninfoOption_t* option = options
    cdef char* copy = NULL
    found[0] = options != NULL
    if options == NULL:
        return NULL
    while option.keyword != NULL:
        if strcmp(option.keyword, key) == 0:
            copy = _dup(option.val)
            break
        option += 1
    f.PQconninfoFree(options)
    return copy


cdef void _conn_call(Functions* f, PGconn_t* ptr, int which, Answer* out) noexcept nogil:
    if which == C_STATUS:
        out.value = f.PQstatus(ptr)
    elif which == C_SOCKET:
        out.value = f.PQsocket(ptr)
    elif which == C_BACKEND_PID:
        out.value = f.PQbackendPID(ptr)
    elif which == C_SSL_IN_USE:
        out.value = f.PQsslInUse(ptr)
    elif which == C_IS_BUSY:
        out.value = f.PQisBusy(ptr)
    elif which == C_CONNINFO_OPTION:
        out.text = _conninfo_value(f, ptr, out.key, &out.found)
    elif which == C_GSS_ENC_IN_USE:
        out.value = f.PQgssEncInUse(ptr) if f.PQgssEncInUse != NULL else 0
    elif which == C_ERROR_MESSAGE:
        out.text = _dup(f.PQerrorMessage(ptr))
    elif which == C_CANCEL_CREATE:
        out.ptr = f.PQcancelCreate(ptr)
    elif which == C_GET_CANCEL:
        out.ptr = f.PQgetCancel(ptr)


cdef object _copy_result(Functions* f, PGresult_t* res):
    """A ``QueryResult`` copied out of ``res``, which is cleared."""
    cdef int nrows, ncols, r, c
    cdef const char* sqlstate
    try:
        nrows = f.PQntuples(res)
        ncols = f.PQnfields(res)
        rows = []
        for r in range(nrows):
            row = []
            for c in range(ncols):
                if f.PQgetisnull(res, r, c):
                    row.append(None)
                else:
                    row.append(_value(f.PQgetvalue(res, r, c)))
            rows.append(tuple(row))
        sqlstate = f.PQresultErrorField(res, _PG_DIAG_SQLSTATE)
        return QueryResult(
            status=_exec_status(f.PQresultStatus(res)),
            sqlstate=sqlstate.decode() if sqlstate != NULL and sqlstate[0] != 0 else None,
            message=_message(f.PQresultErrorMessage(res)),
            rows=tuple(rows),
        )
    finally:
        f.PQclear(res)


@cython.no_gc_clear
cdef class PGconn:
    """A libpq connection (compiled twin); see :class:`psycancel.pq.abc.PGconn`."""

    cdef PGconn_t* _ptr
    cdef Libpq _libpq
    cdef Functions* _f
    cdef bint _borrowed
    cdef int _inflight
    cdef int _waiters            # threads waiting in get_result(); changed under the lock
    cdef unsigned int _generation
    cdef cython.pymutex _lock
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("use PGconn.connect(), connect_start() or from_ptr()")

    @staticmethod
    cdef PGconn _wrap(PGconn_t* ptr, Libpq lib, bint borrowed):
        cdef PGconn self = PGconn.__new__(PGconn)
        self._ptr = ptr
        self._libpq = lib
        self._f = &lib._f
        self._borrowed = borrowed
        self._generation = _fork_generation
        return self

    @staticmethod
    cdef PGconn _checked_new(PGconn_t* ptr, Libpq lib):
        if ptr == NULL:
            raise MemoryError(M.OOM_CONN)
        if lib._f.PQstatus(ptr) == _CONNECTION_BAD:
            message = _message(lib._f.PQerrorMessage(ptr))
            with nogil:
                lib._f.PQfinish(ptr)
            raise OperationalError(M.connection_failed(message))
        return PGconn._wrap(ptr, lib, False)

    @classmethod
    def connect(cls, conninfo, *, libpq=None):
        """Connect and wait (``PQconnectdb``); :class:`OperationalError` on failure."""
        cdef Libpq lib = _check_libpq(libpq) if libpq is not None else Libpq.load()
        cdef bytes b_conninfo = conninfo.encode()
        cdef const char* c_conninfo = b_conninfo
        cdef PGconn_t* ptr
        with nogil:
            ptr = lib._f.PQconnectdb(c_conninfo)
        return PGconn._checked_new(ptr, lib)

    @classmethod
    def connect_start(cls, conninfo, *, libpq=None):
        """Begin a non-blocking connection; drive it with :meth:`connect_poll`."""
        cdef Libpq lib = _check_libpq(libpq) if libpq is not None else Libpq.load()
        cdef bytes b_conninfo = conninfo.encode()
        cdef const char* c_conninfo = b_conninfo
        cdef PGconn_t* ptr
        with nogil:
            ptr = lib._f.PQconnectStart(c_conninfo)
        return PGconn._checked_new(ptr, lib)

    @classmethod
    def from_ptr(cls, ptr, libpq):
        """Wrap a ``PGconn*`` made by ``libpq`` elsewhere; never finished here."""
        cdef Libpq lib = _check_libpq(libpq)
        if isinstance(ptr, bool) or not isinstance(ptr, int):
            raise InterfaceError(M.pointer_not_int(ptr))
        if ptr <= 0:
            raise InterfaceError(M.POINTER_NULL)
        if ptr > <uintptr_t>-1:
            raise InterfaceError(M.pointer_not_address(ptr))
        return PGconn._wrap(<PGconn_t*><uintptr_t>ptr, lib, True)

    def __dealloc__(self):
        # Nobody else can hold a reference now: no lock needed.
        cdef PGconn_t* ptr = self._ptr
        self._ptr = NULL
        if ptr == NULL or self._borrowed or self._f == NULL:
            return
        if self._generation != _fork_generation:
            return  # the parent's connection: never PQfinish it here
        with nogil:
            self._f.PQfinish(ptr)

    cdef inline int _check_process(self) except -1:
        """Refuse the parent's object in a forked child (before any lock)."""
        if self._generation != _fork_generation:
            raise InterfaceError(M.CONN_FORKED)
        return 0

    cdef inline PGconn_t* _p(self) except NULL:
        if self._generation != _fork_generation:
            raise InterfaceError(M.CONN_FORKED)
        if self._ptr == NULL:
            raise InterfaceError(M.CONN_CLOSED)
        return self._ptr

    cdef int _call(self, int which, Answer* out) except -1:
        """A cheap libpq call, with the pointer to this thread alone."""
        cdef PGconn_t* ptr
        out.value = 0
        out.text = NULL
        out.ptr = NULL
        if _gil_is_enough(self._inflight):
            _conn_call(self._f, self._p(), which, out)
            return 0
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    _conn_call(self._f, ptr, which, out)
        _count_out(&self._inflight)
        if ptr == NULL:
            raise InterfaceError(M.CONN_CLOSED)
        return 0

    cdef inline int _int_call(self, int which) except? -1:
        cdef Answer out
        self._call(which, &out)
        return out.value

    @property
    def libpq(self):
        """The libpq this connection belongs to."""
        return self._libpq

    @property
    def pgconn_ptr(self):
        """The address of the ``PGconn`` struct."""
        return <uintptr_t>self._p()

    @property
    def borrowed(self):
        """True when psycancel never finishes the pointer."""
        return self._borrowed

    @property
    def closed(self):
        """True once :meth:`finish` has run."""
        return self._ptr == NULL

    @property
    def status(self):
        """``PQstatus``."""
        return _conn_status(self._int_call(C_STATUS))

    @property
    def error_message(self):
        """``PQerrorMessage``."""
        cdef Answer out
        if _gil_is_enough(self._inflight):
            return _message(self._f.PQerrorMessage(self._p()))  # no copy needed
        self._call(C_ERROR_MESSAGE, &out)
        return _take(out.text)

    @property
    def socket(self):
        """``PQsocket``."""
        return self._int_call(C_SOCKET)

    @property
    def backend_pid(self):
        """``PQbackendPID``."""
        return self._int_call(C_BACKEND_PID)

    @property
    def ssl_in_use(self):
        """``PQsslInUse``."""
        return self._int_call(C_SSL_IN_USE) != 0

    @property
    def gss_enc_in_use(self):
        """``PQgssEncInUse``; False without it (libpq < 12)."""
        return self._int_call(C_GSS_ENC_IN_USE) != 0

    def conninfo_option(self, keyword):
        """One option of ``PQconninfo``; None if unset or unknown."""
        cdef Answer out
        cdef bytes key = keyword.encode()
        out.key = key
        out.found = 0
        self._call(C_CONNINFO_OPTION, &out)
        if not out.found:
            raise MemoryError("PQconninfo returned NULL")
        if out.text == NULL:
            return None
        return _take(out.text)

    def connect_poll(self):
        """``PQconnectPoll``."""
        cdef PGconn_t* ptr
        cdef int value = 0
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    value = self._f.PQconnectPoll(ptr)
        _count_out(&self._inflight)
        if ptr == NULL:
            raise InterfaceError(M.CONN_CLOSED)
        return _polling_status(value)

    cdef int _io(self, bint send, const char* query) except -1:
        """PQsendQuery (send) or PQconsumeInput; OperationalError on failure."""
        cdef PGconn_t* ptr
        cdef int rc = R_OK
        cdef char* msg = NULL
        self._check_process()
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr == NULL:
                    rc = R_CLOSED
                elif not (self._f.PQsendQuery(ptr, query) if send
                          else self._f.PQconsumeInput(ptr)):
                    rc = R_FAILED
                    msg = _dup(self._f.PQerrorMessage(ptr))
        _count_out(&self._inflight)
        if rc == R_OK:
            return 0
        return _raise_for(rc, 0, msg, M.CONN_CLOSED, "", OperationalError)

    def send_query(self, query):
        """``PQsendQuery``; :class:`OperationalError` on failure."""
        cdef bytes b_query = query.encode()
        self._io(True, b_query)

    def consume_input(self):
        """``PQconsumeInput``; :class:`OperationalError` on failure."""
        self._io(False, NULL)

    def is_busy(self):
        """``PQisBusy``."""
        return self._int_call(C_IS_BUSY) != 0

    cdef int _result_step(
        self, bint waited, PGresult_t** res, char** msg, pollfd* wait
    ) noexcept nogil:
        """One step of get_result(), under the lock: never blocks."""
        cdef Functions* f = self._f
        cdef PGconn_t* ptr = self._ptr
        cdef int flushed, consumed
        if waited:
            self._waiters -= 1
        if ptr == NULL:
            return R_CLOSED
        if not f.PQisBusy(ptr):
            res[0] = f.PQgetResult(ptr)  # does not block now
            return R_OK
        flushed = f.PQflush(ptr)
        consumed = f.PQconsumeInput(ptr)
        if not f.PQisBusy(ptr):
            res[0] = f.PQgetResult(ptr)
            return R_OK
        wait.fd = f.PQsocket(ptr) if consumed and flushed >= 0 else -1
        if wait.fd < 0:
            msg[0] = _dup(f.PQerrorMessage(ptr))
            return R_FAILED
        wait.events = POLLIN | POLLOUT if flushed > 0 else POLLIN
        wait.revents = 0
        self._waiters += 1
        return R_WAIT

    def get_result(self):
        """The next result, copied out and freed; None when there are no more.

        Waits for the server without holding the connection's lock (see the
        top of ``_pgconn.pyx``): other threads can cancel, read the getters or
        finish the connection meanwhile (then this raises InterfaceError).
        """
        cdef PGresult_t* res = NULL
        cdef char* msg = NULL
        cdef pollfd wait
        cdef bint waited
        cdef int rc
        self._check_process()
        while True:
            waited = False
            _count_in(&self._inflight)
            with nogil:
                # The lock only around the steps; the wait between them
                # uses the socket's number only: if another thread finishes
                # the connection meanwhile, the next step sees it.
                while True:
                    with self._lock:
                        rc = self._result_step(waited, &res, &msg, &wait)
                    if rc != R_WAIT:
                        break
                    waited = True
                    if poll(&wait, 1, _WAIT_SLICE_MS) < 0 and errno == EINTR:
                        with self._lock:
                            self._waiters -= 1
                        rc = R_INTERRUPTED
                        break
            _count_out(&self._inflight)
            if rc != R_INTERRUPTED:
                break
            PyErr_CheckSignals()  # a handler may raise (KeyboardInterrupt)
        if rc == R_FAILED:
            raise OperationalError(_take(msg) or "the connection has no socket")
        if rc != R_OK:
            _raise_for(rc, 0, msg, M.CONN_CLOSED, "", OperationalError)
        if res == NULL:
            return None
        # The result belongs to this thread now: no lock needed to read it.
        return _copy_result(self._f, res)

    def cancel_conn(self):
        """A new ``PGcancelConn`` (``PQcancelCreate``)."""
        cdef Answer out
        if not self._libpq._has_cancel_conn:
            raise InterfaceError(M.no_cancel_conn_api(self._libpq._version, self._libpq._path))
        self._call(C_CANCEL_CREATE, &out)
        if out.ptr == NULL:
            raise MemoryError(M.OOM_CANCEL_CONN)
        return PGcancelConn._wrap(<PGcancelConn_t*>out.ptr, self._libpq)

    def get_cancel(self):
        """A legacy cancel handle (``PQgetCancel``)."""
        cdef Answer out
        self._call(C_GET_CANCEL, &out)
        if out.ptr == NULL:
            raise InterfaceError(M.NO_CANCEL_INFO)
        return PGcancel._wrap(<PGcancel_t*>out.ptr, self._libpq)

    def finish(self):
        """``PQfinish`` for an owned connection; idempotent."""
        cdef PGconn_t* ptr
        cdef int fd = -1
        if self._generation != _fork_generation:
            self._ptr = NULL  # the parent's connection: forget it, never PQfinish here
            return
        _count_in(&self._inflight)
        with nogil:
            with self._lock:
                ptr = self._ptr
                self._ptr = NULL
                if ptr != NULL and not self._borrowed and self._waiters > 0:
                    fd = self._f.PQsocket(ptr)
            # The pointer is this thread's alone now: finish it without the lock.
            if ptr != NULL and not self._borrowed:
                if fd >= 0:
                    shutdown(fd, SHUT_RD)  # wake the threads in get_result()
                self._f.PQfinish(ptr)
        _count_out(&self._inflight)

    def __repr__(self):
        if self._generation != _fork_generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "closed"
        return (
            f"<PGconn {state} ptr=0x{<uintptr_t>self._ptr:x} "
            f"borrowed={bool(self._borrowed)} (c)>"
        )
