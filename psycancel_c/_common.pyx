# Included by _pq.pyx: what every class of the compiled twin uses (text decoding, enum
# members, the fork generation, the locking helpers).

cdef extern from *:
    """
    #if defined(Py_GIL_DISABLED)
    #define PSYCANCEL_FREE_THREADING 1
    #else
    #define PSYCANCEL_FREE_THREADING 0
    #endif
    """
    const bint PSYCANCEL_FREE_THREADING

# ConnStatusType values the checks compare with (libpq's ABI).
cdef int _CONNECTION_BAD = 1
cdef int _CONNECTION_ALLOCATED = 14


cdef str _message(const char* raw):
    """libpq's error message as text, without the trailing newline."""
    if raw == NULL or raw[0] == 0:
        return ""
    return PyUnicode_DecodeUTF8(raw, <Py_ssize_t>strlen(raw), "replace").rstrip("\n")


# =====================================================================================
# Enum members, looked up by value (constructing an IntEnum member costs ~1 us)
# =====================================================================================

cdef tuple _CONN_STATUS = tuple([ConnStatus(i) for i in range(max(ConnStatus) + 1)])
cdef tuple _POLLING_STATUS = tuple([PollingStatus(i) for i in range(max(PollingStatus) + 1)])
cdef int _N_CONN_STATUS = len(_CONN_STATUS)
cdef int _N_POLLING_STATUS = len(_POLLING_STATUS)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline object _conn_status(int value):
    if 0 <= value < _N_CONN_STATUS:
        return _CONN_STATUS[value]
    return ConnStatus(value)


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline object _polling_status(int value):
    if 0 <= value < _N_POLLING_STATUS:
        return _POLLING_STATUS[value]
    return PollingStatus(value)


# =====================================================================================
# fork(): the generation of this process
# =====================================================================================
# Objects record it when made; another value means "made by the parent" (the
# fork rule of psycancel.pq.abc). A C counter, compared before any lock.

cdef unsigned int _fork_generation = 0


def _after_fork_in_child():
    """Registered with ``os.register_at_fork``: a new generation in the child."""
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# =====================================================================================
# Locking
# =====================================================================================
# How this twin keeps the locking rule of psycancel.pq.abc. Each object has a
# cython.pymutex (a PyMutex on CPython >= 3.13, a PyThread_type_lock before).
# A call that can block or change the object runs as: GIL released, *then*
# lock acquired, libpq called, what is needed copied out (error text with
# _dup(), only on failure), lock released, *then* GIL re-acquired. So no
# thread waits for the lock while holding the GIL, nor for the GIL while
# holding the lock: no deadlock, and no lock convoy (a lock held while its
# owner queues for the GIL). No Python code runs under the lock, and no thread
# takes it twice. The sections report a plain C int outcome (R_*), turned
# into an exception by _raise_for() once the GIL is back.
#
# The fast path: cheap calls (the getters, is_busy, cancel_conn, get_cancel)
# skip the lock when the GIL suffices. Each object counts in ``_inflight``
# (changed only with the GIL held) the threads that released the GIL to use
# it; at 0, while this thread holds the GIL, no other thread is inside libpq
# with the object nor can enter, so the call is made at once. Otherwise (a
# thread in blocking(), or waiting in get_result()) the getter takes the
# locked path, as it must: a concurrent PQcancelPoll may reallocate the buffer
# PQcancelErrorMessage returns, and finish() frees the object. ``closed``
# reads the pointer with neither (an aligned load). On a free-threaded build
# (Py_GIL_DISABLED) the fast path is compiled out and every call locks, and
# the module declares itself free-threading compatible (``_pq.pyx``'s
# ``freethreading_compatible`` directive: the interpreter keeps the GIL off).
# What else is shared holds without the GIL: the ``Libpq`` cache is under a
# ``threading.Lock``, an ``OffloadEngine``'s lists under its pthread mutex (its
# thread's own arrays are touched by that thread alone), the enum tables are
# read-only after import, and the fork generation changes only in a forked
# child (which has one thread). tests/freethreading/stress.py runs many threads
# through all of it with PYTHON_GIL=0.

cdef enum:
    R_OK = 0
    R_CLOSED = 1         # the pointer is gone: InterfaceError
    R_BAD = 2            # a cancel object that was BAD from the start: CancelError
    R_NOT_ALLOCATED = 3  # start()/blocking() on a used object: InterfaceError
    R_FAILED = 4         # libpq said no: CancelError, with its text
    R_NOT_STARTED = 5    # poll() before start(): InterfaceError


cdef char* _dup(const char* text) noexcept nogil:
    """A malloc'ed copy of libpq's text, made under the lock (NULL for NULL/OOM)."""
    if text == NULL:
        return NULL
    return strdup(text)


cdef str _take(char* copy):
    """The text of a copy made by _dup(), which is freed."""
    if copy == NULL:
        return ""
    try:
        return _message(copy)
    finally:
        free(copy)


cdef int _raise_for(
    int rc, int status, char* text, str closed_text, str what, object failure
) except -1:
    """Raise the exception that goes with a non-OK outcome; ``text`` is freed."""
    message = _take(text)
    if rc == R_OK:
        return 0
    if rc == R_CLOSED:
        raise InterfaceError(closed_text)
    if rc == R_BAD:
        raise CancelError(message)
    if rc == R_NOT_ALLOCATED:
        raise InterfaceError(M.needs_allocated(what, _conn_status(status).name))
    if rc == R_NOT_STARTED:
        raise InterfaceError(M.POLL_BEFORE_START)
    raise failure(message)


cdef inline bint _gil_is_enough(int inflight) noexcept:
    """With the GIL held: does this thread have the object to itself?

    True when no thread is inside (or waiting for) a locked nogil section of
    the object: those count themselves in ``_inflight`` before they release
    the GIL, so none can start while this thread holds it. Never on a
    free-threaded build, where there is no GIL to rely on.
    """
    return not PSYCANCEL_FREE_THREADING and inflight == 0


cdef inline void _count_in(int* inflight) noexcept:
    """Before releasing the GIL to use an object (a no-op when free-threaded)."""
    if not PSYCANCEL_FREE_THREADING:
        inflight[0] += 1


cdef inline void _count_out(int* inflight) noexcept:
    """After re-acquiring the GIL."""
    if not PSYCANCEL_FREE_THREADING:
        inflight[0] -= 1
