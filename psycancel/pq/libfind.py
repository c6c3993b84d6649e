"""Where a libpq comes from: the default search order and file names.

Shared by both twins, so that ``Libpq.load()`` picks the same file in each.

Default order (:func:`default_libpq_path`):

1. ``$PSYCANCEL_LIBPQ``;
2. the system's libpq.

No wheel bundles a libpq: a driver's connection is cancelled through the
driver's own libpq (``psycancel._drivers.owner``), so this default only
serves code that loads a ``Libpq`` itself.
"""

from __future__ import annotations

import ctypes
import os
import re
import sys

__all__ = [
    "ENV_LIBPQ",
    "default_libpq_origin",
    "default_libpq_path",
    "library_file_of",
]

ENV_LIBPQ = "PSYCANCEL_LIBPQ"
"""Environment variable naming the libpq file to load by default."""


def default_libpq_path() -> str:
    """The libpq that ``Libpq.load()`` uses when given no path.

    Order: ``$PSYCANCEL_LIBPQ``, then the system's library (by full path on
    Linux, so that another libpq already loaded under the same soname is
    never picked up by mistake).
    Raises ``OSError`` if none is found.
    """
    return default_libpq_origin()[1]


def default_libpq_origin() -> tuple[str, str]:
    """``(origin, path)`` of the default libpq (see :func:`default_libpq_path`).

    origin is ``"env"`` or ``"system"``.
    """
    env = os.environ.get(ENV_LIBPQ)
    if env:
        return "env", env
    path = system_libpq_path()
    if path is None:
        raise OSError(
            "no libpq found: install the system libpq (e.g. libpq5) or set "
            f"{ENV_LIBPQ} to the library file"
        )
    return "system", path


def system_libpq_path() -> str | None:
    from ctypes.util import find_library  # (here: it imports subprocess, shutil...)

    if sys.platform.startswith("linux"):
        found = _ldconfig_lookup("libpq.so.5")
        if found:
            return found
    if sys.platform == "win32":
        return find_library("libpq")
    return find_library("pq")


def _ldconfig_lookup(soname: str) -> str | None:
    """The full path ldconfig's cache gives for ``soname`` on this arch."""
    import subprocess  # (here, not at import: most programs never need it)

    for ldconfig in ("/sbin/ldconfig", "/usr/sbin/ldconfig", "ldconfig"):
        try:
            out = subprocess.run(
                [ldconfig, "-p"], capture_output=True, text=True, check=False
            ).stdout
        except OSError:
            continue
        want_64 = sys.maxsize > 2**32
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
            if not m or m.group(1) != soname:
                continue
            is_64 = "64" in m.group(2)
            if is_64 == want_64:
                return m.group(3)
        return None
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _dladdr_function() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if sys.platform == "win32":
        return None
    for lib in (None, "libdl"):
        if lib is not None:  # the process's symbols lack dladdr (glibc < 2.34): libdl's
            from ctypes.util import find_library  # (only then: it imports subprocess...)

            lib = find_library("dl")
        try:
            func = ctypes.CDLL(lib).dladdr
        except (OSError, AttributeError):
            continue
        func.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
        func.restype = ctypes.c_int
        return func
    return None


_dladdr = _dladdr_function()


def library_file_of(address: int) -> str | None:
    """The file of the shared object that contains ``address`` (``dladdr``)."""
    if _dladdr is None or not address:
        return None
    info = _DlInfo()
    if not _dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
        return None
    if not info.dli_fname:
        return None
    return os.fsdecode(info.dli_fname)
