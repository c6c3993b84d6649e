"""Both twin modules side by side, for tests that compare or parametrize them.

The fixtures built on this (``twin``, ``new_libpq``, ``old_libpq``) live in
``conftest.py``; test modules import the constants and ``compiled_twin``.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

from psycancel.pq import _ctypes

__all__ = ["NEW_LIBPQ", "OLD_LIBPQ", "_compiled", "_ctypes", "compiled_twin"]

_compiled: ModuleType | None
try:
    _compiled = importlib.import_module("psycancel_c._pq")
except ImportError:  # not built: its tests are skipped (fail with PSYCANCEL_REQUIRE_EXT=1)
    _compiled = None

NEW_LIBPQ = os.environ.get("PSYCANCEL_LIBPQ") or "/var/cache/psycancel/postgresql-18/lib/libpq.so.5"
OLD_LIBPQ = "/usr/lib/x86_64-linux-gnu/libpq.so.5"


def compiled_twin() -> ModuleType:
    """``psycancel_c._pq``; a skip (a failure with PSYCANCEL_REQUIRE_EXT=1) if absent."""
    if _compiled is None:
        if os.environ.get("PSYCANCEL_REQUIRE_EXT", "").lower() in ("1", "true", "yes", "on"):
            pytest.fail("the compiled twin psycancel_c._pq is not built")
        pytest.skip("the compiled twin psycancel_c._pq is not built")
    return _compiled
