"""Type stub of the compiled twin ``psycancel_c._pq`` (see ``_pq.pyx``).

The interface is told once, in ``psycancel.pq.abc``: each twin class here
derives from its Protocol and declares nothing of its own but ``__init__``.
They are declared abstract (``ABCMeta``) because the Protocols' members have
empty bodies, which mypy takes as abstract; that also matches the run time,
where calling a twin class raises ``TypeError`` (objects come from
``Libpq.load``, ``PGconn.from_ptr``, ...). The parity tests check all this.

Plus the compiled-only names: the C driver ``NATIVE_DRIVER`` (which
``Libpq.native_driver`` returns), and the module-level spellings of its
parts, ``run_blocking``, ``OUTCOME_*`` and ``OffloadEngine``. The engine is
the one class callers construct, so it spells out the methods of
``psycancel.pq.abc.OffloadEngine`` concretely (mypy checks them against it).
"""

from abc import ABCMeta
from collections.abc import Callable
from typing import final

from psycancel.pq import abc

__all__ = ["Libpq", "PGcancel", "PGcancelConn", "PGconn"]

class Libpq(abc.Libpq, metaclass=ABCMeta):
    """A loaded libpq (compiled twin). Use :meth:`load`; one instance per file."""

    def __init__(self, *args: object, **kwargs: object) -> None: ...

class PGconn(abc.PGconn, metaclass=ABCMeta):
    """A libpq connection (compiled twin)."""

    def __init__(self, *args: object, **kwargs: object) -> None: ...

class PGcancelConn(abc.PGcancelConn, metaclass=ABCMeta):
    """A ``PGcancelConn`` (compiled twin)."""

    def __init__(self, *args: object, **kwargs: object) -> None: ...

class PGcancel(abc.PGcancel, metaclass=ABCMeta):
    """The legacy cancel handle (compiled twin)."""

    def __init__(self, *args: object, **kwargs: object) -> None: ...

# The C driver (compiled twin only; psycancel_c/_driver.pyx, _engine.pyx).

class _NativeDriver(abc.NativeDriver, metaclass=ABCMeta):
    """The compiled twin's C driver; its one instance is ``NATIVE_DRIVER``."""

    def __init__(self, *args: object, **kwargs: object) -> None: ...

NATIVE_DRIVER: _NativeDriver

OUTCOME_OK: int
OUTCOME_FAILED: int
OUTCOME_TIMEOUT: int
OUTCOME_ABORTED: int

def run_blocking(cc: abc.PGcancelConn, deadline: float) -> tuple[int, str]:
    """Drive a new ``cc`` in this thread (GIL released) until ``deadline``."""

@final
class OffloadEngine(abc.OffloadEngine):
    """Drives detached cancel connections of this twin in a thread without the GIL."""

    def __init__(self) -> None: ...
    def fds(self) -> set[int]: ...
    def submit(self, cc: abc.PGcancelConn, deadline: float, job_id: int) -> None: ...
    def abort(self, job_id: int) -> None: ...
    def close(self) -> None: ...
    def run(self) -> None: ...
    def take_done(self) -> list[tuple[int, int, str]]: ...
    def set_stage_hook(self, hook: Callable[[int, int, int], object] | None) -> None: ...
