"""The ctypes twin's declarations: libpq's functions, their C types, their binding.

Only what psycancel calls is declared: what wraps a connection made
elsewhere (status, socket, encryption, one option) and the cancel calls; no
function that connects, queries or finishes a connection. The ``PQcancel*`` family is optional
(libpq >= 17): a library without it binds the rest and reports
``has_cancel_conn = False``. ``PQgssEncInUse`` (libpq >= 12) is optional too:
``Functions.PQgssEncInUse`` is None without it.
"""

from __future__ import annotations

import ctypes
from ctypes import POINTER, Structure, c_char, c_char_p, c_int, c_void_p
from typing import Any

from ...errors import InterfaceError
from .. import messages as M

__all__ = ["CANCEL_CONN", "OPTIONAL", "REQUIRED", "ConninfoOption", "Functions"]


class ConninfoOption(Structure):
    """``PQconninfoOption``: one connection option (an array ends with a NULL keyword)."""

    _fields_ = [
        ("keyword", c_char_p),
        ("envvar", c_char_p),
        ("compiled", c_char_p),
        ("val", c_char_p),
        ("label", c_char_p),
        ("dispchar", c_char_p),
        ("dispsize", c_int),
    ]


# name: (restype, argtypes); the PQcancel* family is optional (libpq >= 17).
REQUIRED: dict[str, tuple[Any, list[Any]]] = {
    "PQlibVersion": (c_int, []),
    "PQstatus": (c_int, [c_void_p]),
    "PQerrorMessage": (c_char_p, [c_void_p]),
    "PQsocket": (c_int, [c_void_p]),
    "PQsslInUse": (c_int, [c_void_p]),
    "PQbackendPID": (c_int, [c_void_p]),
    "PQsslAttribute": (c_char_p, [c_void_p, c_char_p]),
    "PQconninfo": (POINTER(ConninfoOption), [c_void_p]),
    "PQconninfoFree": (None, [POINTER(ConninfoOption)]),
    "PQgetCancel": (c_void_p, [c_void_p]),
    "PQcancel": (c_int, [c_void_p, POINTER(c_char), c_int]),
    "PQfreeCancel": (None, [c_void_p]),
}
CANCEL_CONN: dict[str, tuple[Any, list[Any]]] = {
    "PQcancelCreate": (c_void_p, [c_void_p]),
    "PQcancelStart": (c_int, [c_void_p]),
    "PQcancelBlocking": (c_int, [c_void_p]),
    "PQcancelPoll": (c_int, [c_void_p]),
    "PQcancelStatus": (c_int, [c_void_p]),
    "PQcancelSocket": (c_int, [c_void_p]),
    "PQcancelErrorMessage": (c_char_p, [c_void_p]),
    "PQcancelReset": (None, [c_void_p]),
    "PQcancelFinish": (None, [c_void_p]),
}
# Bound when present, else None.
OPTIONAL: dict[str, tuple[Any, list[Any]]] = {
    "PQgssEncInUse": (c_int, [c_void_p]),  # libpq >= 12
}


class Functions:
    """The typed function pointers of one libpq (attributes named as in C)."""

    has_cancel_conn: bool
    conninfo_index: dict[bytes, int]
    """Where each keyword sits in ``PQconninfo``'s array (one fixed table per libpq)."""

    def __getattr__(self, name: str) -> Any:
        # Only reached for a name that was not bound: a missing symbol.
        raise AttributeError(f"libpq function {name} is not available")

    def __init__(self, dll: ctypes.CDLL) -> None:
        self.conninfo_index = {}
        for name, (restype, argtypes) in REQUIRED.items():
            try:
                self._bind(dll, name, restype, argtypes)
            except AttributeError:
                raise InterfaceError(M.not_usable_libpq(dll._name, name)) from None
        self.has_cancel_conn = True
        for name, (restype, argtypes) in CANCEL_CONN.items():
            try:
                self._bind(dll, name, restype, argtypes)
            except AttributeError:
                self.has_cancel_conn = False
        for name, (restype, argtypes) in OPTIONAL.items():
            try:
                self._bind(dll, name, restype, argtypes)
            except AttributeError:
                setattr(self, name, None)

    def _bind(self, dll: ctypes.CDLL, name: str, restype: Any, argtypes: list[Any]) -> None:
        func = getattr(dll, name)
        func.restype = restype
        func.argtypes = argtypes
        setattr(self, name, func)
