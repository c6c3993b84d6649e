# Included by _pq.pyx after _driver.pyx: OffloadEngine, the C driver's thread of
# its own for many cancels (psycancel.pq.abc.OffloadEngine; cancel_async's
# offload hands them over). It poll(2)s every cancel socket plus a wake-up
# pipe and calls PQcancelPoll (_job_step) on each socket that became ready.
# That thread never takes the GIL (its body is one nogil loop), so the TLS
# handshakes run beside an event loop that keeps the GIL, and cancels never
# wait for the GIL between steps. Outcomes go to a *done* list; a Python
# thread blocks (without the GIL) in take_done() and settles the waiting
# futures.

from libc.stdlib cimport calloc, realloc

import sys


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* mutex, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)
    int pthread_cond_init(pthread_cond_t* cond, const void* attr)
    int pthread_cond_destroy(pthread_cond_t* cond)
    int pthread_cond_wait(pthread_cond_t* cond, pthread_mutex_t* mutex)
    int pthread_cond_broadcast(pthread_cond_t* cond)

cdef extern from "<unistd.h>" nogil:
    ssize_t read(int fd, void* buf, size_t count)
    ssize_t write(int fd, const void* buf, size_t count)
    int close(int fd)


class _Unraisable:
    """What ``sys.unraisablehook`` expects (an exception in the stage hook)."""

    def __init__(self, ex, obj):
        self.exc_type = type(ex)
        self.exc_value = ex
        self.exc_traceback = ex.__traceback__
        self.err_msg = "Exception ignored in the offload engine's stage hook"
        self.object = obj


cdef void _free_job(Job* job) noexcept nogil:
    if job.ptr != NULL:
        job.f.PQcancelFinish(job.ptr)
        job.ptr = NULL
    free(job.message)
    free(job)


@cython.final
cdef class OffloadEngine:
    """Drives detached cancel connections of this twin in a thread without the GIL.

    Use: one thread runs :meth:`run` (it returns after :meth:`close`), one
    thread loops on :meth:`take_done`; any thread may :meth:`submit` and
    :meth:`abort`. Every submitted connection is finished exactly once, by
    the engine, and reported exactly once by :meth:`take_done`. An engine
    belongs to the process that made it: in a forked child it refuses work
    and never touches the parent's connections.
    """

    cdef pthread_mutex_t _mutex
    cdef pthread_cond_t _cond
    cdef bint _sync_ready
    # Shared, under _mutex:
    cdef Job* _incoming
    cdef Job* _incoming_tail
    cdef long long* _aborts
    cdef Py_ssize_t _n_aborts
    cdef Py_ssize_t _cap_aborts
    cdef Job* _done
    cdef Job* _done_tail
    cdef bint _closing
    cdef bint _stopped
    cdef bint _running
    cdef bint _backlog        # jobs left queued by _take_incoming (engine thread)
    # The engine thread's own:
    cdef Job** _active
    cdef Py_ssize_t _n_active
    cdef Py_ssize_t _cap_active
    cdef pollfd* _pfds
    cdef Py_ssize_t _cap_pfds
    cdef Job* _finished        # reported, not yet published (see _collect)
    cdef Job* _finished_tail
    # Wake-up pipe (non-blocking, close-on-exec).
    cdef int _wake_r
    cdef int _wake_w
    cdef unsigned int _generation
    # Test seam: called (with the GIL) before each wait; None in production.
    cdef object _stage_hook
    cdef bint _has_stage_hook

    def __cinit__(self):
        self._wake_r = -1
        self._wake_w = -1
        self._generation = _fork_generation
        if pthread_mutex_init(&self._mutex, NULL) != 0:
            raise MemoryError("pthread_mutex_init failed")
        if pthread_cond_init(&self._cond, NULL) != 0:
            pthread_mutex_destroy(&self._mutex)
            raise MemoryError("pthread_cond_init failed")
        self._sync_ready = True
        r, w = os.pipe()
        os.set_blocking(r, False)
        os.set_blocking(w, False)
        self._wake_r, self._wake_w = r, w

    def __dealloc__(self):
        cdef Job* job
        cdef Job* nxt
        cdef Py_ssize_t i
        cdef int head
        if self._generation != _fork_generation:
            return  # the parent's: its lock may be held, its cancels are not ours
        for head in range(3):
            job = self._incoming if head == 0 else self._done if head == 1 else self._finished
            while job != NULL:
                nxt = job.next
                _free_job(job)
                job = nxt
        for i in range(self._n_active):
            _free_job(self._active[i])
        free(self._active)
        free(self._pfds)
        free(self._aborts)
        if self._wake_r >= 0:
            close(self._wake_r)
        if self._wake_w >= 0:
            close(self._wake_w)
        if self._sync_ready:
            pthread_cond_destroy(&self._cond)
            pthread_mutex_destroy(&self._mutex)

    cdef int _check_process(self) except -1:
        if self._generation != _fork_generation:
            raise InterfaceError(M.forked("offload engine"))
        return 0

    def fds(self):
        """The engine's file descriptors (its wake-up pipe)."""
        return {self._wake_r, self._wake_w}

    def set_stage_hook(self, hook):
        """Tests: ``hook(job_id, status, events)`` runs in the engine thread before
        each wait (``status``: ``PQcancelStatus``; ``events``: ``POLLIN`` or
        ``POLLOUT``), with the GIL; ``None`` removes it. Set it while no job runs.
        """
        self._stage_hook = hook
        self._has_stage_hook = hook is not None

    cdef void _wake(self) noexcept nogil:
        cdef char byte = 0
        cdef ssize_t ignored = write(self._wake_w, &byte, 1)  # full: awake already

    def submit(self, PGcancelConn cc not None, double deadline, long long job_id):
        """Take ``cc`` (new, not started) and drive it until ``deadline`` (monotonic).

        ``cc`` reads as finished afterwards; the engine finishes the libpq
        object. Raises :class:`InterfaceError` for a used or finished ``cc``
        or after :meth:`close`.
        """
        cdef Job* job
        cdef bint closing, first
        self._check_process()
        job = <Job*>calloc(1, sizeof(Job))
        if job == NULL:
            raise MemoryError()
        try:
            job.ptr = _take_cancel_conn(cc)
        except BaseException:
            free(job)
            raise
        job.id = job_id
        job.f = cc._f
        job.deadline = deadline
        job.fd = -1
        job.outcome = J_RUNNING
        with nogil:
            pthread_mutex_lock(&self._mutex)
            closing = self._closing
            # Queued jobs mean a wake-up is on its way already (the submit that
            # found the queue empty writes one after unlocking): one per burst.
            first = self._incoming == NULL
            if not closing:
                if self._incoming_tail == NULL:
                    self._incoming = job
                else:
                    self._incoming_tail.next = job
                self._incoming_tail = job
            pthread_mutex_unlock(&self._mutex)
            if closing:
                _free_job(job)
            elif first:
                self._wake()
        if closing:
            raise InterfaceError("the offload engine is closed")

    def abort(self, long long job_id):
        """Stop the job ``job_id`` (reported as aborted unless it ended already)."""
        cdef long long* grown
        cdef Py_ssize_t cap
        cdef bint queued
        self._check_process()
        with nogil:
            pthread_mutex_lock(&self._mutex)
            if self._n_aborts == self._cap_aborts:
                cap = 16 if self._cap_aborts == 0 else 2 * self._cap_aborts
                grown = <long long*>realloc(self._aborts, cap * sizeof(long long))
                if grown != NULL:
                    self._aborts = grown
                    self._cap_aborts = cap
            queued = self._n_aborts < self._cap_aborts
            if queued:
                self._aborts[self._n_aborts] = job_id
                self._n_aborts += 1
            pthread_mutex_unlock(&self._mutex)
            self._wake()
        if not queued:
            raise MemoryError()

    def close(self):
        """Abort every job and make :meth:`run` and :meth:`take_done` return."""
        self._check_process()
        with nogil:
            pthread_mutex_lock(&self._mutex)
            self._closing = True
            pthread_mutex_unlock(&self._mutex)
            self._wake()

    def take_done(self):
        """Wait (GIL released) for finished jobs: a list of ``(id, outcome, message)``.

        The outcome is one of the ``OUTCOME_*`` constants; the message is
        libpq's error text for ``OUTCOME_FAILED`` (else empty). An empty list
        means the engine has stopped and everything was reported.
        """
        cdef Job* head
        cdef Job* nxt
        self._check_process()
        with nogil:
            pthread_mutex_lock(&self._mutex)
            while self._done == NULL and not self._stopped:
                pthread_cond_wait(&self._cond, &self._mutex)
            head = self._done
            self._done = NULL
            self._done_tail = NULL
            pthread_mutex_unlock(&self._mutex)
        out = []
        while head != NULL:
            nxt = head.next
            try:
                out.append((head.id, head.outcome, _message(head.message)))
            finally:
                head.next = NULL
                _free_job(head)
            head = nxt
        return out

    def run(self):
        """The engine thread's body (GIL released); returns after :meth:`close`."""
        cdef bint ok
        self._check_process()
        with nogil:
            pthread_mutex_lock(&self._mutex)
            ok = not self._running
            self._running = True
            pthread_mutex_unlock(&self._mutex)
            if ok:
                self._loop()
        if not ok:
            raise InterfaceError("the offload engine is already running")

    # -- the engine thread (no GIL from here on)

    cdef void _report(self, Job* job, int outcome) noexcept nogil:
        """Finish the libpq object; the job goes to take_done() at the next _collect().

        The job stays in the active set (where the loop may still look at it)
        until _collect() removes it, and only then is it published: once
        published, take_done() frees it, so the engine never touches it again.
        """
        if outcome == J_FAILED and job.message == NULL and job.ptr != NULL:
            job.message = _dup(job.f.PQcancelErrorMessage(job.ptr))
        if job.ptr != NULL:
            job.f.PQcancelFinish(job.ptr)
            job.ptr = NULL
        job.outcome = outcome
        job.next = NULL
        if self._finished_tail == NULL:
            self._finished = job
        else:
            self._finished_tail.next = job
        self._finished_tail = job

    cdef void _collect(self) noexcept nogil:
        """Drop reported jobs from the active set, then publish them to take_done()."""
        cdef Py_ssize_t i, kept = 0
        for i in range(self._n_active):
            if self._active[i].outcome == J_RUNNING:
                self._active[kept] = self._active[i]
                kept += 1
        self._n_active = kept
        if self._finished == NULL:
            return
        pthread_mutex_lock(&self._mutex)
        if self._done_tail == NULL:
            self._done = self._finished
        else:
            self._done_tail.next = self._finished
        self._done_tail = self._finished_tail
        pthread_cond_broadcast(&self._cond)
        pthread_mutex_unlock(&self._mutex)
        self._finished = NULL
        self._finished_tail = NULL

    cdef void _advance(self, Job* job, int result) noexcept nogil:
        """After a step: report the job if it ended, else (tests) call the hook."""
        if result != J_RUNNING:
            self._report(job, result)
        elif self._has_stage_hook:
            self._call_stage_hook(job)

    cdef void _call_stage_hook(self, Job* job) noexcept nogil:
        cdef int status = job.f.PQcancelStatus(job.ptr)
        with gil:
            try:
                self._stage_hook(job.id, status, job.events)
            except BaseException as ex:
                sys.unraisablehook(_Unraisable(ex, self._stage_hook))

    cdef void _fail_all(self, const char* text) noexcept nogil:
        """Report every active job as failed with ``text``, then publish them."""
        cdef Py_ssize_t i
        for i in range(self._n_active):
            self._active[i].message = strdup(text)
            self._report(self._active[i], J_FAILED)
        self._collect()

    cdef void _start(self, Job* job) noexcept nogil:
        self._advance(job, _job_start(job))

    cdef void _step(self, Job* job) noexcept nogil:
        self._advance(job, _job_step(job))

    cdef bint _take_incoming(self) noexcept nogil:
        """Move new jobs to the active set and apply aborts; False once closing."""
        cdef Job* job
        cdef Job** grown
        cdef Py_ssize_t i, j, cap
        cdef bint closing
        pthread_mutex_lock(&self._mutex)
        closing = self._closing
        job = self._incoming
        while job != NULL:
            if self._n_active == self._cap_active:
                cap = 16 if self._cap_active == 0 else 2 * self._cap_active
                grown = <Job**>realloc(self._active, cap * sizeof(Job*))
                if grown == NULL:
                    break  # out of memory: the rest waits for the next round
                self._active = grown
                self._cap_active = cap
            self._incoming = job.next
            if self._incoming == NULL:
                self._incoming_tail = NULL
            job.next = NULL
            self._active[self._n_active] = job
            self._n_active += 1
            job = self._incoming
        for i in range(self._n_aborts):
            for j in range(self._n_active):
                if self._active[j].id == self._aborts[i]:
                    self._active[j].abort = True
        self._n_aborts = 0
        self._backlog = self._incoming != NULL  # (out of memory: retry soon)
        pthread_mutex_unlock(&self._mutex)
        return not closing

    cdef void _drain_wake(self) noexcept nogil:
        cdef char buf[256]
        while read(self._wake_r, buf, sizeof(buf)) > 0:
            pass

    cdef void _loop(self) noexcept nogil:
        cdef Py_ssize_t i, n
        cdef Job* job
        cdef Job* nxt
        cdef double now, nearest
        cdef int timeout_ms, rc, failure
        cdef pollfd* grown
        while self._take_incoming():
            for i in range(self._n_active):
                job = self._active[i]
                if job.abort:
                    self._report(job, J_ABORTED)
                elif not job.started:
                    self._start(job)
            now = _monotonic()
            nearest = -1.0
            for i in range(self._n_active):
                job = self._active[i]
                if job.outcome != J_RUNNING:
                    continue
                if job.deadline <= now:
                    self._report(job, J_TIMEOUT)
                elif nearest < 0 or job.deadline < nearest:
                    nearest = job.deadline
            self._collect()
            n = self._n_active + 1
            if n > self._cap_pfds:
                grown = <pollfd*>realloc(self._pfds, n * sizeof(pollfd))
                if grown == NULL:
                    self._fail_all("out of memory in the offload engine")
                    continue
                self._pfds = grown
                self._cap_pfds = n
            self._pfds[0].fd = self._wake_r
            self._pfds[0].events = POLLIN
            self._pfds[0].revents = 0
            for i in range(self._n_active):
                self._pfds[i + 1].fd = self._active[i].fd
                self._pfds[i + 1].events = self._active[i].events
                self._pfds[i + 1].revents = 0
            if nearest < 0:
                timeout_ms = -1
            else:
                timeout_ms = _wait_ms(nearest, now)
            if self._backlog and (timeout_ms < 0 or timeout_ms > 10):
                timeout_ms = 10  # queued jobs no wake-up will announce
            rc = poll(self._pfds, <nfds_t>n, timeout_ms)
            failure = errno if rc < 0 else 0
            if failure != 0 and failure != EINTR:
                # (EINVAL: more sockets than RLIMIT_NOFILE; ENOMEM.) Fail, never spin.
                self._fail_all(strerror(failure))
                continue
            if rc <= 0:
                continue  # a deadline (or EINTR): the next round sees it
            if self._pfds[0].revents:
                # Aborts requested while waiting win over readiness seen with them.
                self._drain_wake()
                if not self._take_incoming():
                    break
            for i in range(n - 1):
                job = self._active[i]
                if job.abort:
                    self._report(job, J_ABORTED)
                elif self._pfds[i + 1].revents:
                    # Any readiness, error or hang-up: PQcancelPoll finds out.
                    self._step(job)
            self._collect()
        # Closing: every job still here is aborted (and finished).
        for i in range(self._n_active):
            self._report(self._active[i], J_ABORTED)
        self._collect()
        pthread_mutex_lock(&self._mutex)
        job = self._incoming
        self._incoming = NULL
        self._incoming_tail = NULL
        pthread_mutex_unlock(&self._mutex)
        while job != NULL:
            nxt = job.next
            self._report(job, J_ABORTED)  # (never in the active set)
            job = nxt
        self._collect()
        pthread_mutex_lock(&self._mutex)
        self._stopped = True
        pthread_cond_broadcast(&self._cond)
        pthread_mutex_unlock(&self._mutex)
