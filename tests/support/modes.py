"""The one mode dispatcher: call the public API the way a mode says.

Modes:

* ``sync``: ``psycancel.cancel``;
* ``async``: ``psycancel.cancel_async`` under asyncio, default placement;
* ``async-inline`` / ``async-offload``: the same with ``offload=False`` / ``True``;
* ``trio``: ``psycancel.cancel_async`` under Trio (the AnyIO waiter).

In every async mode the call also asserts that no fd stays registered with the
event loop, whatever the outcome.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycancel

from .fds import loop_fds, trio_fds

API_MODES = ["sync", "async", "async-inline", "async-offload"]
"""Each placement of the public API (``async`` is the default placement)."""
LOOP_MODES = ["sync", "async", "trio"]
"""One mode per waiter: blocking, asyncio, AnyIO/Trio."""

_OFFLOAD = {"async-inline": {"offload": False}, "async-offload": {"offload": True}}


def offload_kwargs(mode: str) -> dict[str, Any]:
    """The ``offload`` argument that ``mode`` stands for (none for the default)."""
    return dict(_OFFLOAD.get(mode, {}))


async def _asyncio_cancel(conn: Any, kwargs: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    before = loop_fds(loop)
    try:
        await psycancel.cancel_async(conn, **kwargs)
    finally:
        left = loop_fds(loop) - before
        assert not left, f"fds still registered with the asyncio loop: {left}"


async def _trio_cancel(conn: Any, kwargs: dict[str, Any]) -> None:
    before = trio_fds()
    try:
        await psycancel.cancel_async(conn, **kwargs)
    finally:
        left = trio_fds() - before
        assert not left, f"fds still registered with the trio loop: {left}"


def call_cancel(mode: str, conn: Any, **kwargs: Any) -> float:
    """Cancel ``conn`` with the public API in ``mode``; return the seconds it took."""
    t0 = time.monotonic()
    if mode == "sync":
        psycancel.cancel(conn, **kwargs)
    elif mode in ("async", "async-inline", "async-offload"):
        asyncio.run(_asyncio_cancel(conn, {**kwargs, **offload_kwargs(mode)}))
    elif mode == "trio":
        import trio

        trio.run(_trio_cancel, conn, kwargs)
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return time.monotonic() - t0
