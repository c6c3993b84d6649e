"""Drivers that speak the PostgreSQL protocol themselves: no libpq, nothing psycancel can use.

They are recognised only to say so clearly (they are what SQLAlchemy's
asyncpg and pg8000 dialects hold as their driver connection).
"""

from __future__ import annotations

from .adapter import Adapter

__all__ = ["ADAPTERS"]


def _hint(driver: str, instead: str) -> str:
    return (
        f"a {driver} connection: {driver} implements the PostgreSQL protocol itself and has "
        f"no libpq, so psycancel cannot cancel through it ({instead})"
    )


ADAPTERS = (
    Adapter(
        "asyncpg.connection",
        "Connection",
        hint=_hint(
            "asyncpg",
            "use asyncpg's own cancellation, or psycopg: SQLAlchemy's postgresql+psycopg dialect",
        ),
    ),
    Adapter(
        "pg8000.core",
        "CoreConnection",
        hint=_hint(
            "pg8000",
            "use psycopg or psycopg2: SQLAlchemy's postgresql+psycopg or "
            "postgresql+psycopg2 dialect",
        ),
    ),
)
