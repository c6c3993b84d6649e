"""Development-only helpers shared by the tests, the benchmarks and the quick start.

Not part of the installed package (neither the sdist's ``psycancel`` nor any
wheel contains it): it builds and runs PostgreSQL, which a user of psycancel
never needs. Run from the repository root (``tests/``, ``benchmarks/`` and
``tools/`` put it on ``sys.path``).

* ``conninfo``: build and parse libpq conninfo strings;
* ``certificates``: a throwaway CA and server certificates;
* ``installation``: find or build PostgreSQL (``tools/build_postgres.sh``);
* ``server``: a throwaway TLS server on loopback (:class:`ThrowawayServer`);
* ``client``: the query client the tests, benchmarks, soak and demo make
  their connections with (psycancel itself only borrows connections); its
  ``Client.pgconn`` is psycancel's ``PGconn.from_ptr`` of the connection;
* ``demo``: ``python -m testing.demo``, the quick start's demo (a throwaway
  server, or ``--dsn``: a long query cancelled from asyncio, with a timeline).
"""

from __future__ import annotations

from .certificates import make_ca, make_server_cert
from .conninfo import ConninfoValue, make_conninfo, parse_conninfo, quote_conninfo_value
from .installation import (
    cached_postgres_prefix,
    find_postgres_prefix,
    libpq_file,
    postgres_version,
)
from .server import ThrowawayServer

__all__ = [
    "ConninfoValue",
    "ThrowawayServer",
    "cached_postgres_prefix",
    "find_postgres_prefix",
    "libpq_file",
    "make_ca",
    "make_conninfo",
    "make_server_cert",
    "parse_conninfo",
    "postgres_version",
    "quote_conninfo_value",
]
