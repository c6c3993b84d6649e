"""The security policy of a legacy cancel (libpq < 17), applied when the plan is made.

The legacy ``PQcancel`` sends its request in clear text, secret key included,
even for an encrypted session. :func:`check_policy` is the only place that
allows it: on an encrypted connection it raises
:class:`~psycancel.errors.InsecureCancelError` (``strict=True``) or warns
with :class:`~psycancel.errors.InsecureCancelWarning`.
"""

from __future__ import annotations

import warnings

from ..errors import InsecureCancelError, InsecureCancelWarning
from ..pq.abc import PGconn

__all__ = ["check_policy"]

_INSECURE = (
    "libpq {version} at {path} has no PQcancelConn API (needs >= 17): the cancel "
    "request for this encrypted connection is sent in clear text, "
    "including its secret key"
)
_REFUSED = (
    "libpq {version} at {path} has no PQcancelConn API (needs >= 17): the cancel "
    "request for this encrypted connection would be sent in clear text, including "
    "its secret key; refused because strict=True (nothing was sent)"
)


def check_policy(pgconn: PGconn, *, strict: bool, stacklevel: int) -> None:
    """Apply the security policy before a legacy cancel.

    On an encrypted connection: :class:`InsecureCancelError` if ``strict``,
    else an :class:`InsecureCancelWarning` (``stacklevel`` 1: the caller).
    """
    if not pgconn.ssl_in_use:
        return
    lib = pgconn.libpq
    if strict:
        raise InsecureCancelError(_REFUSED.format(version=lib.version, path=lib.path))
    message = _INSECURE.format(version=lib.version, path=lib.path)
    warnings.warn(message, InsecureCancelWarning, stacklevel=stacklevel + 1)
