# Included by _pq.pyx: the compiled twin's C driver (psycancel.pq.abc.NativeDriver),
# whole cancels run without the GIL.
#
# * run_blocking() drives one new PGcancelConn in the calling thread (cancel()
#   and cancel_after's timer thread use it);
# * OffloadEngine (_engine.pyx) drives many in a thread of its own
#   (cancel_async's offload).
#
# Both take the object's pointer (the Python object then reads as finished)
# and call PQcancelFinish on every outcome. Their steps, _job_start,
# _job_step and _job_wait, are those of psycancel._engine.machine.cancel_steps
# (start, wait for write-readiness, poll, wait for what the poll asked for,
# on the socket libpq names now, until OK or FAILED; the deadline checked
# before every wait). Every API test runs once per twin, so each scenario
# goes through these steps and through the Python machine (docs/offload.md).
# The driver is declared as NATIVE_DRIVER (Libpq.native_driver); the
# module-level run_blocking, OffloadEngine and OUTCOME_* are the same code.

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk_id, timespec* tp)
    const int CLOCK_MONOTONIC

cdef extern from "<math.h>" nogil:
    double ceil(double x)


cdef enum:
    J_OK = 0
    J_FAILED = 1
    J_TIMEOUT = 2
    J_ABORTED = 3
    J_RUNNING = -1
    J_INTERRUPTED = -2

# Outcomes of a cancel (run_blocking returns them, OffloadEngine.take_done reports them).
OUTCOME_OK = J_OK
OUTCOME_FAILED = J_FAILED
OUTCOME_TIMEOUT = J_TIMEOUT
OUTCOME_ABORTED = J_ABORTED

# PostgresPollingStatusType (libpq's ABI).
cdef enum:
    PG_POLLING_FAILED = 0
    PG_POLLING_READING = 1
    PG_POLLING_WRITING = 2
    PG_POLLING_OK = 3

cdef int _MAX_POLL_MS = 3600 * 1000   # a wait is re-planned at least hourly


cdef struct Job:
    long long id
    PGcancelConn_t* ptr
    Functions* f
    double deadline        # CLOCK_MONOTONIC seconds, as time.monotonic()
    int fd
    short events
    bint started
    bint abort
    int outcome            # J_RUNNING until done
    char* message          # J_FAILED: libpq's text (malloc'ed), or NULL
    Job* next


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


# The steps of psycancel._engine.machine.cancel_steps, on a Job (no GIL, no engine state).
# Each returns J_RUNNING (then job.fd/job.events say what to wait for), J_OK or
# J_FAILED.

cdef int _job_wait(Job* job, short events) noexcept nogil:
    """Wait next for ``events`` on the socket libpq names now."""
    job.fd = job.f.PQcancelSocket(job.ptr)
    job.events = events
    return J_RUNNING if job.fd >= 0 else J_FAILED


cdef int _job_start(Job* job) noexcept nogil:
    job.started = True
    if not job.f.PQcancelStart(job.ptr):
        return J_FAILED
    # Before the first poll, libpq expects write-readiness (connect done).
    return _job_wait(job, POLLOUT)


cdef int _job_step(Job* job) noexcept nogil:
    """``PQcancelPoll`` once the socket was ready (or in error)."""
    cdef int status = job.f.PQcancelPoll(job.ptr)
    if status == PG_POLLING_OK:
        return J_OK
    if status == PG_POLLING_READING:
        return _job_wait(job, POLLIN)
    if status == PG_POLLING_WRITING:
        return _job_wait(job, POLLOUT)
    return J_FAILED


cdef int _wait_ms(double deadline, double now) noexcept nogil:
    """poll(2)'s timeout until ``deadline``, rounded up (never ends just before it)."""
    cdef double ms = ceil((deadline - now) * 1000.0)
    return <int>(ms if ms < _MAX_POLL_MS else _MAX_POLL_MS)


cdef PGcancelConn_t* _take_cancel_conn(PGcancelConn cc) except NULL:
    """Take a new (not started) ``cc``'s pointer: ``cc`` then reads as finished."""
    cdef PGcancelConn_t* ptr
    cdef int rc = R_OK
    cc._check_process()
    _count_in(&cc._inflight)
    with nogil:
        with cc._lock:
            ptr = cc._ptr
            if ptr == NULL:
                rc = R_CLOSED
            elif cc._started or cc._f.PQcancelStatus(ptr) != _CONNECTION_ALLOCATED:
                rc = R_NOT_ALLOCATED
            else:
                cc._ptr = NULL
                cc._started = True
    _count_out(&cc._inflight)
    if rc == R_CLOSED:
        raise InterfaceError(M.CANCEL_CONN_FINISHED)
    if rc != R_OK:
        raise InterfaceError("the C driver needs a new cancel connection (not started)")
    return ptr


cdef int _run_until(Job* job, int* failure) noexcept nogil:
    """Drive ``job`` in this thread until it ends, its deadline, or a signal.

    Returns J_OK, J_FAILED (``failure``: an errno, or 0 for libpq's text),
    J_TIMEOUT, or J_INTERRUPTED (EINTR: run the signal handlers, then call
    again).
    """
    cdef pollfd pfd
    cdef double now
    cdef int rc
    cdef int result = J_RUNNING if job.started else _job_start(job)
    while result == J_RUNNING:
        now = _monotonic()
        if now >= job.deadline:
            return J_TIMEOUT
        pfd.fd = job.fd
        pfd.events = job.events
        pfd.revents = 0
        rc = poll(&pfd, 1, _wait_ms(job.deadline, now))
        if rc < 0:
            if errno == EINTR:
                return J_INTERRUPTED
            failure[0] = errno
            return J_FAILED
        if rc > 0:
            result = _job_step(job)
    return result


cdef tuple _run_blocking(PGcancelConn cc, double deadline):
    """run_blocking() (module level and NATIVE_DRIVER's): the whole cancel in this thread."""
    cdef Job job
    cdef int result
    cdef int failure = 0
    cdef char* message = NULL
    job.ptr = _take_cancel_conn(cc)
    job.f = cc._f
    job.deadline = deadline
    job.started = False
    job.fd = -1
    try:
        while True:
            with nogil:
                result = _run_until(&job, &failure)
            if result != J_INTERRUPTED:
                break
            PyErr_CheckSignals()  # may raise: the finally clause cleans up
        if result == J_FAILED:
            if failure != 0:
                message = strdup(strerror(failure))
            else:
                message = _dup(job.f.PQcancelErrorMessage(job.ptr))
    finally:
        with nogil:
            job.f.PQcancelFinish(job.ptr)
    return result, _take(message)


def run_blocking(PGcancelConn cc not None, double deadline):
    """Drive ``cc`` (new, not started) in this thread, GIL released, until ``deadline``.

    The whole cancel (start, ``poll(2)``, ``PQcancelPoll``, finish) runs in C;
    the GIL is taken back only at the end, or to run signal handlers (an
    exception they raise, e.g. ``KeyboardInterrupt``, propagates once the
    cancel connection is finished). ``cc`` reads as finished afterwards.
    Returns ``(outcome, message)``: ``OUTCOME_OK``, ``OUTCOME_FAILED`` (with
    libpq's text) or ``OUTCOME_TIMEOUT``.
    """
    return _run_blocking(cc, deadline)


@cython.final
cdef class _NativeDriver:
    """The compiled twin's C driver: :class:`psycancel.pq.abc.NativeDriver`.

    Its one instance is ``NATIVE_DRIVER``, also ``Libpq.native_driver``.
    """

    def __init__(self, *args, **kwargs):
        raise TypeError("use Libpq.native_driver (or NATIVE_DRIVER)")

    @property
    def OUTCOME_OK(self):
        """The request was sent and the server closed the cancel connection."""
        return J_OK

    @property
    def OUTCOME_FAILED(self):
        """libpq (or ``poll(2)``) reported a failure; its text comes with the code."""
        return J_FAILED

    @property
    def OUTCOME_TIMEOUT(self):
        """The deadline passed first."""
        return J_TIMEOUT

    @property
    def OUTCOME_ABORTED(self):
        """The job was aborted (offload engine only)."""
        return J_ABORTED

    def run_blocking(self, PGcancelConn cc not None, double deadline):
        """Drive ``cc`` (new, not started) in this thread, GIL released, until ``deadline``.

        Returns ``(outcome, message)``; see the module-level :func:`run_blocking`.
        """
        return _run_blocking(cc, deadline)

    def new_engine(self):
        """A new, not yet running :class:`OffloadEngine`."""
        return OffloadEngine()

    def __repr__(self):
        return "<NativeDriver (c)>"


NATIVE_DRIVER = _NativeDriver.__new__(_NativeDriver)
"""The compiled twin's C driver (``Libpq.native_driver``)."""
