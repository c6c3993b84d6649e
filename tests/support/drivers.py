"""Helpers for the driver tests: real drivers, run in threads or subprocesses."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .active import POLL_TIMEOUT, QUERY_CANCELED, SLEEP, poll_until_active
from .sqlstate import pgcode

__all__ = [
    "QUERY_CANCELED",
    "SLEEP",
    "Background",
    "need",
    "need_legacy_psycopg2",
    "pgcode",
    "run_legacy",
    "wait_active",
]

ROOT = Path(__file__).resolve().parents[2]

ENV_LEGACY_PSYCOPG2 = "PSYCANCEL_LEGACY_PSYCOPG2"
"""A directory holding psycopg2 built from source against the system libpq (< 17)."""

LEGACY_PSYCOPG2_DIR = Path(
    os.environ.get(ENV_LEGACY_PSYCOPG2) or Path(sys.prefix) / "psycancel-legacy-psycopg2"
)
"""Where ``tools/install_test_drivers.sh`` puts it (inside the venv)."""

LEGACY_SCRIPT = Path(__file__).with_name("legacy_driver_child.py")


ALLOWED_SKIP = "[not a missing dependency]"
"""A skip reason starting with this is not turned into a failure in CI (tests/conftest.py)."""


def _missing(what: str, hint: str) -> None:
    message = f"{what} is not installed ({hint}); run tools/install_test_drivers.sh"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


UNAVAILABLE_FILE = Path(sys.prefix) / "psycancel-unavailable.txt"
"""Test dependencies that cannot be installed on this interpreter, one per line:
``name<TAB>why`` (written by ``tools/install_test_drivers.sh``: gevent on a
free-threaded CPython)."""


def unavailable() -> dict[str, str]:
    """What :data:`UNAVAILABLE_FILE` declares: name -> why."""
    try:
        lines = UNAVAILABLE_FILE.read_text().splitlines()
    except FileNotFoundError:
        return {}
    return dict(line.split("\t", 1) for line in lines if "\t" in line)


def need(name: str) -> ModuleType:
    """Import a test dependency: skipped when missing, except under CI (fails).

    A dependency the venv declares unavailable on this interpreter (see
    :data:`UNAVAILABLE_FILE`) is skipped with that reason, in CI too: it is
    counted as a skip, never as a pass.
    """
    try:
        return importlib.import_module(name)
    except ImportError as ex:
        why = unavailable().get(name)
        if why is not None:
            pytest.skip(
                f"{ALLOWED_SKIP} {name} cannot be installed on this interpreter: {why}",
                allow_module_level=True,
            )
        _missing(name, str(ex))
        raise  # not reached


def need_legacy_psycopg2() -> Path:
    """The directory of psycopg2 built against the system libpq."""
    if not (LEGACY_PSYCOPG2_DIR / "psycopg2").is_dir():
        _missing(f"psycopg2 built from source in {LEGACY_PSYCOPG2_DIR}", "the legacy driver")
    return LEGACY_PSYCOPG2_DIR


class Background:
    """Run ``func()`` in a thread; :meth:`result` joins and returns or raises."""

    def __init__(self, func: Callable[[], Any]) -> None:
        self._func = func
        self._value: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self._value = self._func()
        except BaseException as ex:
            self._error = ex

    def error(self, timeout: float = 30.0) -> BaseException | None:
        """Join; the exception ``func`` raised, or None."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the background query did not end"
        return self._error

    def result(self, timeout: float = 30.0) -> Any:
        """Join; what ``func`` returned (its exception is re-raised)."""
        error = self.error(timeout)
        if error is not None:
            raise error
        return self._value


def wait_active(
    execute: Callable[[str], list[tuple[Any, ...]]], pid: int, timeout: float = POLL_TIMEOUT
) -> None:
    """Block until backend ``pid`` sleeps in ``pg_sleep``; ``execute`` runs SQL on a monitor."""
    poll_until_active(execute, pid, timeout=timeout)


def run_legacy(
    scenario: str,
    args: Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
    legacy_psycopg2: bool = True,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Run ``tests/support/legacy_driver_child.py SCENARIO`` in a child; its JSON result.

    The child gets ``PYTHONPATH`` = (the source-built psycopg2 first, when
    ``legacy_psycopg2``) + the repository, the same twin (``PSYCANCEL_IMPL``)
    and ``args`` as JSON on stdin.
    """
    paths = [str(need_legacy_psycopg2())] if legacy_psycopg2 else []
    paths.append(str(ROOT))
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(paths)
    child_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, str(LEGACY_SCRIPT), scenario],
        input=json.dumps(dict(args)),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        cwd=str(ROOT),
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(
            f"scenario {scenario} failed (exit {proc.returncode})\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result
