"""Django 4.2+: ``django.db.connection`` and ``connections[alias]`` (psycopg 3 or psycopg2).

``django.db.connection`` is a ``ConnectionProxy`` to the *calling thread's*
``DatabaseWrapper`` (Django's connections are per thread): resolve it in
the thread that runs the query (``psycancel.Canceller``), not in another one.
A wrapper that has not connected yet holds nothing to cancel; it is never
made to connect. Its watch (``connection_created``, which Django sends in the
wrapper's own thread when it connects) tells a ``Canceller`` or a
``cancel_after`` block the driver connection it gets later.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from .adapter import Acquired, Adapter, Released, Unwatch

__all__ = ["ADAPTERS", "FAMILIES"]


def _proxy(proxy: Any) -> object | None:
    """``ConnectionProxy``: this thread's wrapper of the proxy's alias."""
    state = vars(proxy)
    held: object | None = state["_connections"][state["_alias"]]
    return held


def _wrapper(wrapper: Any) -> object | None:
    """``BaseDatabaseWrapper``: the driver's connection; None before it connected."""
    held: object | None = wrapper.connection
    return held


def _watch_wrapper(wrapper: Any, acquired: Acquired, released: Released) -> Unwatch:
    """``connection_created``, sent in the wrapper's thread when it connects.

    The signal holds the receiver weakly (Django's ``weak=True``); only the
    returned unwatch keeps it alive, and calling the unwatch (or dropping it)
    lets it die. Django then drops the dead receiver by itself, under its own
    lock, the next time the signal is used. The unwatch never calls
    ``disconnect``: it may run from a garbage collection (a ``Canceller``'s
    finalizer), which can happen in a thread that holds the signal's lock
    already (inside ``send``): ``disconnect`` would deadlock there on Django's
    non-reentrant lock (seen: a thread's first connection hung). The receiver
    holds the wrapper weakly.
    """
    signal = sys.modules["django.db.backends.signals"].connection_created
    ref = weakref.ref(wrapper)

    def created(sender: Any, connection: Any, **kwargs: Any) -> None:
        if connection is ref():
            acquired(connection)

    alive: list[object] = [created]
    signal.connect(created, weak=True)

    def unwatch() -> None:
        alive.clear()  # the receiver's last strong reference: Django sees it dead

    return unwatch


def _watch_proxy(proxy: Any, acquired: Acquired, released: Released) -> Unwatch:
    """The watch of the *calling thread's* wrapper: it sticks to that wrapper."""
    return _watch_wrapper(_proxy(proxy), acquired, released)


ADAPTERS = (
    Adapter("django.utils.connection", "ConnectionProxy", unwrap=_proxy, watch=_watch_proxy),
    Adapter(
        "django.db.backends.base.base",
        "BaseDatabaseWrapper",
        unwrap=_wrapper,
        watch=_watch_wrapper,
    ),
    Adapter(
        "django.db.utils",
        "ConnectionHandler",
        hint="Django's connections (a ConnectionHandler): pass connections[alias], or "
        "django.db.connection",
    ),
)
"""Django's connection objects (the same modules in Django 4.2 to 5.2)."""

FAMILIES = (
    (
        "django",
        "Django",
        "pass django.db.connection or connections[alias] (or its .connection)",
    ),
)
"""(module prefix, family name, what to pass instead) for Django's other classes."""
