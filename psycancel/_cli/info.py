"""``python -m psycancel info [--json]``: the implementation and the libpqs in use.

Besides psycancel's default libpq (the one ``Libpq.load()`` picks when given
no path: ``$PSYCANCEL_LIBPQ`` or the system's), it lists each installed driver and the libpq its
connections are cancelled through: a driver's connection is only ever handed
to the libpq that created it (``psycancel._drivers.owner``), which is often
not psycancel's default (psycopg2-binary and psycopg[binary] bundle their
own). To find that libpq this diagnostic command imports the drivers, which
psycancel itself never does.

On a free-threaded CPython, importing a driver that does not declare
free-threading support turns the GIL on (CPython warns on stderr): the command
keeps that warning quiet and says it instead (``free_threaded``; a driver's
``enables_gil``). psycancel's own modules keep the GIL off.

``--json`` prints one JSON object (keys documented in ``docs/packaging.md``):
``psycancel``, ``python``, ``free_threaded``, ``implementation``, ``twins``,
``libpq``, ``drivers``.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import json
import sys
import sysconfig
import warnings
from collections.abc import Callable
from typing import Any

from ..pq import Libpq
from ..pq.libfind import ENV_LIBPQ

__all__ = ["collect_info", "show_info"]

_ORIGINS = {
    "env": "from ${env}",
    "system": "system",
}


def _has_gssapi(path: str) -> bool:
    """Whether the libpq at ``path`` was built with GSSAPI (it links a GSSAPI library).

    libpq has no call that says so; ``dlsym`` on its handle searches its
    dependencies too, so ``gss_init_sec_context`` is found exactly when libpq
    links one (a GSS-encrypted session is possible: ``docs/deployments.md``).
    """
    try:
        return hasattr(ctypes.CDLL(path), "gss_init_sec_context")
    except OSError:
        return False


def _libpq_info(lib: Libpq) -> dict[str, Any]:
    major, minor = divmod(lib.version, 10000)
    return {
        "path": lib.path,
        "version": lib.version,
        "version_text": f"{major}.{minor}",
        "cancel_conn": lib.has_cancel_conn,
        "ssl_library": lib.ssl_library,
        "gssapi": _has_gssapi(lib.path),
    }


def _psycopg2_libpq() -> tuple[str, Libpq]:
    psycopg2 = importlib.import_module("psycopg2")
    from .._drivers.psycopg2 import driver_libpq

    return str(psycopg2.__version__), driver_libpq()


def _psycopg_libpq() -> tuple[str, Libpq]:
    psycopg = importlib.import_module("psycopg")
    from .._drivers.psycopg import libpq_of_pq_module

    version = f"{psycopg.__version__} ({psycopg.pq.__impl__} implementation)"
    return version, libpq_of_pq_module(psycopg.pq.PGconn.__module__)


_DRIVERS: tuple[tuple[str, Callable[[], tuple[str, Libpq]]], ...] = (
    ("psycopg2", _psycopg2_libpq),
    ("psycopg", _psycopg_libpq),
)
"""Each driver family with its own libpq (aiopg uses psycopg2's)."""


def _gil_enabled() -> bool:
    """Whether the GIL is on now (always, on a CPython that is not free-threaded)."""
    is_enabled: Callable[[], bool] | None = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else is_enabled()


def _driver_info(name: str, find: Callable[[], tuple[str, Libpq]]) -> dict[str, Any] | None:
    """The driver and its libpq; None if it is not installed."""
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except (ImportError, ValueError):
        return None
    gil_before = _gil_enabled()
    try:
        with warnings.catch_warnings():
            # (Free-threaded CPython: "The global interpreter lock (GIL) has been
            # enabled to load module ...": said in the output instead.)
            warnings.filterwarnings(
                "ignore", message="The global interpreter lock", category=RuntimeWarning
            )
            version, lib = find()
    except Exception as ex:  # a broken driver installation: report it, go on
        return {"driver": name, "version": None, "libpq": None, "error": f"{ex}"}
    return {
        "driver": name,
        "version": version,
        "libpq": _libpq_info(lib),
        "error": None,
        "enables_gil": not gil_before and _gil_enabled(),
    }


def collect_info() -> dict[str, Any]:
    """Everything ``info`` shows, as a JSON-ready dict (see the module documentation)."""
    from .. import __version__
    from ..pq import __impl__, import_twin
    from ..pq.libfind import default_libpq_origin

    twins: dict[str, dict[str, Any]] = {}
    for name in ("c", "python"):
        try:
            import_twin(name)
            twins[name] = {"available": True, "error": None}
        except ImportError as ex:
            twins[name] = {"available": False, "error": str(ex)}
    info: dict[str, Any] = {
        "psycancel": __version__,
        "python": sys.version.split()[0],
        "free_threaded": bool(sysconfig.get_config_var("Py_GIL_DISABLED")),
        "implementation": __impl__,
        "twins": twins,
    }
    try:
        origin, _ = default_libpq_origin()
        lib = Libpq.load()
    except OSError as ex:
        info["libpq"] = None
        info["libpq_error"] = str(ex)
    else:
        info["libpq"] = dict(_libpq_info(lib), origin=origin)
        info["libpq_error"] = None
    drivers = [_driver_info(name, find) for name, find in _DRIVERS]
    info["drivers"] = [d for d in drivers if d is not None]
    return info


def _libpq_line(lib: dict[str, Any]) -> str:
    return (
        f"libpq {lib['version_text']} at {lib['path']}, "
        f"PQcancelConn API: {lib['cancel_conn']}, TLS: {lib['ssl_library'] or 'none'}, "
        f"GSSAPI: {lib['gssapi']}"
    )


def _print_text(info: dict[str, Any]) -> None:
    print(f"psycancel {info['psycancel']} (Python {info['python']})")
    if info["free_threaded"]:
        print("free-threaded Python: psycancel keeps the GIL off")
    print(f"implementation: {info['implementation']}")
    for name, twin in info["twins"].items():
        state = "available" if twin["available"] else f"unavailable: {twin['error']}"
        print(f"  twin {name}: {state}")
    lib = info["libpq"]
    if lib is None:
        print(f"libpq: not found ({info['libpq_error']})")
    else:
        where = _ORIGINS[lib["origin"]].format(env=ENV_LIBPQ)
        print(f"libpq: {lib['path']} ({where})")
        print(f"libpq version: {lib['version_text']} ({lib['version']})")
        print(f"PQcancelConn API (encrypted, non-blocking cancel): {lib['cancel_conn']}")
        print(f"TLS support: {lib['ssl_library'] or 'none'}")
        print(f"GSSAPI encryption support: {lib['gssapi']}")
    drivers = info["drivers"]
    if not drivers:
        print("drivers: none installed (psycopg2, psycopg)")
        return
    print("drivers (their connections are cancelled through the driver's own libpq):")
    for driver in drivers:
        if driver["libpq"] is None:
            print(f"  {driver['driver']}: cannot tell its libpq ({driver['error']})")
        else:
            print(f"  {driver['driver']} {driver['version']}: {_libpq_line(driver['libpq'])}")
        if driver.get("enables_gil"):
            print(
                f"    importing {driver['driver']} turned the GIL on (it does not declare "
                "free-threading support)"
            )


def show_info(*, as_json: bool = False) -> int:
    """Print what psycancel would use here; 1 if no libpq can be found."""
    info = collect_info()
    if as_json:
        print(json.dumps(info, indent=2))
    else:
        _print_text(info)
    return 0 if info["libpq"] is not None else 1
