"""Default deadlines where applications configure them: Django, SQLAlchemy, psycopg, psycopg2.

Each framework has a module of its own, imported only when used (``import
psycancel`` imports none of them, nor any framework)::

    psycancel.integrations.django       # an execute_wrapper, settings-style default
    psycancel.integrations.sqlalchemy   # engine events, execution_options override
    psycancel.integrations.psycopg      # cursor classes, psycopg_pool's configure=
    psycancel.integrations.psycopg2     # cursor and connection classes

Every query run through them is guarded by :class:`psycancel.cancel_after`,
with its guarantee and its exceptions (:class:`psycancel.QueryTimeout`). This
package holds what they share: :class:`Deadline` (the configuration) and
:class:`query_timeout`, the per-block override that every integration
honours (``None``: no deadline in the block).
"""

from __future__ import annotations

from ._core import UNSET, Deadline, Unset, query_timeout

__all__ = ["UNSET", "Deadline", "Unset", "query_timeout"]
