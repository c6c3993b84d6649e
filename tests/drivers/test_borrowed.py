"""``psycancel.Borrowed``: a ``PGconn*`` address plus its libpq, no protocol to define.

Real drivers' connections (psycopg2-binary: libpq 17, psycopg[binary]: libpq 18,
both loaded in this process), their addresses handed over with the libpq named
as a path, a ``ctypes.CDLL`` or a psycancel ``Libpq``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
from collections.abc import Iterator
from typing import Any

import pytest

import psycancel
from psycancel._drivers.resolve import as_pgconn
from psycancel.pq import Libpq
from tests.drivers.test_prepared import Driver, cancelled
from tests.support.drivers import need as _need

psycopg2 = _need("psycopg2")
psycopg = _need("psycopg")

TIMEOUT = 20.0


@pytest.fixture(params=["psycopg2", "psycopg"])
def driver(request: pytest.FixtureRequest, dsn: str) -> Iterator[Driver]:
    d = Driver(request.param, dsn)
    try:
        yield d
    finally:
        d.close()


def pointer_of(driver: Driver) -> int:
    conn = driver.conn
    return int(conn.pgconn_ptr if driver.name == "psycopg2" else conn.pgconn.pgconn_ptr)


def libpq_path_of(driver: Driver) -> str:
    """The driver's own libpq file (what a driver author knows of it)."""
    return as_pgconn(driver.conn).libpq.path


@pytest.mark.parametrize("named_by", ["path", "cdll", "libpq"])
@pytest.mark.parametrize("how", ["sync", "async", "prepared"])
def test_borrowed_pointer_is_cancelled(driver: Driver, named_by: str, how: str) -> None:
    path = libpq_path_of(driver)
    libpq: Any = {
        "path": path,
        "cdll": ctypes.CDLL(path, mode=os.RTLD_NOLOAD) if named_by == "cdll" else None,
        "libpq": as_pgconn(driver.conn).libpq,
    }[named_by]
    borrowed = psycancel.Borrowed(pointer_of(driver), libpq)
    assert borrowed.libpq.path == path and borrowed.ptr == pointer_of(driver)
    query = driver.sleeping()
    if how == "sync":
        psycancel.cancel(borrowed, timeout=TIMEOUT)
    elif how == "async":
        asyncio.run(psycancel.cancel_async(borrowed, timeout=TIMEOUT))
    else:
        with psycancel.prepare(borrowed) as prepared:
            prepared.cancel(timeout=TIMEOUT)
    assert cancelled(query)


def test_the_other_twins_libpq_names_its_file(driver: Driver) -> None:
    from psycancel.pq import _ctypes

    path = libpq_path_of(driver)
    other: Any = _ctypes.Libpq.load(path) if psycancel.pq.__impl__ == "c" else None
    if other is None:
        from psycancel_c import _pq

        other = _pq.Libpq.load(path)
    borrowed = psycancel.Borrowed(pointer_of(driver), other)
    assert type(borrowed.libpq) is Libpq and borrowed.libpq.path == path


def test_null_pointer_is_a_closed_connection(driver: Driver) -> None:
    for ptr in (0, None):
        borrowed = psycancel.Borrowed(ptr, libpq_path_of(driver))
        psycancel.cancel(borrowed)  # nothing to cancel: returns at once
        assert psycancel.prepare(borrowed).empty


def test_refusals(driver: Driver, tmp_path: Any) -> None:
    ptr = pointer_of(driver)
    with pytest.raises(psycancel.InterfaceError, match="must be an int"):
        psycancel.Borrowed("0x1234", libpq_path_of(driver))  # type: ignore[arg-type]
    with pytest.raises(psycancel.InterfaceError, match="must be an int"):
        psycancel.Borrowed(True, libpq_path_of(driver))
    with pytest.raises(psycancel.InterfaceError, match="absolute"):
        psycancel.Borrowed(ptr, "libpq.so.5")
    missing = tmp_path / "libpq.so.5"
    missing.write_bytes(b"")
    with pytest.raises(psycancel.InterfaceError, match="not loaded"):
        psycancel.Borrowed(ptr, str(missing))
    with pytest.raises(psycancel.InterfaceError, match="not a libpq"):
        psycancel.Borrowed(ptr, ctypes.CDLL(None))
    with pytest.raises(psycancel.InterfaceError, match="must be a path"):
        psycancel.Borrowed(ptr, 42)  # type: ignore[arg-type]
