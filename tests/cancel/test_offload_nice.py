"""The compiled twin's offload engine thread: as nice as the process by default (Linux).

A niceness can still be asked for (``$PSYCANCEL_OFFLOAD_NICE``, or
``offload.ENGINE_NICE``): read back from the kernel (``getpriority`` of the
thread) after a real offloaded cancel through fresh reactors, so that the
engine thread starts again under the setting the test makes.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

import psycancel
from psycancel._engine import offload
from testing import client
from tests.support.twins import compiled_twin, new_libpq_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def _fresh_engine_niceness(dsn: str, monkeypatch: pytest.MonkeyPatch) -> int:
    """Run one offloaded cancel through a new engine; that engine thread's niceness."""
    monkeypatch.setattr(offload, "_reactors", {})  # a fresh engine and thread
    threads_before = {t.ident for t in threading.enumerate()}
    twin = compiled_twin()
    conn = client.connect(dsn, libpq=twin.Libpq.load(new_libpq_path()))
    try:
        asyncio.run(asyncio.wait_for(psycancel.cancel_async(conn, offload=True), 60))
    finally:
        conn.finish()
    fresh = [
        t
        for t in threading.enumerate()
        if t.name == "psycancel-offload-engine" and t.ident not in threads_before
    ]
    assert len(fresh) == 1 and fresh[0].native_id is not None
    return os.getpriority(os.PRIO_PROCESS, fresh[0].native_id)


def test_default_is_the_process_niceness(monkeypatch: pytest.MonkeyPatch, dsn_tls: str) -> None:
    assert offload.ENGINE_NICE == 0  # chosen from benchmarks/burst.py's figures
    monkeypatch.delenv(offload.ENGINE_NICE_ENV, raising=False)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert _fresh_engine_niceness(dsn_tls, monkeypatch) == base


@pytest.mark.parametrize(
    ("env", "constant", "step"),
    [("3", 0, 3), ("10", 0, 10), ("0", 7, 0), (None, 4, 4), ("bad", 5, 5)],
    ids=["env-3", "env-10", "env-0-wins", "constant-4", "bad-env-falls-back"],
)
def test_a_niceness_set_applies_to_the_engine_thread_alone(
    env: str | None, constant: int, step: int, monkeypatch: pytest.MonkeyPatch, dsn_tls: str
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    monkeypatch.setattr(offload, "ENGINE_NICE", constant)
    if env is None:
        monkeypatch.delenv(offload.ENGINE_NICE_ENV, raising=False)
    else:
        monkeypatch.setenv(offload.ENGINE_NICE_ENV, env)
    assert _fresh_engine_niceness(dsn_tls, monkeypatch) == min(19, base + step)
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the process itself is untouched
