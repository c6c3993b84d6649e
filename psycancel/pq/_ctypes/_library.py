"""The ctypes twin's ``Libpq``: one loaded library and its bound functions."""

from __future__ import annotations

import ctypes
import os
import threading
from ctypes import c_void_p
from typing import Any, ClassVar, NoReturn

from ...errors import InterfaceError
from .. import messages as M
from ..libfind import default_libpq_path, library_file_of
from ._common import refuse_to_pickle
from ._functions import Functions

__all__ = ["Libpq", "check_libpq"]


class Libpq:
    """A loaded libpq (ctypes). Use :meth:`load`; one instance per file."""

    _cache: ClassVar[dict[str, Libpq]] = {}
    _cache_lock: ClassVar[threading.Lock] = threading.Lock()

    _dll: ctypes.CDLL
    f: Any
    _path: str
    _version: int
    _has_cancel_conn: bool

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("use Libpq.load() to get a Libpq")

    def __reduce__(self) -> NoReturn:
        refuse_to_pickle(self)

    @classmethod
    def _create(cls, dll: ctypes.CDLL, path: str) -> Libpq:
        self = object.__new__(cls)
        self._dll = dll
        self.f = Functions(dll)
        self._path = path
        self._version = int(self.f.PQlibVersion())
        self._has_cancel_conn = self.f.has_cancel_conn
        return self

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> Libpq:
        """Load libpq from ``path``, ``$PSYCANCEL_LIBPQ`` or the system.

        Raises ``OSError`` if the file cannot be loaded and
        :class:`InterfaceError` if it is not a libpq.
        """
        name = os.fspath(path) if path is not None else default_libpq_path()
        with cls._cache_lock:
            cached = cls._cache.get(name)
            if cached is not None:
                return cached
            dll = ctypes.CDLL(name)
            try:
                version_func = dll.PQlibVersion
            except AttributeError:
                raise InterfaceError(M.not_a_libpq(name)) from None
            real = library_file_of(ctypes.cast(version_func, c_void_p).value or 0)
            real_path = os.path.realpath(real) if real else name
            lib = cls._cache.get(real_path)
            if lib is None:
                lib = cls._create(dll, real_path)
                cls._cache[real_path] = lib
            cls._cache[name] = lib
            return lib

    @property
    def path(self) -> str:
        """The file the library was loaded from."""
        return self._path

    @property
    def version(self) -> int:
        """``PQlibVersion()``: major * 10000 + minor."""
        return self._version

    @property
    def has_cancel_conn(self) -> bool:
        """True if the library exports the ``PQcancelCreate`` family."""
        return self._has_cancel_conn

    @property
    def ssl_library(self) -> str | None:
        """The TLS library libpq was built with, or None."""
        raw = self.f.PQsslAttribute(None, b"library")
        return raw.decode() if raw else None

    @property
    def native_driver(self) -> None:
        """None: this twin has no C driver; the engine's Python waiters drive its cancels."""
        return None

    def __repr__(self) -> str:
        return f"<Libpq {self._version} {self._path!r} (ctypes)>"


def check_libpq(libpq: object) -> Libpq:
    """``libpq`` if it is a ctypes ``Libpq``; :class:`InterfaceError` otherwise."""
    if not isinstance(libpq, Libpq):
        raise InterfaceError(M.other_twin_libpq("ctypes", libpq))
    return libpq
