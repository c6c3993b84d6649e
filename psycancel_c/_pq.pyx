# cython: language_level=3, auto_pickle=False
"""The compiled twin of ``psycancel.pq``: libpq through dlopen/dlsym.

It behaves exactly like the ctypes twin (``psycancel.pq._ctypes``, the
reference): same classes, methods, properties, return types and exceptions.

* **No libpq at build time.** No libpq header is included: every prototype is
  declared here as a function-pointer type (``noexcept nogil``) and resolved
  with ``dlsym`` on a handle from ``dlopen(path, RTLD_NOW | RTLD_LOCAL)``, so
  two libpqs (say 15 and 18) can live in one process. A missing
  ``PQcancel*`` symbol means ``has_cancel_conn`` is False. Handles are never
  closed (``dlclose``): each object keeps a reference to its :class:`Libpq`,
  which the module cache keeps forever anyway.
* **The GIL is released** around every libpq call that can block or do
  network / TLS work: connect, connect poll, send query, consume input, get
  result, finish, and the whole cancel family (start, poll, blocking, reset,
  finish, legacy ``PQcancel``). Cheap getters keep it.
* **Locking (decision).** Each object has a ``cython.pymutex`` (a ``PyMutex``
  on CPython >= 3.13, a ``PyThread_type_lock`` before). Every call that can
  block or change the object (start, poll, blocking, reset, finish, legacy
  cancel/free, connect poll, send query, consume input, get result) runs as:
  GIL released, *then* lock acquired, libpq called, anything needed copied
  out (error text with ``strdup``, only on failure), lock released, *then*
  GIL re-acquired. So no thread ever waits for the lock while holding the
  GIL, and no thread ever waits for the GIL while holding the lock: neither a
  deadlock nor a lock convoy (a lock held while its owner queues for the
  GIL, which makes every other user queue behind it) is possible. No Python
  code and no exception can run while the lock is held, and the lock is
  never taken twice by one thread.
  The lock is held only for libpq calls that do not wait for the server,
  except in ``PGcancelConn.blocking()`` and the legacy ``PGcancel.cancel()``
  (nothing else can usefully happen to those objects meanwhile; ``finish()``
  waits for them), and in ``send_query()`` while a query too large for the
  socket's buffer is being sent. In particular ``PGconn.get_result()`` never waits with
  the lock: it loops { under the lock: ``PQflush``, ``PQconsumeInput``,
  ``PQisBusy``, and ``PQgetResult`` once ``PQisBusy`` says it cannot block;
  else, lock released, ``poll()`` on the socket (at most ``_WAIT_SLICE_MS``)
  }, all without the GIL. So another thread can ``cancel_conn()``,
  ``get_cancel()``, read the getters or ``finish()`` the connection while a
  thread waits for a result (psycopg2-style: one thread runs the query,
  another cancels it). If it finishes it, the waiting thread raises
  :class:`InterfaceError` ("the connection is closed"): ``finish()`` of an
  owned connection with waiters first shuts the socket down for reading
  (``shutdown(SHUT_RD)``: writing still works, so ``PQfinish`` still sends
  Terminate), which wakes them at once; the wrapper of a borrowed pointer
  only forgets it, and its waiters notice within a slice. The waiting
  thread only keeps the socket's *number* outside the lock, never the
  pointer: a finish cannot free anything under it. A signal (``EINTR``)
  makes it run the Python signal handlers, which may raise
  (``KeyboardInterrupt``), as in the ctypes twin.
  Cheap calls (the getters, ``is_busy``, ``cancel_conn``, ``get_cancel``)
  keep the GIL when it suffices: each object counts, in ``_inflight`` (only
  changed with the GIL held), the threads that released the GIL to use it;
  when the count is 0 and this thread holds the GIL, no other thread can be
  inside libpq with this object nor enter it, so the call is made right away
  with no lock. Otherwise (another thread is in, say, ``blocking()`` or
  waiting in ``get_result()``) the getter takes the slow path above, as it
  must: a concurrent ``PQcancelPoll`` may reallocate the buffer that
  ``PQcancelErrorMessage`` returns, and ``finish()`` frees the object.
  ``closed`` reads the pointer without either (an aligned pointer load).
  On a free-threaded build (``Py_GIL_DISABLED``) the fast path is compiled
  out and every call takes the lock. The module still does not declare
  itself free-threading compatible, so such an interpreter re-enables the
  GIL when importing it.
* **fork().** Objects belong to the process that made them: each records the
  module's *fork generation* (a C counter that ``os.register_at_fork``
  bumps in the child). In another generation (a forked child),
  ``finish()``/``free()`` and ``__dealloc__`` only forget the pointer (never
  ``PQfinish``, which would send Terminate on the socket the parent still
  uses, nor ``PQcancelFinish``/``PQfreeCancel``), and every other use raises
  :class:`InterfaceError` ("... belongs to the parent process ..."). The
  check comes before the lock, which a thread of the parent may have held
  at the fork.
* **Misuse never crashes**: use after ``finish()``, ``start()`` twice,
  ``poll()`` before ``start()``, NULL or non-int pointers, a ``Libpq`` of the
  other twin: :class:`~psycancel.errors.InterfaceError`. Objects cannot be
  made by calling the class (only by ``Libpq.load``, ``PGconn.connect``,
  ``PGconn.connect_start``, ``PGconn.from_ptr``, ``PGconn.cancel_conn`` and
  ``PGconn.get_cancel``), so no arbitrary pointer can reach libpq.
  ``__dealloc__`` finishes what the object owns, never a borrowed
  ``PGconn``.
* **Cheap hot paths.** Enum members come from module-level tuples (no
  ``IntEnum`` construction per call), outcomes of the locked sections are
  plain C ints turned into exceptions only on failure, and error text is
  copied only when a call failed.
* **The C driver** (``_engine.pyx``, included at the end; not part of the twin
  interface): ``run_blocking`` and ``OffloadEngine`` take a new
  ``PGcancelConn`` and run the whole cancel without the GIL, in the calling
  thread or in the engine's thread (``docs/offload.md``).
"""

cimport cython
from cpython.exc cimport PyErr_CheckSignals
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.errno cimport EINTR, errno
from libc.stdint cimport uintptr_t
from libc.stdlib cimport free
from libc.string cimport strdup, strlen
from posix.dlfcn cimport RTLD_LOCAL, RTLD_NOW, dlerror, dlopen, dlsym

import os
import threading

from psycancel.errors import CancelError, InterfaceError, OperationalError
from psycancel.pq.libfind import default_libpq_path, library_file_of
from psycancel.pq.abc import QueryResult
from psycancel.pq.enums import ConnStatus, ExecStatus, PollingStatus

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn"]

# Opaque libpq types (incomplete structs: never dereferenced here).
cdef extern from *:
    """
    #if defined(Py_GIL_DISABLED)
    #define PSYCANCEL_FREE_THREADING 1
    #else
    #define PSYCANCEL_FREE_THREADING 0
    #endif
    typedef struct psycancel_pg_conn psycancel_PGconn;
    typedef struct psycancel_pg_result psycancel_PGresult;
    typedef struct psycancel_pg_cancel psycancel_PGcancel;
    typedef struct psycancel_pg_cancel_conn psycancel_PGcancelConn;
    """
    ctypedef struct PGconn_t "psycancel_PGconn"
    ctypedef struct PGresult_t "psycancel_PGresult"
    ctypedef struct PGcancel_t "psycancel_PGcancel"
    ctypedef struct PGcancelConn_t "psycancel_PGcancelConn"
    const bint PSYCANCEL_FREE_THREADING

cdef extern from "<poll.h>" nogil:
    ctypedef unsigned long nfds_t
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd* fds, nfds_t nfds, int timeout)
    const short POLLIN
    const short POLLOUT

cdef extern from "<sys/socket.h>" nogil:
    int shutdown(int sockfd, int how)
    const int SHUT_RD

# Prototypes of the libpq functions used (enums are C ints in libpq's ABI).
ctypedef int (*fn_lib_version)() noexcept nogil
ctypedef PGconn_t* (*fn_connect)(const char* conninfo) noexcept nogil
ctypedef int (*fn_conn_int)(PGconn_t* conn) noexcept nogil
ctypedef const char* (*fn_conn_text)(PGconn_t* conn) noexcept nogil
ctypedef const char* (*fn_ssl_attribute)(PGconn_t* conn, const char* name) noexcept nogil
ctypedef int (*fn_send_query)(PGconn_t* conn, const char* query) noexcept nogil
ctypedef PGresult_t* (*fn_get_result)(PGconn_t* conn) noexcept nogil
ctypedef int (*fn_result_int)(PGresult_t* res) noexcept nogil
ctypedef const char* (*fn_result_field)(PGresult_t* res, int code) noexcept nogil
ctypedef const char* (*fn_result_text)(PGresult_t* res) noexcept nogil
ctypedef const char* (*fn_get_value)(PGresult_t* res, int row, int col) noexcept nogil
ctypedef int (*fn_get_is_null)(PGresult_t* res, int row, int col) noexcept nogil
ctypedef void (*fn_result_void)(PGresult_t* res) noexcept nogil
ctypedef void (*fn_conn_void)(PGconn_t* conn) noexcept nogil
ctypedef PGcancel_t* (*fn_get_cancel)(PGconn_t* conn) noexcept nogil
ctypedef int (*fn_cancel)(PGcancel_t* cancel, char* errbuf, int errbufsize) noexcept nogil
ctypedef void (*fn_free_cancel)(PGcancel_t* cancel) noexcept nogil
ctypedef PGcancelConn_t* (*fn_cancel_create)(PGconn_t* conn) noexcept nogil
ctypedef int (*fn_cc_int)(PGcancelConn_t* cc) noexcept nogil
ctypedef const char* (*fn_cc_text)(PGcancelConn_t* cc) noexcept nogil
ctypedef void (*fn_cc_void)(PGcancelConn_t* cc) noexcept nogil


cdef struct Functions:
    fn_lib_version PQlibVersion
    fn_connect PQconnectdb
    fn_connect PQconnectStart
    fn_conn_int PQconnectPoll
    fn_conn_int PQstatus
    fn_conn_text PQerrorMessage
    fn_conn_int PQsocket
    fn_conn_int PQbackendPID
    fn_conn_int PQsslInUse
    fn_ssl_attribute PQsslAttribute
    fn_send_query PQsendQuery
    fn_conn_int PQflush
    fn_conn_int PQconsumeInput
    fn_conn_int PQisBusy
    fn_get_result PQgetResult
    fn_result_int PQresultStatus
    fn_result_field PQresultErrorField
    fn_result_text PQresultErrorMessage
    fn_result_int PQntuples
    fn_result_int PQnfields
    fn_get_value PQgetvalue
    fn_get_is_null PQgetisnull
    fn_result_void PQclear
    fn_conn_void PQfinish
    fn_get_cancel PQgetCancel
    fn_cancel PQcancel
    fn_free_cancel PQfreeCancel
    # The PQcancelConn family (libpq >= 17): NULL when missing.
    fn_cancel_create PQcancelCreate
    fn_cc_int PQcancelStart
    fn_cc_int PQcancelBlocking
    fn_cc_int PQcancelPoll
    fn_cc_int PQcancelStatus
    fn_cc_int PQcancelSocket
    fn_cc_text PQcancelErrorMessage
    fn_cc_void PQcancelReset
    fn_cc_void PQcancelFinish


cdef enum:
    _CANCEL_ERRBUF = 256
    _WAIT_SLICE_MS = 500  # the longest single wait of get_result() (see the docstring)
cdef int _PG_DIAG_SQLSTATE = ord("C")
cdef int _CONNECTION_BAD = 1
cdef int _CONNECTION_ALLOCATED = 14


cdef str _message(const char* raw):
    """libpq's error message as text, without the trailing newline."""
    if raw == NULL or raw[0] == 0:
        return ""
    return PyUnicode_DecodeUTF8(raw, <Py_ssize_t>strlen(raw), "replace").rstrip("\n")


cdef inline str _value(const char* raw):
    """A value of a result row, as text: decoded only, byte-exact."""
    return PyUnicode_DecodeUTF8(raw, <Py_ssize_t>strlen(raw), "replace")


# =====================================================================================
# Enum members, looked up by value (constructing an IntEnum member costs ~1 us)
# =====================================================================================

cdef tuple _CONN_STATUS = tuple([ConnStatus(i) for i in range(max(ConnStatus) + 1)])
cdef tuple _POLLING_STATUS = tuple([PollingStatus(i) for i in range(max(PollingStatus) + 1)])
cdef tuple _EXEC_STATUS = tuple([ExecStatus(i) for i in range(max(ExecStatus) + 1)])
cdef int _N_CONN_STATUS = len(_CONN_STATUS)
cdef int _N_POLLING_STATUS = len(_POLLING_STATUS)
cdef int _N_EXEC_STATUS = len(_EXEC_STATUS)


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


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline object _exec_status(int value):
    if 0 <= value < _N_EXEC_STATUS:
        return _EXEC_STATUS[value]
    return ExecStatus(value)


# =====================================================================================
# fork(): the generation of this process (see "fork()" in the module docstring)
# =====================================================================================

cdef unsigned int _fork_generation = 0


def _after_fork_in_child():
    """Registered with ``os.register_at_fork``: a new generation in the child."""
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


cdef str _forked(str what):
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


_cache = {}
_cache_lock = threading.Lock()


cdef void* _symbol(void* handle, const char* name, str path, bint required) except? NULL:
    cdef void* sym = dlsym(handle, name)
    if sym == NULL and required:
        raise InterfaceError(f"{path} is not a usable libpq (no {name.decode()})")
    return sym


cdef class Libpq:
    """A loaded libpq (compiled twin). Use :meth:`load`; one instance per file."""

    cdef void* _handle
    cdef Functions _f
    cdef str _path
    cdef int _version
    cdef bint _has_cancel_conn
    cdef object __weakref__

    def __init__(self, *args, **kwargs):
        raise TypeError("use Libpq.load() to get a Libpq")

    @staticmethod
    cdef Libpq _create(void* handle, str path):
        cdef Libpq self = Libpq.__new__(Libpq)
        cdef Functions* f = &self._f
        self._handle = handle
        self._path = path
        f.PQlibVersion = <fn_lib_version>_symbol(handle, b"PQlibVersion", path, True)
        f.PQconnectdb = <fn_connect>_symbol(handle, b"PQconnectdb", path, True)
        f.PQconnectStart = <fn_connect>_symbol(handle, b"PQconnectStart", path, True)
        f.PQconnectPoll = <fn_conn_int>_symbol(handle, b"PQconnectPoll", path, True)
        f.PQstatus = <fn_conn_int>_symbol(handle, b"PQstatus", path, True)
        f.PQerrorMessage = <fn_conn_text>_symbol(handle, b"PQerrorMessage", path, True)
        f.PQsocket = <fn_conn_int>_symbol(handle, b"PQsocket", path, True)
        f.PQbackendPID = <fn_conn_int>_symbol(handle, b"PQbackendPID", path, True)
        f.PQsslInUse = <fn_conn_int>_symbol(handle, b"PQsslInUse", path, True)
        f.PQsslAttribute = <fn_ssl_attribute>_symbol(handle, b"PQsslAttribute", path, True)
        f.PQsendQuery = <fn_send_query>_symbol(handle, b"PQsendQuery", path, True)
        f.PQflush = <fn_conn_int>_symbol(handle, b"PQflush", path, True)
        f.PQconsumeInput = <fn_conn_int>_symbol(handle, b"PQconsumeInput", path, True)
        f.PQisBusy = <fn_conn_int>_symbol(handle, b"PQisBusy", path, True)
        f.PQgetResult = <fn_get_result>_symbol(handle, b"PQgetResult", path, True)
        f.PQresultStatus = <fn_result_int>_symbol(handle, b"PQresultStatus", path, True)
        f.PQresultErrorField = <fn_result_field>_symbol(
            handle, b"PQresultErrorField", path, True)
        f.PQresultErrorMessage = <fn_result_text>_symbol(
            handle, b"PQresultErrorMessage", path, True)
        f.PQntuples = <fn_result_int>_symbol(handle, b"PQntuples", path, True)
        f.PQnfields = <fn_result_int>_symbol(handle, b"PQnfields", path, True)
        f.PQgetvalue = <fn_get_value>_symbol(handle, b"PQgetvalue", path, True)
        f.PQgetisnull = <fn_get_is_null>_symbol(handle, b"PQgetisnull", path, True)
        f.PQclear = <fn_result_void>_symbol(handle, b"PQclear", path, True)
        f.PQfinish = <fn_conn_void>_symbol(handle, b"PQfinish", path, True)
        f.PQgetCancel = <fn_get_cancel>_symbol(handle, b"PQgetCancel", path, True)
        f.PQcancel = <fn_cancel>_symbol(handle, b"PQcancel", path, True)
        f.PQfreeCancel = <fn_free_cancel>_symbol(handle, b"PQfreeCancel", path, True)

        f.PQcancelCreate = <fn_cancel_create>_symbol(handle, b"PQcancelCreate", path, False)
        f.PQcancelStart = <fn_cc_int>_symbol(handle, b"PQcancelStart", path, False)
        f.PQcancelBlocking = <fn_cc_int>_symbol(handle, b"PQcancelBlocking", path, False)
        f.PQcancelPoll = <fn_cc_int>_symbol(handle, b"PQcancelPoll", path, False)
        f.PQcancelStatus = <fn_cc_int>_symbol(handle, b"PQcancelStatus", path, False)
        f.PQcancelSocket = <fn_cc_int>_symbol(handle, b"PQcancelSocket", path, False)
        f.PQcancelErrorMessage = <fn_cc_text>_symbol(
            handle, b"PQcancelErrorMessage", path, False)
        f.PQcancelReset = <fn_cc_void>_symbol(handle, b"PQcancelReset", path, False)
        f.PQcancelFinish = <fn_cc_void>_symbol(handle, b"PQcancelFinish", path, False)
        self._has_cancel_conn = (
            f.PQcancelCreate != NULL
            and f.PQcancelStart != NULL
            and f.PQcancelBlocking != NULL
            and f.PQcancelPoll != NULL
            and f.PQcancelStatus != NULL
            and f.PQcancelSocket != NULL
            and f.PQcancelErrorMessage != NULL
            and f.PQcancelReset != NULL
            and f.PQcancelFinish != NULL
        )
        self._version = f.PQlibVersion()
        return self

    @classmethod
    def load(cls, path=None):
        """Load libpq from ``path``, ``$PSYCANCEL_LIBPQ`` or the system.

        Raises ``OSError`` if the file cannot be loaded and
        :class:`InterfaceError` if it is not a libpq.
        """
        cdef void* handle
        cdef void* version_func
        cdef const char* c_name
        cdef const char* err
        name = os.fspath(path) if path is not None else default_libpq_path()
        with _cache_lock:
            cached = _cache.get(name)
            if cached is not None:
                return cached
            b_name = os.fsencode(name)
            c_name = b_name
            with nogil:
                handle = dlopen(c_name, RTLD_NOW | RTLD_LOCAL)
                err = dlerror() if handle == NULL else NULL
            if handle == NULL:
                message = _message(err) or f"cannot load {name!r}"
                raise OSError(message)
            # A library that is not a libpq stays loaded, as with ctypes.CDLL.
            version_func = dlsym(handle, b"PQlibVersion")
            if version_func == NULL:
                raise InterfaceError(f"{name} is not a libpq (no PQlibVersion)")
            real = library_file_of(<uintptr_t>version_func)
            real_path = os.path.realpath(real) if real else os.fsdecode(name)
            lib = _cache.get(real_path)
            if lib is None:
                lib = Libpq._create(handle, real_path)
                _cache[real_path] = lib
            _cache[name] = lib
            return lib

    @property
    def path(self):
        """The file the library was loaded from."""
        return self._path

    @property
    def version(self):
        """``PQlibVersion()``: major * 10000 + minor."""
        return self._version

    @property
    def has_cancel_conn(self):
        """True if the library exports the ``PQcancelCreate`` family."""
        return self._has_cancel_conn

    @property
    def ssl_library(self):
        """The TLS library libpq was built with, or None."""
        cdef const char* raw = self._f.PQsslAttribute(NULL, b"library")
        return raw.decode() if raw != NULL and raw[0] != 0 else None

    def __repr__(self):
        return f"<Libpq {self._version} {self._path!r} (c)>"


cdef Libpq _check_libpq(object libpq):
    if not isinstance(libpq, Libpq):
        raise InterfaceError(
            f"expected a compiled Libpq, got {type(libpq).__name__}: "
            "a connection is only handed to a libpq of the same twin"
        )
    return <Libpq>libpq


# =====================================================================================
# Locking helpers (see "Locking" in the module docstring)
# =====================================================================================

# Outcomes of the C sections run under an object's lock; _raise_for() turns
# them into exceptions once the GIL is back.
cdef enum:
    R_OK = 0
    R_CLOSED = 1         # the pointer is gone: InterfaceError
    R_BAD = 2            # a cancel object that was BAD from the start: CancelError
    R_NOT_ALLOCATED = 3  # start()/blocking() on a used object: InterfaceError
    R_FAILED = 4         # libpq said no: CancelError / OperationalError, with its text
    R_NOT_STARTED = 5    # poll() before start(): InterfaceError
    R_WAIT = 6           # get_result(): wait for the socket, then try again
    R_INTERRUPTED = 7    # get_result(): a signal arrived; run the Python handlers


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
        raise InterfaceError(
            f"{what}() needs a new or reset cancel connection "
            f"(status {_conn_status(status).name})"
        )
    if rc == R_NOT_STARTED:
        raise InterfaceError("poll() before start()")
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


# =====================================================================================
# PGconn
# =====================================================================================

# PGconn calls cheap enough to keep the GIL (when it is enough: see above).
cdef enum:
    C_STATUS = 0
    C_SOCKET = 1
    C_BACKEND_PID = 2
    C_SSL_IN_USE = 3
    C_IS_BUSY = 4
    C_ERROR_MESSAGE = 5
    C_CANCEL_CREATE = 6
    C_GET_CANCEL = 7


cdef struct Answer:
    int value
    char* text        # C_ERROR_MESSAGE: a _dup() copy
    void* ptr         # C_CANCEL_CREATE, C_GET_CANCEL: the new object


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
            raise MemoryError("libpq could not allocate a connection")
        if lib._f.PQstatus(ptr) == _CONNECTION_BAD:
            message = _message(lib._f.PQerrorMessage(ptr))
            with nogil:
                lib._f.PQfinish(ptr)
            raise OperationalError(f"connection failed: {message}")
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
            raise InterfaceError(f"pgconn pointer must be an int, got {type(ptr).__name__}")
        if ptr <= 0:
            raise InterfaceError("pgconn pointer is NULL (is the connection closed?)")
        if ptr > <uintptr_t>-1:
            raise InterfaceError(f"pgconn pointer 0x{ptr:x} is not a valid address")
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
            raise InterfaceError(_CONN_FORKED)
        return 0

    cdef inline PGconn_t* _p(self) except NULL:
        if self._generation != _fork_generation:
            raise InterfaceError(_CONN_FORKED)
        if self._ptr == NULL:
            raise InterfaceError(_CONN_CLOSED)
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
            raise InterfaceError(_CONN_CLOSED)
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
            raise InterfaceError(_CONN_CLOSED)
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
        return _raise_for(rc, 0, msg, _CONN_CLOSED, "", OperationalError)

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
        module docstring): other threads can cancel, read the getters or
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
            _raise_for(rc, 0, msg, _CONN_CLOSED, "", OperationalError)
        if res == NULL:
            return None
        # The result belongs to this thread now: no lock needed to read it.
        return _copy_result(self._f, res)

    def cancel_conn(self):
        """A new ``PGcancelConn`` (``PQcancelCreate``)."""
        cdef Answer out
        if not self._libpq._has_cancel_conn:
            raise InterfaceError(
                f"libpq {self._libpq._version} at {self._libpq._path} has no "
                "PQcancelConn API (needs libpq >= 17)"
            )
        self._call(C_CANCEL_CREATE, &out)
        if out.ptr == NULL:
            raise MemoryError("libpq could not allocate a cancel connection")
        return PGcancelConn._wrap(<PGcancelConn_t*>out.ptr, self._libpq)

    def get_cancel(self):
        """A legacy cancel handle (``PQgetCancel``)."""
        cdef Answer out
        self._call(C_GET_CANCEL, &out)
        if out.ptr == NULL:
            raise InterfaceError("the connection has no cancel information (not open?)")
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
            raise InterfaceError(_CANCEL_CONN_FORKED)
        return 0

    cdef inline PGcancelConn_t* _p(self) except NULL:
        if self._generation != _fork_generation:
            raise InterfaceError(_CANCEL_CONN_FORKED)
        if self._ptr == NULL:
            raise InterfaceError(_CANCEL_CONN_FINISHED)
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
            raise InterfaceError(_CANCEL_CONN_FINISHED)
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
            raise InterfaceError(_CANCEL_CONN_FINISHED)
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
            rc, status, msg, _CANCEL_CONN_FINISHED,
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
            _raise_for(rc, 0, NULL, _CANCEL_CONN_FINISHED, "poll", CancelError)
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
            raise InterfaceError(_CANCEL_CONN_FINISHED)

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
# PGcancel
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
            raise InterfaceError(_CANCEL_FORKED)
        errbuf[0] = 0
        with nogil:
            with self._lock:
                ptr = self._ptr
                if ptr != NULL:
                    ok = self._f.PQcancel(ptr, errbuf, _CANCEL_ERRBUF)
        if ptr == NULL:
            raise InterfaceError(_CANCEL_FREED)
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


# =====================================================================================
# The offload engine (compiled twin only; used by psycancel._offload)
# =====================================================================================

include "_engine.pyx"
