"""The sans-IO cancel machine alone, in memory, against a scripted cancel object.

In the manner of h11's tests: no socket, no server, no clock. A
``ScriptedCancelConn`` answers ``poll()`` from a script and records every call,
so each test states exactly what the machine asks for and in which order:
start once before the first wait, write-readiness first, the socket re-read at
every step (libpq may move to another address mid-way), FAILED and a negative
fd turned into ``CancelError`` with libpq's message, nothing done until resumed.
The waiters that drive it against real servers are tested elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import pytest

from psycancel import CancelError
from psycancel._engine.machine import READ, WRITE, cancel_steps
from psycancel.pq.abc import PGcancelConn
from psycancel.pq.enums import PollingStatus

OK, READING, WRITING, FAILED, ACTIVE = (
    PollingStatus.OK,
    PollingStatus.READING,
    PollingStatus.WRITING,
    PollingStatus.FAILED,
    PollingStatus.ACTIVE,
)


@dataclass
class ScriptedCancelConn:
    """A cancel object whose answers are a script: (socket after the step, poll result).

    ``sockets[i]`` is what ``socket`` returns before the i-th wait; ``polls[i]``
    what the i-th ``poll()`` returns. ``calls`` records every method used.
    """

    sockets: list[int]
    polls: list[PollingStatus]
    error_message: str = ""
    start_error: BaseException | None = None
    calls: list[str] = field(default_factory=list)
    _step: int = 0

    def start(self) -> None:
        self.calls.append("start")
        if self.start_error is not None:
            raise self.start_error

    @property
    def socket(self) -> int:
        self.calls.append("socket")
        return self.sockets[min(self._step, len(self.sockets) - 1)]

    def poll(self) -> PollingStatus:
        self.calls.append("poll")
        status = self.polls[self._step]
        self._step += 1
        return status


def drive(cc: ScriptedCancelConn) -> list[tuple[int, int]]:
    """Run the machine to its end as a waiter would (every wait is ready at once)."""
    return list(cancel_steps(cast(PGcancelConn, cc)))


def test_plain_cancel_write_then_read_then_done() -> None:
    cc = ScriptedCancelConn(sockets=[7], polls=[READING, OK])
    assert drive(cc) == [(7, WRITE), (7, READ)]
    assert cc.calls == ["start", "socket", "poll", "socket", "poll"]


def test_tls_like_sequence_alternates_as_libpq_asks() -> None:
    # SSLRequest written, 'S' read, ClientHello written, ServerHello read, ... done.
    script = [READING, WRITING, READING, WRITING, READING, OK]
    cc = ScriptedCancelConn(sockets=[5], polls=script)
    waits = drive(cc)
    assert [event for _, event in waits] == [WRITE, READ, WRITE, READ, WRITE, READ]
    assert cc.calls.count("start") == 1 and cc.calls.count("poll") == len(script)


def test_socket_change_mid_way_is_followed() -> None:
    # libpq gives up on one address and connects to the next: a new socket.
    cc = ScriptedCancelConn(sockets=[7, 7, 9, 9], polls=[READING, WRITING, READING, OK])
    assert drive(cc) == [(7, WRITE), (7, READ), (9, WRITE), (9, READ)]


def test_nothing_happens_until_the_waiter_resumes() -> None:
    cc = ScriptedCancelConn(sockets=[3], polls=[OK])
    steps = cancel_steps(cast(PGcancelConn, cc))
    assert cc.calls == []  # creating the machine does nothing
    assert next(steps) == (3, WRITE)
    assert cc.calls == ["start", "socket"]  # started, waiting: not polled yet
    with pytest.raises(StopIteration):
        next(steps)
    assert cc.calls == ["start", "socket", "poll"]


def test_failed_poll_raises_with_libpqs_message() -> None:
    cc = ScriptedCancelConn(sockets=[4], polls=[READING, FAILED], error_message="server closed")
    steps = cancel_steps(cast(PGcancelConn, cc))
    assert next(steps) == (4, WRITE)
    assert next(steps) == (4, READ)
    with pytest.raises(CancelError, match="server closed"):
        next(steps)


def test_failed_poll_without_message_names_the_status() -> None:
    cc = ScriptedCancelConn(sockets=[4], polls=[FAILED])
    with pytest.raises(CancelError, match="poll returned"):
        drive(cc)


@pytest.mark.parametrize("unexpected", [ACTIVE, 99])
def test_unexpected_status_is_a_failure_not_a_loop(unexpected: int) -> None:
    cc = ScriptedCancelConn(sockets=[4], polls=[cast(PollingStatus, unexpected)])
    with pytest.raises(CancelError):
        drive(cc)
    assert cc.calls.count("poll") == 1


@pytest.mark.parametrize(
    ("sockets", "polls", "waits_before"),
    [([-1], [], 0), ([6, -1], [READING], 1)],
    ids=["before-the-first-wait", "mid-way"],
)
def test_negative_fd_is_a_failure_with_libpqs_message(
    sockets: list[int], polls: list[PollingStatus], waits_before: int
) -> None:
    cc = ScriptedCancelConn(sockets=sockets, polls=polls, error_message="could not connect")
    steps = cancel_steps(cast(PGcancelConn, cc))
    for _ in range(waits_before):
        next(steps)
    with pytest.raises(CancelError, match="could not connect"):
        next(steps)
    # Never polled on a socket it does not have.
    assert cc.calls.count("poll") == waits_before


def test_negative_fd_without_message_says_no_socket() -> None:
    cc = ScriptedCancelConn(sockets=[-1], polls=[])
    with pytest.raises(CancelError, match="no socket"):
        drive(cc)


def test_start_failure_propagates_before_any_wait() -> None:
    cc = ScriptedCancelConn(sockets=[3], polls=[], start_error=CancelError("start refused"))
    with pytest.raises(CancelError, match="start refused"):
        drive(cc)
    assert cc.calls == ["start"]


def test_closing_the_machine_mid_way_stops_every_call() -> None:
    # What a waiter does on timeout or task cancellation: close(), then finish cc itself.
    cc = ScriptedCancelConn(sockets=[3], polls=[READING, READING, OK])
    steps = cancel_steps(cast(PGcancelConn, cc))
    next(steps)
    next(steps)
    before = list(cc.calls)
    steps.close()
    assert cc.calls == before
    with pytest.raises(StopIteration):
        next(steps)


def _events(waits: Iterable[tuple[int, int]]) -> list[int]:
    return [event for _, event in waits]


@pytest.mark.parametrize("n", [1, 2, 10, 1000])
def test_long_handshakes_end_and_follow_every_answer(n: int) -> None:
    script = [READING if i % 2 else WRITING for i in range(n)] + [OK]
    cc = ScriptedCancelConn(sockets=[8], polls=script)
    expected = [WRITE] + [READ if s == READING else WRITE for s in script[:-1]]
    assert _events(drive(cc)) == expected
