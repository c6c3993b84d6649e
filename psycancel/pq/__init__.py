"""The libpq layer: loads one of the two twins of one interface.

The interface is ``abc`` (Protocols and the contract every object keeps);
``enums``, ``messages`` (the error texts) and ``libfind`` (where a libpq
comes from) are shared by both twins. The twins are ``_ctypes`` (pure
Python) and the compiled ``psycancel_c._pq``; they import nothing else of
psycancel but ``psycancel.errors``. Nothing in this layer imports the layers
above it (the cancel engine, the drivers, the public API).

``PSYCANCEL_IMPL=c`` forces the compiled twin, ``PSYCANCEL_IMPL=python`` the
ctypes twin; unset (or ``auto``) tries the compiled twin first. ``__impl__``
names the active one; ``Libpq``, ``PGconn``, ``PGcancelConn`` and ``PGcancel``
are its classes (typed as the interface).
"""

from __future__ import annotations

import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING

from . import abc
from .enums import ConnStatus, PollingStatus

__all__ = [
    "ConnStatus",
    "Libpq",
    "PGcancel",
    "PGcancelConn",
    "PGconn",
    "PollingStatus",
    "__impl__",
    "abc",
    "import_twin",
]

ENV_IMPL = "PSYCANCEL_IMPL"

_CTYPES_MODULE = __name__ + "._ctypes"
_COMPILED_MODULE = "psycancel_c._pq"


def import_twin(name: str) -> ModuleType:
    """Import a twin by name (``"c"`` or ``"python"``), with a clear error."""
    if name == "python":
        from . import _ctypes

        return _ctypes
    if name == "c":
        try:
            from psycancel_c import _pq
        except ImportError as ex:
            raise ImportError(
                "the compiled twin psycancel_c._pq is not available "
                f"(not built, or it failed to import: {ex})"
            ) from ex
        module: ModuleType = _pq
        return module
    raise ImportError(f"unknown {ENV_IMPL}={name!r}: use 'c', 'python' or 'auto'")


def _select() -> tuple[str, ModuleType]:
    wanted = os.environ.get(ENV_IMPL, "auto").strip().lower() or "auto"
    if wanted != "auto":
        return wanted, import_twin(wanted)
    try:
        return "c", import_twin("c")
    except ImportError:
        return "python", import_twin("python")


__impl__, _twin = _select()

if TYPE_CHECKING:
    # Both twins implement this interface (the parity tests check it).
    from .abc import Libpq, PGcancel, PGcancelConn, PGconn
else:
    Libpq = _twin.Libpq
    PGconn = _twin.PGconn
    PGcancelConn = _twin.PGcancelConn
    PGcancel = _twin.PGcancel


def _pgconn_classes() -> tuple[type, ...]:
    """The ``PGconn`` classes of both twins, as far as they are loaded in this process.

    For recognising a psycancel ``PGconn`` of either twin. Neither twin is
    imported here: an object can only be an instance of a class that exists
    (importing the ctypes twin on the first cancel cost the caller ~11 ms,
    an event loop's included).
    """
    classes = []
    for name in (_CTYPES_MODULE, _COMPILED_MODULE):
        cls = getattr(sys.modules.get(name), "PGconn", None)
        if isinstance(cls, type):
            classes.append(cls)
    return tuple(classes)
