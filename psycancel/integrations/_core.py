"""What the framework integrations share: the configuration and the per-block override."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from types import TracebackType
from typing import Final, final

from .._after import cancel_after
from .._engine.plan import DEFAULT_TIMEOUT, check_options, check_seconds

__all__ = ["UNSET", "Deadline", "Unset", "check_limit", "pick", "query_timeout"]


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
        """The ``cancel_after`` block for one query on ``conn``; None: no deadline applies."""
        seconds = pick(statement, self.seconds)
        if seconds is None:
            return None
        return cancel_after(
            conn,  # type: ignore[arg-type]  # any driver connection psycancel resolves
            seconds,
            timeout=self.timeout,
            strict=self.strict,
            break_connection=self.break_connection,
        )


NO_DEADLINE: Final = Deadline(None)
"""The configuration of a connection nobody configured (overrides still apply)."""
