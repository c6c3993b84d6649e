"""The security policy: a cancel request in clear text for an encrypted session.

A session is encrypted with TLS (``PQsslInUse``) or GSSAPI
(``PQgssEncInUse``); both count alike. Its cancel request is sent in clear
text, secret key included, in two cases that psycancel knows of before
sending:

* :data:`LEGACY`: the libpq is older than 17; its ``PQcancel`` never encrypts.
* :data:`SSLMODE_ALLOW`: a TLS session whose ``sslmode`` is ``allow``. The
  cancel connection copies the option, not what it negotiated, and
  ``allow`` tries clear text first; the server accepts a CancelRequest
  without TLS (``pg_hba.conf`` is not consulted for it), so the new API
  sends it in clear text too.

:func:`check_policy` is the only place that allows either: it raises
:class:`~psycancel.errors.InsecureCancelError` (``strict=True``, nothing is
sent) or warns with :class:`~psycancel.errors.InsecureCancelWarning`.

What it cannot know: a fallback decided inside libpq while the cancel
connects (``gssencmode=prefer`` without usable credentials by then,
``sslmode=prefer`` against a peer that refuses TLS). ``docs/deployments.md``
advises ``require``.
"""

from __future__ import annotations

import warnings

from ..errors import InsecureCancelError, InsecureCancelWarning
from ..pq.abc import PGconn

__all__ = ["LEGACY", "SSLMODE_ALLOW", "check_policy", "clear_text_first"]

LEGACY = (
    "libpq {version} at {path} has no PQcancelConn API (needs >= 17): the cancel "
    "request for this encrypted connection"
)
SSLMODE_ALLOW = (
    "with sslmode=allow, libpq {version} at {path} tries clear text first for a cancel "
    "connection, and the server accepts it: the cancel request for this encrypted "
    "connection (TLS; use sslmode=prefer or stronger)"
)
_INSECURE = "{reason} is sent in clear text, including its secret key"
_REFUSED = (
    "{reason} would be sent in clear text, including its secret key; "
    "refused because strict=True (nothing was sent)"
)


def clear_text_first(pgconn: PGconn) -> bool:
    """The cancel of this TLS session goes in clear text first (``sslmode=allow``)."""
    return pgconn.conninfo_option("sslmode") == "allow"


def check_policy(pgconn: PGconn, *, strict: bool, stacklevel: int, reason: str) -> None:
    """Allow a clear-text cancel of the encrypted ``pgconn``, or refuse it.

    ``reason`` (:data:`LEGACY` or :data:`SSLMODE_ALLOW`) says why it would be
    in clear text. :class:`InsecureCancelError` if ``strict``, else an
    :class:`InsecureCancelWarning` (``stacklevel`` 1: the caller).
    """
    lib = pgconn.libpq
    why = reason.format(version=lib.version, path=lib.path)
    if strict:
        raise InsecureCancelError(_REFUSED.format(reason=why))
    warnings.warn(_INSECURE.format(reason=why), InsecureCancelWarning, stacklevel=stacklevel + 1)
