# Included by _pq.pyx: ``PGconn``, a borrowed connection (a pointer made by a driver's libpq).
#
# psycancel never makes, queries or finishes a connection: it wraps one that a
# driver made (from_ptr), reads what a cancel needs (status, socket,
# encryption, one connection option), and makes its cancel objects. finish()
# only forgets the pointer.

# PGconn calls cheap enough to keep the GIL (when it suffices: "Locking", _common.pyx).
cdef enum:
    C_STATUS = 0
    C_SOCKET = 1
    C_SSL_IN_USE = 2
    C_ERROR_MESSAGE = 3
    C_CANCEL_CREATE = 4
    C_GET_CANCEL = 5
    C_GSS_ENC_IN_USE = 6
    C_CONNINFO_OPTION = 7
    C_BACKEND_PID = 8


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
    elif which == C_SSL_IN_USE:
        out.value = f.PQsslInUse(ptr)
    elif which == C_CONNINFO_OPTION:
        out.text = _conninfo_value(f, ptr, out.key, &out.found)
    elif which == C_BACKEND_PID:
        out.value = f.PQbackendPID(ptr)
    elif which == C_GSS_ENC_IN_USE:
        out.value = f.PQgssEncInUse(ptr) if f.PQgssEncInUse != NULL else 0
    elif which == C_ERROR_MESSAGE:
        out.text = _dup(f.PQerrorMessage(ptr))
    elif which == C_CANCEL_CREATE:
        out.ptr = f.PQcancelCreate(ptr)
    elif which == C_GET_CANCEL:
        out.ptr = f.PQgetCancel(ptr)


@cython.no_gc_clear
cdef class PGconn:
    """A borrowed libpq connection (compiled twin); see :class:`psycancel.pq.abc.PGconn`."""

    cdef PGconn_t* _ptr
    cdef Libpq _libpq
    cdef Functions* _f
    cdef int _inflight
    cdef unsigned int _generation
    cdef cython.pymutex _lock
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("use PGconn.from_ptr()")

    @staticmethod
    cdef PGconn _wrap(PGconn_t* ptr, Libpq lib):
        cdef PGconn self = PGconn.__new__(PGconn)
        self._ptr = ptr
        self._libpq = lib
        self._f = &lib._f
        self._generation = _fork_generation
        return self

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
        return PGconn._wrap(<PGconn_t*><uintptr_t>ptr, lib)

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
    def ssl_in_use(self):
        """``PQsslInUse``."""
        return self._int_call(C_SSL_IN_USE) != 0

    @property
    def backend_pid(self):
        """``PQbackendPID``."""
        return self._int_call(C_BACKEND_PID)

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
        """Forget the pointer (the connection stays open: its maker finishes it); idempotent."""
        if self._generation != _fork_generation:
            self._ptr = NULL
            return
        _count_in(&self._inflight)
        with nogil:
            with self._lock:  # no libpq call of another thread is under way after this
                self._ptr = NULL
        _count_out(&self._inflight)

    def __repr__(self):
        if self._generation != _fork_generation:
            state = "of the parent process"
        else:
            try:
                state = self.status.name
            except InterfaceError:
                state = "closed"
        return f"<PGconn {state} ptr=0x{<uintptr_t>self._ptr:x} (c)>"
