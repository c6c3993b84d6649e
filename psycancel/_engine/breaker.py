"""Break a driver's connection at a deadline: shut its socket down, never close it.

When a cancel cannot end a query in time (the network dropped, the cancel
failed or timed out, a pooler lost it), the only way to give the blocked
driver call back to its caller is to make its socket fail. ``shutdown(2)``
with ``SHUT_RDWR`` does that at once, whatever the peer does: a thread
blocked in ``recv``/``poll`` on that socket wakes with end-of-file, libpq
reports "server closed the connection unexpectedly", and the driver marks
its connection broken (psycopg2 ``closed == 2``, psycopg ``broken``), which
is what pools check before handing a connection out again.

The file descriptor stays open: the driver owns it and closes it itself.

Fence: the descriptor number and the socket's identity (device and inode of
``fstat``; Linux numbers socket inodes from a counter, so an inode is not
reused while the process runs) are captured in the thread that owns the
connection while it is open. At the deadline, the socket is shut down only if
that number still names the same socket, so that a descriptor the driver
closed meanwhile, and the kernel gave to something else, is never touched.
"""

from __future__ import annotations

import os
import socket
import stat
from typing import NamedTuple

from ..pq.abc import PGconn

__all__ = ["SocketFence", "capture_socket"]


def _identity(fd: int) -> tuple[int, int] | None:
    """(device, inode) of ``fd`` if it is an open socket, else None."""
    try:
        st = os.fstat(fd)
    except OSError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return (st.st_dev, st.st_ino)


class SocketFence(NamedTuple):
    """One connection's socket, as it was when captured: shut it down later, safely."""

    fd: int
    """The descriptor number (the driver's; never closed here)."""
    identity: tuple[int, int]
    """(st_dev, st_ino) of the socket when captured."""
    backend_pid: int = 0
    """The session's server process (for the records of a break), 0 if unknown."""

    def same_socket(self) -> bool:
        """True if :attr:`fd` still names the socket that was captured."""
        return _identity(self.fd) == self.identity

    def shutdown(self) -> bool:
        """Shut the socket down both ways (``SHUT_RDWR``); False if it is gone or changed.

        Safe from any thread. The descriptor is left open for its owner.
        """
        if not self.same_socket():
            return False
        try:
            sock = socket.socket(fileno=self.fd)
        except OSError:
            return False
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected any more (ENOTCONN): already broken
            return False
        finally:
            sock.detach()  # never close: the descriptor is the driver's
        return True


def capture_socket(pgconn: PGconn) -> SocketFence | None:
    """The fence of ``pgconn``'s socket, in the thread that owns it; None if it has none."""
    try:
        fd = pgconn.socket
    except Exception:  # closed meanwhile: nothing to break later
        return None
    if fd < 0:
        return None
    identity = _identity(fd)
    if identity is None:
        return None
    try:
        pid = pgconn.backend_pid
    except Exception:  # (closed meanwhile: the fence still names the socket)
        pid = 0
    return SocketFence(fd, identity, pid)
