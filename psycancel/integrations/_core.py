"""What the framework integrations share: the configuration and the per-block override."""

from __future__ import annotations

import contextvars
import threading
import time
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Final, NamedTuple, final

from .._after import _DONE, _NEW, cancel_after
from .._drivers.resolve import resolve
from .._engine.breaker import SocketFence
from .._engine.plan import DEFAULT_TIMEOUT, Plan, check_options, check_seconds
from .._procedure import prepare_target
from ..pq.abc import PGconn
from ..pq.enums import ConnStatus

__all__ = ["UNSET", "Deadline", "Unset", "check_limit", "pick", "query_timeout", "reusing"]


@final
class Unset:
    """The type of :data:`UNSET`: "not configured here", as opposed to None ("no deadline")."""

    _instance: Unset | None = None

    def __new__(cls) -> Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __reduce__(self) -> str:
        return "UNSET"


UNSET: Final = Unset()
"""Nothing set at this level: the next level's value applies."""

_block: contextvars.ContextVar[float | Unset | None] = contextvars.ContextVar(
    "psycancel_query_timeout", default=UNSET
)


def check_limit(seconds: float | None, name: str = "seconds") -> float | None:
    """``seconds`` checked as :func:`psycancel.cancel_after` does; None stays None."""
    return None if seconds is None else check_seconds(seconds, name)


class query_timeout:  # lower case: used like a function, as in ``with query_timeout(5)``
    """Override the configured deadline of every query run in the block (any integration).

    ``with query_timeout(30):`` gives the queries of the block 30 s whatever
    their connection, engine or database default; ``with query_timeout(None):``
    runs them with no deadline (the odd long report or migration). A
    per-statement setting (SQLAlchemy's ``execution_options``, a cursor's
    ``psycancel_timeout``) still wins over the block. The value is held in a
    :mod:`contextvars` variable: it follows the thread or asyncio task that
    entered the block, never another. Reusable; nests.
    """

    __slots__ = ("_seconds", "_tokens")

    def __init__(self, seconds: float | None) -> None:
        self._seconds = check_limit(seconds)
        self._tokens: list[contextvars.Token[float | Unset | None]] = []

    @property
    def seconds(self) -> float | None:
        """The block's deadline (None: no deadline)."""
        return self._seconds

    def __enter__(self) -> query_timeout:
        self._tokens.append(_block.set(self._seconds))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _block.reset(self._tokens.pop())

    def __repr__(self) -> str:
        return f"query_timeout({self._seconds!r})"


def pick(statement: float | Unset | None, default: float | None) -> float | None:
    """The deadline of one query: the statement's, else the block's, else the default."""
    if statement is not UNSET:
        return statement  # type: ignore[return-value]  # (narrowed: not UNSET)
    block = _block.get()
    if block is not UNSET:
        return block  # type: ignore[return-value]
    return default


class _Prepared(NamedTuple):
    """A connection's prepared, never-sent cancel, kept for its next query's block."""

    plan: Plan
    fence: SocketFence
    """The connection's socket when the cancel was made: still the same, still open."""
    pgconn: PGconn
    """The session it targets (read only once the fence says the socket is the same)."""
    timeout: float
    strict: bool


_prepared: dict[int, list[_Prepared]] = {}
"""``id(conn)`` -> a cell holding that driver connection's kept cancel (at most one).

The cell is made, with a ``weakref.finalize`` that drops it (and frees what it
holds) when the connection is collected, on the first keep; later takes and
keeps only pop from and append to it (atomic list operations: a connection
shared by threads, as psycopg's may be, never hands one cancel to two blocks).
"""
_cells_lock = threading.Lock()


def _drop(key: int) -> None:
    """The connection was collected: free its kept cancel."""
    for kept in _prepared.pop(key, ()):
        kept.plan.discard()


def _take(conn: object) -> _Prepared | None:
    cell = _prepared.get(id(conn))
    if not cell:
        return None
    try:
        return cell.pop()
    except IndexError:  # another thread took it meanwhile
        return None


def _keep(conn: object, kept: _Prepared) -> None:
    key = id(conn)
    cell = _prepared.get(key)
    if cell is None:
        with _cells_lock:
            cell = _prepared.get(key)
            if cell is None:
                try:
                    finalizer = weakref.finalize(conn, _drop, key)
                except TypeError:  # not weakly referenceable: nothing is kept for it
                    kept.plan.discard()
                    return
                finalizer.atexit = False  # type: ignore[misc,unused-ignore]  # (mypy < 2)
                cell = _prepared[key] = []
    cell.append(kept)
    while len(cell) > 1:  # two blocks of one connection gave theirs back: keep one
        try:
            extra = cell.pop(0)
        except IndexError:
            break
        extra.plan.discard()


class reusing(cancel_after):  # lower case: a cancel_after
    """:class:`psycancel.cancel_after` for a driver connection, reusing its prepared cancel.

    What the integrations run around each query. Everything but the
    preparation is ``cancel_after``'s (the timer, the cancel, the break, the
    fence of late cancels, the exceptions). The cancel object a block
    prepared and never sent (a query that ended in time: nearly every one)
    is kept for the connection's next block instead of being freed, and
    reused while the connection still is the same open session: its socket
    the same (the fence's check: a closed connection closed it, a
    reconnection made another), status OK, the same ``timeout`` and
    ``strict``. Preparing one (``PQcancelCreate``, the
    socket's fence) is most of a block's cost. A block whose cancel was sent
    keeps nothing: the next one prepares a new one. In the owning thread, as
    for ``cancel_after`` (entering resolves the connection there).
    """

    __slots__ = ()

    def _prepare(self) -> bool:
        if self._state != _NEW:
            raise RuntimeError("cancel_after() objects are single use: make a new one")
        self._state = _DONE
        conn = self._conn
        kept = _take(conn)
        if kept is not None:
            # The socket first: a driver that closed the connection closed it (and freed
            # the PGconn, which must not be read then); a reconnection has another one.
            if (
                kept.fence.same_socket()
                and kept.timeout == self._timeout
                and kept.strict == self._strict
                and kept.pgconn.status == ConnStatus.OK
            ):
                self._plan, self._fence, self._pgconn = kept.plan, kept.fence, kept.pgconn
                self._entered_at = time.monotonic()
                return True
            kept.plan.discard()
        found = resolve(conn)
        if found.watch is not None:  # a framework's object, not a driver's: no reuse
            self._state = _NEW
            return super()._prepare()
        # Frames above prepare_target: _prepare, __enter__/_aenter(/__aenter__), the caller.
        self._plan, self._fence, self._pgconn = prepare_target(
            found, timeout=self._timeout, strict=self._strict, stacklevel=3
        )
        if self._plan is None:
            return False
        self._entered_at = time.monotonic()
        return True

    def _release(self) -> None:
        """The block's unsent cancel: kept for the connection's next block."""
        plan, self._plan = self._plan, None
        fence, self._fence = self._fence, None
        pgconn, self._pgconn = self._pgconn, None
        if plan is None:
            return
        if pgconn is None or fence is None or self._unwatch is not None:
            plan.discard()
            return
        _keep(self._conn, _Prepared(plan, fence, pgconn, self._timeout, self._strict))


@dataclass(frozen=True)
class Deadline:
    """A configured default deadline: what every query gets unless overridden.

    ``seconds`` is the query's time limit (None: no deadline by default, only
    where an override sets one); ``timeout``, ``strict`` and
    ``break_connection`` are :class:`psycancel.cancel_after`'s: the bound on
    the cancel, the security policy, and whether the connection is broken
    when the cancel does not end the query within ``timeout``.
    """

    seconds: float | None
    timeout: float = DEFAULT_TIMEOUT
    strict: bool = False
    break_connection: bool = True

    def __post_init__(self) -> None:
        check_limit(self.seconds)
        check_options(self.timeout, self.strict)
        if not isinstance(self.break_connection, bool):
            raise TypeError("break_connection must be a bool")

    def guard(self, conn: object, statement: float | Unset | None = UNSET) -> cancel_after | None:
        """The ``cancel_after`` block for one query on ``conn``; None: no deadline applies.

        ``conn`` is a driver connection (a psycopg or psycopg2 connection...):
        the block is a :class:`reusing` one.
        """
        seconds = pick(statement, self.seconds)
        if seconds is None:
            return None
        return reusing(
            conn,  # type: ignore[arg-type]  # any driver connection psycancel resolves
            seconds,
            timeout=self.timeout,
            strict=self.strict,
            break_connection=self.break_connection,
        )


NO_DEADLINE: Final = Deadline(None)
"""The configuration of a connection nobody configured (overrides still apply)."""
