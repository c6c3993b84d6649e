"""A row of the resolution table, and the helpers the family modules share."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InterfaceError
from ..pq import Libpq, PGconn

__all__ = ["Adapter", "borrow"]


@dataclass(frozen=True)
class Adapter:
    """How to cancel instances of one class of one family.

    The class is ``getattr(sys.modules[module], name)``: it is looked up only
    in a module that is already imported, so that a family the program never
    imported costs one dictionary lookup and is never imported by psycancel.
    """

    module: str
    """The module (as in ``sys.modules``) whose attribute ``name`` is the class."""
    name: str
    """The class's attribute name in ``module``."""
    pgconn: Callable[[Any], PGconn | None]
    """The borrowed ``PGconn`` of an instance; None when it is closed (nothing to cancel)."""

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
