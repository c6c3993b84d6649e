"""Where a libpq comes from: the default search order and file names.

Shared by both twins, so that ``Libpq.load()`` picks the same file in each.

Default order (:func:`default_libpq_path`):

1. ``$PSYCANCEL_LIBPQ``;
2. the libpq bundled in a binary wheel (:func:`bundled_libpq_path`): the
   library the compiled twin was linked with when the wheel was built
   (``PSYCANCEL_BUNDLE_LIBPQ``), which the wheel repair tool copied next to
   the package (``psycancel.libs/libpq-<hash>.so.5.18`` with auditwheel,
   ``psycancel/.dylibs/`` with delocate, ``psycancel.libs/libpq-<hash>.dll``
   with delvewheel);
3. the system's libpq.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from pathlib import Path

__all__ = [
    "ENV_LIBPQ",
    "bundled_libpq_path",
    "default_libpq_origin",
    "default_libpq_path",
    "library_file_of",
]

ENV_LIBPQ = "PSYCANCEL_LIBPQ"
"""Environment variable naming the libpq file to load by default."""

_EXTENSION = "psycancel_c._pq"
"""The compiled twin: in a wheel, it is linked with the bundled libpq."""

_LIBS_DIRS = ("psycancel.libs", "psycancel/.dylibs", "psycancel_c/.dylibs")
"""Where wheel repair tools put bundled libraries, relative to site-packages."""

_LIBPQ_NAME = re.compile(r"^libpq(-[0-9a-f]{8,})?(\.so(\.\d+)*|(\.\d+)*\.dylib|\.dll)$")
"""libpq file names, as installed or renamed by a wheel repair tool."""


def default_libpq_path() -> str:
    """The libpq that ``Libpq.load()`` uses when given no path.

    Order: ``$PSYCANCEL_LIBPQ``, then the libpq bundled with a binary wheel,
    then the system's library (by full path on Linux, so that another libpq
    already loaded under the same soname is never picked up by mistake).
    Raises ``OSError`` if none is found.
    """
    return default_libpq_origin()[1]


def default_libpq_origin() -> tuple[str, str]:
    """``(origin, path)`` of the default libpq (see :func:`default_libpq_path`).

    origin is ``"env"``, ``"bundled"`` (shipped inside this installation, as
    in a binary wheel), ``"linked"`` (the libpq the compiled twin was linked
    with when it was built, outside the installation: a development build,
    e.g. ``tools/quickstart.sh``'s) or ``"system"``.
    """
    env = os.environ.get(ENV_LIBPQ)
    if env:
        return "env", env
    bundled = bundled_libpq_path()
    if bundled is not None:
        inside = os.path.realpath(bundled).startswith(str(_site_dir()) + os.sep)
        return ("bundled" if inside else "linked"), bundled
    path = system_libpq_path()
    if path is None:
        raise OSError(
            "no libpq found: install the system libpq (e.g. libpq5) or set "
            f"{ENV_LIBPQ} to the library file"
        )
    return "system", path


@functools.cache
def bundled_libpq_path() -> str | None:
    """The libpq shipped inside this installation of psycancel, or None.

    First the library the compiled twin is linked with (its file found with
    ``dlsym`` on the extension's handle, which searches the extension's
    dependencies, then ``dladdr``), whatever its name or directory; then a
    ``libpq*`` file in the directories where auditwheel, delocate and
    delvewheel put bundled libraries. Computed once per process.
    """
    return _linked_by_extension() or _in_libs_dirs()


def _site_dir() -> Path:
    """The directory that holds the ``psycancel`` package (site-packages)."""
    return Path(__file__).resolve().parents[2]


def _linked_by_extension() -> str | None:
    """The libpq the compiled twin's extension module is linked with, if any."""
    if sys.platform == "win32":
        return None
    module = sys.modules.get(_EXTENSION)
    origin = getattr(module, "__file__", None) if module is not None else None
    if origin is None:
        try:
            import importlib.util

            spec = importlib.util.find_spec(_EXTENSION)
        except (ImportError, ValueError):
            return None
        origin = spec.origin if spec is not None else None
    if not origin or not os.path.isfile(origin):
        return None
    try:
        # Maps the file (and its dependencies) without running its init
        # function; if Python has imported it already, this is the same handle.
        handle = ctypes.CDLL(origin, mode=getattr(os, "RTLD_LOCAL", 0))
        address = ctypes.cast(handle.PQlibVersion, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None  # not built, not loadable, or not linked with a libpq
    found = library_file_of(address or 0)
    if not found or os.path.realpath(found) == os.path.realpath(origin):
        return None
    return os.path.realpath(found)


def _in_libs_dirs() -> str | None:
    """A ``libpq*`` file in a wheel repair tool's directory next to the package."""
    site = _site_dir()
    for rel in _LIBS_DIRS:
        folder = site / rel
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        found = [n for n in names if _LIBPQ_NAME.match(n)]
        if found:
            return str(folder / found[0])
    return None


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
