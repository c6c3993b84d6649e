"""The short form of the soak (``tools/soak.py``), for CI: run in this process.

300 cancel cycles with the active twin (a mix of plain/TLS, sync/async,
success/timeout, idle sessions and running queries): RSS growth under 5 MB,
the same number of open fds, no socket or loop registration left, every
cancel object finished. The full form is ``python tools/soak.py --cycles 20000``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from psycancel.pq import Libpq

SOAK = Path(__file__).resolve().parents[2] / "tools" / "soak.py"
CYCLES = int(os.environ.get("PSYCANCEL_SOAK_CYCLES", "300"))


def load_soak() -> ModuleType:
    spec = importlib.util.spec_from_file_location("psycancel_tools_soak", SOAK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.long(6)
def test_soak_short(pg_server: Any, libpq: Libpq, capsys: pytest.CaptureFixture[str]) -> None:
    if getattr(pg_server, "ca_file", None) is None:
        pytest.skip("the soak uses verify-full: needs the server's CA certificate")
    soak = load_soak()
    report = soak.run_soak(pg_server, libpq, CYCLES, seed=7)
    with capsys.disabled():
        print("\n" + report.summary())
    assert report.cycles == CYCLES
    assert report.cancel_objects == CYCLES  # every cycle made exactly one
    assert report.kinds.get("timeout", 0) > 0 and report.kinds.get("query", 0) > 0
    assert report.ok, report.failures
