"""Both twin modules side by side, for tests that compare or parametrize them.

The fixtures built on this (``twin``, ``new_libpq``, ``old_libpq``) live in
``conftest.py``; test modules import ``compiled_twin`` and the libpq paths (resolved
as the ``libpq`` and ``legacy_libpq`` fixtures resolve them, never hard-coded).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from psycancel.pq import _ctypes
from testing import cached_postgres_prefix, libpq_file

__all__ = [
    "SYSTEM_LIBPQ_ENV",
    "TEST_LIBPQ_ENV",
    "_compiled",
    "_ctypes",
    "compiled_twin",
    "new_libpq_path",
    "old_libpq_path",
]

_compiled: ModuleType | None
try:
    _compiled = importlib.import_module("psycancel_c._pq")
except ImportError:  # not built: its tests are skipped (fail with PSYCANCEL_REQUIRE_EXT=1)
    _compiled = None

SYSTEM_LIBPQ_ENV = "PSYCANCEL_TEST_LEGACY_LIBPQ"
"""The legacy (< 17) libpq for the fallback tests; ``none``: there is none."""

TEST_LIBPQ_ENV = "PSYCANCEL_TEST_LIBPQ"
"""The new-API libpq under test: a file, or ``default`` (``Libpq.load()``'s: no
wheel bundles one, so that is ``$PSYCANCEL_LIBPQ`` or the system's)."""


def _new_libpq_path() -> str | None:
    """The libpq >= 17 under test: $PSYCANCEL_TEST_LIBPQ, $PSYCANCEL_LIBPQ, else the
    server build's (given explicitly: psycancel has no bundled default)."""
    wanted = os.environ.get(TEST_LIBPQ_ENV, "").strip()
    if wanted.lower() == "default":
        from psycancel.pq.libfind import default_libpq_path

        return default_libpq_path()
    if wanted:
        return wanted
    env = os.environ.get("PSYCANCEL_LIBPQ")
    if env:
        return env
    prefix = cached_postgres_prefix()
    return str(libpq_file(prefix)) if prefix else None


def _legacy_libpq_path() -> str | None:
    """The system's libpq < 17 ($PSYCANCEL_TEST_LEGACY_LIBPQ, else the linker's)."""
    if os.environ.get(SYSTEM_LIBPQ_ENV, "").strip().lower() == "none":
        return None
    from psycancel.pq.libfind import system_libpq_path

    path = os.environ.get(SYSTEM_LIBPQ_ENV) or system_libpq_path()
    if not path:
        raise RuntimeError(f"no system libpq found; set ${SYSTEM_LIBPQ_ENV}")
    return path


def new_libpq_path() -> str:
    """The new-API libpq file for tests that load it by hand ("" if not built yet)."""
    return _new_libpq_path() or ""


def old_libpq_path() -> str:
    """The legacy libpq file for tests that load it by hand ("" if there is none)."""
    return _legacy_libpq_path() or ""


def compiled_twin() -> ModuleType:
    """``psycancel_c._pq``; a skip (a failure with PSYCANCEL_REQUIRE_EXT=1) if absent."""
    if _compiled is None:
        if os.environ.get("PSYCANCEL_REQUIRE_EXT", "").lower() in ("1", "true", "yes", "on"):
            pytest.fail("the compiled twin psycancel_c._pq is not built")
        pytest.skip("the compiled twin psycancel_c._pq is not built")
    return _compiled
