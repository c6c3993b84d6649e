"""Drivers that speak the PostgreSQL protocol themselves: no libpq, nothing psycancel can use.

They are recognised only to say so clearly, as early as possible: their
connections (what SQLAlchemy's asyncpg and pg8000 dialects hold as the driver
connection) by class, and the SQLAlchemy sessions and engines of those
dialects by their dialect's driver name (:data:`WHY`), before any query runs.
"""

from __future__ import annotations

from .adapter import Adapter

__all__ = ["ADAPTERS", "WHY", "why_not"]

WHY: dict[str, str] = {
    "asyncpg": (
        "asyncpg implements the PostgreSQL protocol itself and has no libpq, so psycancel can "
        "never cancel its queries: use asyncpg's own timeout instead (timeout= on a query, "
        "command_timeout= on connect; with SQLAlchemy, "
        "create_async_engine(..., connect_args={'command_timeout': seconds})), with which "
        "asyncpg cancels the query itself, or the postgresql+psycopg dialect"
    ),
    "pg8000": (
        "pg8000 implements the PostgreSQL protocol itself and has no libpq (nor a cancel "
        "request), so psycancel can never cancel its queries: use the server's "
        "statement_timeout (SET statement_timeout = '2s'), or the postgresql+psycopg or "
        "postgresql+psycopg2 dialect"
    ),
}
"""Driver name (as SQLAlchemy's ``dialect.driver`` spells it) -> why, and what to use instead."""


def why_not(driver: object) -> str | None:
    """:data:`WHY`'s text for a driver name, None for a driver psycancel may cancel."""
    return WHY.get(driver) if isinstance(driver, str) else None


ADAPTERS = (
    Adapter("asyncpg.connection", "Connection", hint=f"an asyncpg connection: {WHY['asyncpg']}"),
    Adapter("pg8000.core", "CoreConnection", hint=f"a pg8000 connection: {WHY['pg8000']}"),
)
