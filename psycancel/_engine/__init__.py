"""The cancel engine: a plan for one cancel request, and the code that runs it.

What it holds:

* ``machine``: the sans-IO cancel state machine shared by every waiter and
  both twins (it yields ``(fd, READ|WRITE)``, never sleeps, selects or reads
  a clock);
* ``plan``: :class:`~psycancel._engine.plan.Plan`, what a cancel will do
  (the new API with its ``PGcancelConn``, or the legacy ``PQcancel`` with the
  security policy of ``policy`` applied), made from a ``PGconn`` in the
  thread that owns it, and the :class:`~psycancel._engine.plan.Deadline`
  that bounds it;
* ``waits``: the waits the runners share (one descriptor's readiness, and
  the waits an event loop must do);
* the runners of a plan: ``blocking`` (this thread), ``asyncio_loop`` (the
  running loop, inline or offloaded), ``anyio_loop`` (Trio and other AnyIO
  backends; the only module here that imports a third-party package, and
  only on that path), with ``offload`` (the background reactor) and
  ``legacy`` (``PQcancel`` in worker threads) beneath them;
* ``outcomes``: every exception a runner raises for a timeout or a C
  driver's outcome code, made in one place;
* ``async_library``: which async library runs the current task.

Imports go downward only: this package imports ``psycancel.pq`` and
``psycancel.errors``, never the drivers package nor the public API. Each
runner finishes (``PQcancelFinish``/``PQfreeCancel``) the plan's cancel
object on every outcome: success, failure, timeout, task cancellation.
"""
