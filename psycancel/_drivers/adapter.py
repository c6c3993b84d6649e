"""A row of the resolution table, and the helpers the family modules share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InterfaceError
from ..pq import Libpq, PGconn

__all__ = ["Acquired", "Adapter", "Released", "Unwatch", "Watch", "borrow"]

Acquired = Callable[[object], None]
"""Told, in the thread that owns it, the object a framework object has just acquired."""
Released = Callable[[], None]
"""Told, in the owning thread, that the framework object gave its connection back."""
Unwatch = Callable[[], None]
"""Stops a watch (idempotent)."""
Watch = Callable[[Any, Acquired, Released], Unwatch]
"""Start watching what a framework object acquires (``cancel_after``'s late binding)."""


@dataclass(frozen=True)
class Adapter:
    """How to cancel instances of one class of one family.

    The class is ``getattr(sys.modules[module], name)``: it is looked up only
    in a module that is already imported, so that a family the program never
    imported costs one dictionary lookup and is never imported by psycancel.

    A row does exactly one of three things: ``pgconn`` (a driver's connection:
    its borrowed ``PGconn``), ``unwrap`` (a framework's object: the object it
    holds, which is resolved in turn) or ``hint`` (an object psycancel cannot
    cancel: why, and what to pass instead). ``refuse`` may be added to any row.

    A ``watch`` function must hold its target weakly and must not call
    ``acquired``/``released`` after its unwatch returned: a ``Canceller``
    keeps its watch for as long as it lives and stops it when collected.
    """

    module: str
    """The module (as in ``sys.modules``) whose attribute ``name`` is the class."""
    name: str
    """The class's attribute name in ``module``."""
    pgconn: Callable[[Any], PGconn | None] | None = None
    """The borrowed ``PGconn`` of an instance; None when it is closed (nothing to cancel)."""
    unwrap: Callable[[Any], object | None] | None = None
    """The object an instance holds now (resolved in turn); None: it holds none."""
    watch: Watch | None = None
    """For an ``unwrap`` row whose object acquires connections later (a session)."""
    hint: str | None = None
    """For a class that cannot be cancelled: the end of the ``InterfaceError``'s message."""
    refuse: Callable[[Any], str | None] | None = None
    """Why this instance can never be cancelled (None: it may be), asked before anything else.

    For an object whose class is fine but whose configuration is not (an
    SQLAlchemy session or engine of a driver without libpq): the object is
    refused at once, even when it holds no connection yet.
    """

    def __post_init__(self) -> None:
        given = [f for f in (self.pgconn, self.unwrap, self.hint) if f is not None]
        if len(given) != 1:
            raise ValueError(f"{self.module}.{self.name}: give one of pgconn, unwrap, hint")
        if self.watch is not None and self.unwrap is None:
            raise ValueError(f"{self.module}.{self.name}: watch needs unwrap")

    def matches(self, obj: object) -> bool:
        """True if the family is imported and ``obj`` is an instance of the class."""
        module = sys.modules.get(self.module)
        if module is None:
            return False
        cls = getattr(module, self.name, None)
        return isinstance(cls, type) and isinstance(obj, cls)


def borrow(ptr: object, libpq: Libpq, what: str) -> PGconn | None:
    """A borrowed ``PGconn`` of the active twin around a driver's pointer (None: NULL)."""
    if ptr is None or ptr == 0:
        return None
    if isinstance(ptr, bool) or not isinstance(ptr, int):
        raise InterfaceError(f"the {what} gave a PGconn pointer of type {type(ptr).__name__}")
    return PGconn.from_ptr(ptr, libpq)
