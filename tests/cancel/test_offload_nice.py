"""The compiled twin's offload engine thread runs nicer than the process (Linux).

Read back from the kernel (``getpriority`` of the thread) after a real
offloaded cancel through fresh reactors, so that the engine thread starts
again under the environment the test sets.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

import psycancel
from psycancel._engine import offload
from tests.support.twins import compiled_twin, new_libpq_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


@pytest.mark.parametrize(("env", "step"), [(None, offload.ENGINE_NICE), ("3", 3), ("0", 0)])
def test_engine_thread_niceness(
    env: str | None, step: int, monkeypatch: pytest.MonkeyPatch, dsn_tls: str
) -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if env is None:
        monkeypatch.delenv(offload.ENGINE_NICE_ENV, raising=False)
    else:
        monkeypatch.setenv(offload.ENGINE_NICE_ENV, env)
    monkeypatch.setattr(offload, "_reactors", {})  # a fresh engine and thread
    threads_before = {t.ident for t in threading.enumerate()}
    twin = compiled_twin()
    conn = twin.PGconn.connect(dsn_tls, libpq=twin.Libpq.load(new_libpq_path()))
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
    assert os.getpriority(os.PRIO_PROCESS, fresh[0].native_id) == min(19, base + step)
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the process itself is untouched
