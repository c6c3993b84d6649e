"""``python -m psycancel info``: psycancel's default libpq and each driver's own libpq."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from typing import Any

import pytest

from psycancel.pq import libfind

DRIVERS = ("psycopg2", "psycopg")


def run_info(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "psycancel", "info", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **env},
    )


@pytest.fixture(scope="module")
def system_libpq() -> str:
    path = libfind.system_libpq_path()
    assert path, "the system libpq (libpq5) is installed by the quick start"
    return path


def test_text_shows_the_system_libpq_and_the_drivers_libpqs(system_libpq: str) -> None:
    done = run_info(PSYCANCEL_LIBPQ=system_libpq)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    real = os.path.realpath(system_libpq)
    assert any(
        line.startswith("libpq: ")
        and line.endswith(" (from $PSYCANCEL_LIBPQ)")
        and os.path.realpath(line[len("libpq: ") : -len(" (from $PSYCANCEL_LIBPQ)")]) == real
        for line in lines
    ), lines
    assert "PQcancelConn API (encrypted, non-blocking cancel): False" in lines  # libpq 15
    assert any(line.startswith("libpq version: 15.") for line in lines), lines
    assert "drivers (their connections are cancelled through the driver's own libpq):" in lines
    for name in DRIVERS:
        (line,) = [x for x in lines if x.startswith(f"  {name} ")]
        assert "PQcancelConn API: True" in line, line


def test_json(system_libpq: str) -> None:
    done = run_info("--json", PSYCANCEL_LIBPQ=system_libpq)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert set(info) == {
        "psycancel",
        "python",
        "free_threaded",
        "implementation",
        "twins",
        "libpq",
        "libpq_error",
        "drivers",
    }
    import psycancel
    from psycancel.pq import __impl__

    assert info["psycancel"] == psycancel.__version__
    assert info["implementation"] == __impl__
    free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
    assert info["free_threaded"] is free_threaded
    assert set(info["twins"]) == {"c", "python"} and info["twins"]["python"]["available"]
    lib = info["libpq"]
    real = os.path.realpath(system_libpq)
    assert os.path.realpath(lib["path"]) == real and lib["origin"] == "env"
    assert lib["version"] < 170000 and not lib["cancel_conn"]
    assert info["libpq_error"] is None
    keys = {"path", "version", "version_text", "cancel_conn", "ssl_library", "gssapi"}
    assert set(lib) == keys | {"origin"}
    drivers = {d["driver"]: d for d in info["drivers"]}
    assert set(drivers) == set(DRIVERS)
    for driver in drivers.values():
        assert driver["error"] is None and driver["version"]
        # psycopg2 declares no free-threading support: importing it turns the GIL on
        # (unless PYTHON_GIL=0, which the child inherits, keeps it off).
        enables = free_threaded and os.environ.get("PYTHON_GIL") != "0"
        assert driver["enables_gil"] is (enables and driver["driver"] == "psycopg2")
        assert set(driver["libpq"]) == keys
        assert driver["libpq"]["cancel_conn"] and driver["libpq"]["version"] >= 170000
        assert os.path.realpath(driver["libpq"]["path"]) != real


def test_the_drivers_libpq_is_the_one_their_connections_are_cancelled_through(
    dsn_plain: str,
) -> None:
    """``info``'s answer for each driver is the libpq that a cancel of its connection uses."""
    import psycopg
    import psycopg2

    from psycancel._cli.info import collect_info
    from psycancel._drivers.resolve import as_pgconn

    drivers: dict[str, Any] = {d["driver"]: d for d in collect_info()["drivers"]}
    conn2 = psycopg2.connect(dsn_plain)
    conn3 = psycopg.connect(dsn_plain)
    try:
        for name, conn in (("psycopg2", conn2), ("psycopg", conn3)):
            pgconn = as_pgconn(conn)
            assert pgconn is not None
            assert os.path.realpath(pgconn.libpq.path) == os.path.realpath(
                drivers[name]["libpq"]["path"]
            )
    finally:
        conn2.close()
        conn3.close()


@pytest.mark.parametrize("args", [(), ("--json",)])
def test_a_closed_pipe_ends_quietly(args: tuple[str, ...]) -> None:
    """``python -m psycancel info | head -1``: no BrokenPipeError traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "psycancel", "info", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # no reader left: every write fails with EPIPE
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait() == 0
    assert err == b""
