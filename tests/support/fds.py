"""The file descriptors a test checks for leaks: the process's, a port's, a loop's."""

from __future__ import annotations

import asyncio
import contextlib
import os

from psycancel._engine.offload import reactor_fds


def open_fds() -> set[int]:
    """The file descriptors open in this process (Linux).

    The offload reactor's own fds (kept for the life of the process) are left
    out, so that starting it is not taken for a leak.
    """
    return {int(name) for name in os.listdir("/proc/self/fd")} - reactor_fds()


def sockets_to(port: int) -> set[int]:
    """This process's fds that are TCP sockets connected to loopback ``port``.

    Unlike a count of all fds, this ignores the sockets of the test's own
    proxy threads, and sees exactly the client side of cancel connections.
    """
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    found = set()
    for fd in open_fds():
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            found.add(fd)
    return found


def loop_fds(loop: asyncio.AbstractEventLoop) -> set[int]:
    """The fds with a reader or writer registered on a selector event loop."""
    selector = loop._selector  # type: ignore[attr-defined]
    return set(selector.get_map().keys())


def trio_fds() -> set[int]:
    """The fds with a reader or writer registered in the running Trio loop."""
    from trio._core._run import GLOBAL_RUN_CONTEXT

    runner = GLOBAL_RUN_CONTEXT.runner
    registered = getattr(runner.io_manager, "_registered", None)
    if registered is None:  # not the epoll manager: cannot tell
        return set()
    # Trio's own run_sync_soon task waits on its wakeup socket: not ours.
    own = set()
    with contextlib.suppress(AttributeError, OSError):
        own.add(runner.entry_queue.wakeup.wakeup_sock.fileno())
    return {
        fd
        for fd, waiters in list(registered.items())
        if fd not in own and (waiters.read_task or waiters.write_task)
    }
