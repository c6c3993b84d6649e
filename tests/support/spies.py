"""Spies on the public API, each installed at the one seam every caller goes through.

* ``created``: every ``PGcancelConn`` the API creates (``plan.new_cancel_conn``);
* ``stage_spy``: every wait of the cancel machine (``machine.cancel_steps``, and
  the compiled twin's offload engine through its stage hook) with its *stage*
  (connect, ssl_response, tls_handshake, eof...), with a hook to act (e.g. cancel
  the task) at a given stage.

The seams are module attributes looked up at each call, so one patch covers every
caller (blocking, asyncio, AnyIO, offload, ``cancel_after``).
"""

from __future__ import annotations

import select
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from psycancel._engine import machine as _machine
from psycancel._engine import offload as _offload
from psycancel._engine import plan as _plan
from psycancel.pq.abc import PGcancelConn
from psycancel.pq.enums import ConnStatus


def spy_cancel_conns(monkeypatch: pytest.MonkeyPatch) -> list[PGcancelConn]:
    """Record every PGcancelConn the public API creates (sync, asyncio, AnyIO and
    ``cancel_after`` paths).

    The objects are kept alive by the list, so only the API can finish them.
    """
    made: list[PGcancelConn] = []
    original = _plan.new_cancel_conn

    def spy(pgconn: Any) -> PGcancelConn:
        cc = original(pgconn)
        made.append(cc)
        return cc

    # The one seam: every entry point makes its cancel objects through it.
    monkeypatch.setattr(_plan, "new_cancel_conn", spy)
    return made


@pytest.fixture
def created(monkeypatch: pytest.MonkeyPatch) -> list[PGcancelConn]:
    """Every PGcancelConn the API creates (see :func:`spy_cancel_conns`)."""
    return spy_cancel_conns(monkeypatch)


def stage_of(event: int, status: ConnStatus, ssl_waits_before: int) -> str:
    """Name the stage of the cancel handshake a wait belongs to.

    ``connect``: waiting for the non-blocking connect (write-ready);
    ``write``: about to send (SSLRequest or CancelRequest);
    ``ssl_response``: SSLRequest sent, waiting for the one-byte answer;
    ``tls_handshake``: inside the TLS handshake;
    ``eof``: the CancelRequest is sent, waiting for the server to close.
    """
    if status == ConnStatus.STARTED:
        return "connect"
    if status == ConnStatus.MADE:
        return "write"
    if status == ConnStatus.SSL_STARTUP:
        if ssl_waits_before == 0 and event == _machine.READ:
            return "ssl_response"
        return "tls_handshake"
    if status == ConnStatus.AWAITING_RESPONSE:
        return "eof"
    return status.name.lower()


@dataclass
class StageSpy:
    """Wraps the cancel machine used by the API; records each wait's stage.

    ``at(stage, action)`` runs ``action()`` (once) when the machine is about to
    wait at that stage, *before* the waiter waits: e.g. cancel the task there.
    """

    stages: list[str] = field(default_factory=list)
    _actions: dict[str, Callable[[], None]] = field(default_factory=dict)

    def at(self, stage: str, action: Callable[[], None]) -> None:
        self._actions[stage] = action

    def install(self, monkeypatch: pytest.MonkeyPatch) -> StageSpy:
        original = _machine.cancel_steps

        def spy(cc: PGcancelConn) -> _machine.CancelSteps:
            steps = original(cc)
            ssl_waits = 0
            try:
                for fd, event in steps:
                    status = cc.status
                    stage = stage_of(event, status, ssl_waits)
                    if status == ConnStatus.SSL_STARTUP:
                        ssl_waits += 1
                    self.stages.append(stage)
                    action = self._actions.pop(stage, None)
                    if action is not None:
                        action()
                    yield fd, event
            finally:
                steps.close()

        # The one seam: every Python runner starts the machine through it.
        monkeypatch.setattr(_machine, "cancel_steps", spy)
        self._install_engine_hook(monkeypatch)
        return self

    def _install_engine_hook(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The same observation in the compiled twin's offload engine (C, no machine).

        Remove it with :func:`remove_engine_stage_hook` (the ``stage_spy``
        fixture does), so that later tests run the engine without it.
        """
        engine = _compiled_engine()
        if engine is None:
            return
        ssl_waits: dict[int, int] = {}

        def hook(job_id: int, status: int, events: int) -> None:
            conn_status = ConnStatus(status)
            event = _machine.READ if events == select.POLLIN else _machine.WRITE
            stage = stage_of(event, conn_status, ssl_waits.get(job_id, 0))
            if conn_status == ConnStatus.SSL_STARTUP:
                ssl_waits[job_id] = ssl_waits.get(job_id, 0) + 1
            self.stages.append(stage)
            action = self._actions.pop(stage, None)
            if action is not None:
                action()

        engine.set_stage_hook(hook)


def _compiled_engine() -> Any:
    """The compiled twin's offload engine, or None without the compiled twin."""
    try:
        from psycancel_c import _pq as compiled
    except ImportError:
        return None
    from tests.support.twins import new_libpq_path

    native = compiled.Libpq.load(new_libpq_path()).native_driver
    return _offload.native_engine(native)


def remove_engine_stage_hook() -> None:
    """Undo :meth:`StageSpy.install`'s hook in the offload engine."""
    engine = _compiled_engine()
    if engine is not None:
        engine.set_stage_hook(None)


@pytest.fixture
def stage_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], StageSpy]]:
    """Make :class:`StageSpy` objects (installed); every hook is removed afterwards."""
    yield lambda: StageSpy().install(monkeypatch)
    remove_engine_stage_hook()
