"""The owning libpq: which loaded libpq created a driver's ``PGconn``.

A ``PGconn`` is an opaque struct whose layout changes between libpq versions,
so it may only be handed to the libpq that created it. Several libpqs can be
loaded in one process (psycopg2-binary and psycopg[binary] each bundle a copy,
renamed by auditwheel, e.g. ``psycopg2_binary.libs/libpq-a17e3caa.so.5.17``),
so "a libpq" is never good enough: we find *the* one.

How: open the driver's extension module with ``RTLD_NOLOAD`` (it is loaded
already; nothing new is mapped) and look ``PQlibVersion`` up on that handle.
``dlsym`` on a handle searches that object and then its dependencies, in the
order the dynamic linker bound them, so it answers with the very function the
extension calls. ``dladdr`` on that address names the library file; the
active twin's :meth:`Libpq.load` then opens that file, which, being loaded
already, is the same mapped library. Before trusting the answer we check that
the file is loaded and that its ``PQlibVersion`` *is* that address: if
anything disagrees we raise :class:`InterfaceError` and never guess.

Results are cached per extension module (by its ``__file__`` as given, then
as resolved: a loaded extension is never replaced in a process) and per
library file.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import os
import sys
import threading
from types import ModuleType

from ..errors import InterfaceError
from ..pq import Libpq
from ..pq.libfind import library_file_of

__all__ = ["libpq_of_cdll", "libpq_of_extension", "libpq_of_file"]

_PROBE = "PQlibVersion"
"""A symbol every libpq (>= 9.1) exports; its address identifies the library."""

_lock = threading.Lock()
_by_module: dict[str, Libpq] = {}
_by_file: dict[str, Libpq] = {}


def _rtld_noload() -> int:
    flag = getattr(os, "RTLD_NOLOAD", None)
    if flag is None or sys.platform == "win32":
        raise InterfaceError(
            "finding the libpq that owns a driver's connection needs dlopen(RTLD_NOLOAD) "
            f"and dladdr, which this platform ({sys.platform}) does not have"
        )
    return int(flag)


def _open_loaded(path: str) -> ctypes.CDLL | None:
    """A handle on ``path`` if it is loaded in this process, else None."""
    try:
        return ctypes.CDLL(path, mode=_rtld_noload())
    except OSError:
        return None


def _address_of(dll: ctypes.CDLL, name: str) -> int | None:
    try:
        func = getattr(dll, name)
    except AttributeError:
        return None
    return ctypes.cast(func, ctypes.c_void_p).value or None


def _libpq_at(address: int, what: str) -> Libpq:
    """The active twin's ``Libpq`` for the library whose ``PQlibVersion`` is at ``address``."""
    found = library_file_of(address)
    if not found:
        raise InterfaceError(
            f"dladdr could not name the library that provides {_PROBE} to {what}; "
            "refusing to guess which libpq owns the connection"
        )
    path = os.path.realpath(found)
    with _lock:
        cached = _by_file.get(path)
    if cached is not None:
        return cached
    handle = _open_loaded(path)
    if handle is None or _address_of(handle, _PROBE) != address:
        raise InterfaceError(
            f"{what} uses the libpq in {found}, but opening that file does not give "
            "the same library; refusing to guess which libpq owns the connection"
        )
    try:
        lib = Libpq.load(path)
    except (OSError, InterfaceError) as ex:
        raise InterfaceError(f"cannot load the libpq of {what} ({path}): {ex}") from ex
    with _lock:
        _by_file.setdefault(path, lib)
    return lib


def _is_extension_file(path: str) -> bool:
    return path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


def libpq_of_extension(module: ModuleType) -> Libpq:
    """The libpq that the compiled extension ``module`` is linked with.

    :class:`InterfaceError` if ``module`` is not a loaded extension module or
    does not use a libpq.
    """
    file = getattr(module, "__file__", None)
    with _lock:
        cached = _by_module.get(file) if isinstance(file, str) else None
    if cached is not None:
        return cached  # before realpath: its lstat calls cost ~50 us per cancel
    name = getattr(module, "__name__", None) or repr(module)
    if not isinstance(file, str) or not _is_extension_file(file):
        raise InterfaceError(f"{name} is not a compiled extension module (file: {file!r})")
    key = os.path.realpath(file)
    with _lock:
        cached = _by_module.get(key)
    if cached is not None:
        _by_module.setdefault(file, cached)
        return cached
    handle = _open_loaded(key)
    if handle is None:
        raise InterfaceError(f"the extension module {name} ({file}) is not loaded in this process")
    address = _address_of(handle, _PROBE)
    if address is None:
        raise InterfaceError(
            f"the extension module {name} ({file}) is not linked with a libpq "
            f"(no {_PROBE} among its dependencies)"
        )
    lib = _libpq_at(address, f"the extension module {name}")
    with _lock:
        lib = _by_module.setdefault(key, lib)
        _by_module.setdefault(file, lib)
    return lib


def libpq_of_cdll(dll: ctypes.CDLL, what: str) -> Libpq:
    """The libpq behind a ctypes library object (e.g. psycopg's ``pq`` module)."""
    address = _address_of(dll, _PROBE)
    if address is None:
        raise InterfaceError(f"{what} is not a libpq (no {_PROBE})")
    return _libpq_at(address, what)


def libpq_of_file(path: str | os.PathLike[str], what: str) -> Libpq:
    """The libpq in ``path``, which must be loaded in this process already.

    For the ``__psycancel_pgconn__`` protocol: a driver names its libpq by file;
    a file that is not loaded cannot have created a live connection, so it is
    refused rather than loaded.
    """
    name = os.fspath(path)
    if not isinstance(name, str) or not name:
        raise InterfaceError(f"{what}: the libpq path must be a non-empty str, got {path!r}")
    if not os.path.isabs(name):
        # A bare name ("libpq.so.5") would match whichever libpq of that soname
        # was loaded first, not necessarily the driver's.
        raise InterfaceError(f"{what}: the libpq path must be absolute, got {name!r}")
    handle = _open_loaded(name)
    if handle is None:
        raise InterfaceError(
            f"{what}: the libpq {name!r} is not loaded in this process, so it cannot "
            "own the connection"
        )
    address = _address_of(handle, _PROBE)
    if address is None:
        raise InterfaceError(f"{what}: {name!r} is not a libpq (no {_PROBE})")
    return _libpq_at(address, what)
