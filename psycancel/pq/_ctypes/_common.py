"""Small pieces every class of the ctypes twin uses: texts, pickling, fork generation."""

from __future__ import annotations

import os
from typing import NoReturn

__all__ = ["fork", "message", "refuse_to_pickle"]


def message(raw: bytes | None) -> str:
    """libpq's error message as text, without the trailing newline."""
    if not raw:
        return ""
    return raw.decode("utf-8", "replace").rstrip("\n")


def refuse_to_pickle(obj: object) -> NoReturn:
    """Copies and pickles would share (and finish twice) one libpq pointer."""
    raise TypeError(f"cannot pickle '{type(obj).__module__}.{type(obj).__qualname__}' object")


class _ForkGeneration:
    """The fork generation of this process: bumped in the child after ``os.fork()``.

    Objects record it when made; a different value means "made by the parent"
    (the fork rule of ``psycancel.pq.abc``).
    """

    def __init__(self) -> None:
        self.generation = 0

    def after_fork_in_child(self) -> None:
        """Registered with ``os.register_at_fork``: a new generation in the child."""
        self.generation += 1


fork = _ForkGeneration()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=fork.after_fork_in_child)
