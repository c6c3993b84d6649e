"""The SQLSTATE of a driver error, wherever the driver's exception sits.

psycopg2 says ``pgcode``, psycopg ``sqlstate``. The driver's error may be
behind ``__cause__``/``__context__``: aiopg raises ``CancelledError`` while
handling it, and on Python 3.10 a second ``CancelledError`` sits in between.
Standard library only: the driver child scripts import it before any driver.
"""

from __future__ import annotations


def pgcode(exc: BaseException | None) -> str | None:
    """The first SQLSTATE found along ``exc``'s cause/context chain, or None."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
        if code:
            return str(code)
        exc = exc.__cause__ or exc.__context__
    return None
