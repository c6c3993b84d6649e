"""Driver resolution is cached (per class, per extension file) without changing answers."""

from __future__ import annotations

import sys

import pytest

import psycancel
from psycancel._drivers import owner
from psycancel._drivers.resolve import as_pgconn

from .drivers_helpers import need

psycopg = need("psycopg")


def test_repeated_resolution_gives_the_same_libpq(dsn_plain: str) -> None:
    with psycopg.connect(dsn_plain) as conn:
        first, second = as_pgconn(conn), as_pgconn(conn)
        assert first is not None and second is not None
        assert first.libpq is second.libpq
        assert first.backend_pid == second.backend_pid == conn.info.backend_pid
        module = sys.modules[type(conn.pgconn).__module__]
        if owner._is_extension_file(getattr(module, "__file__", "") or ""):
            assert owner._by_module[module.__file__] is first.libpq


def test_a_cached_class_is_checked_again(dsn_plain: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(dsn_plain) as conn:
        assert as_pgconn(conn) is not None  # cached: psycopg.BaseConnection's row
        # The family's module is no longer imported: its row must not match any more.
        monkeypatch.delitem(sys.modules, "psycopg")
        with pytest.raises(psycancel.InterfaceError, match="cannot cancel"):
            as_pgconn(conn)
        monkeypatch.undo()
        assert as_pgconn(conn) is not None
