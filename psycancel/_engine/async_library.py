"""Which async library runs the current task, without importing any.

The asyncio path must stay dependency-free, so nothing here imports sniffio,
anyio or trio: sniffio is consulted only if something (trio, anyio) imported
it already, and asyncio is recognised by its running loop.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["running_asyncio"]


def running_asyncio() -> bool:
    """True if the caller runs under asyncio (in a task of a running loop)."""
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        try:
            name: str = sniffio.current_async_library()
        except sniffio.AsyncLibraryNotFoundError:
            pass
        else:
            return name == "asyncio"
    return asyncio._get_running_loop() is not None
