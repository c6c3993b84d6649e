"""The exceptions a cancel ends with, made in one place.

Every runner turns "the deadline passed" and every outcome code of a twin's
C driver into an exception here, so that each message is written once.
"""

from __future__ import annotations

from ..errors import CancelError, CancellationTimeout
from ..pq.abc import NativeDriver

__all__ = ["from_native", "timed_out"]


def timed_out(timeout: float, *, legacy: bool = False) -> CancellationTimeout:
    """The :class:`CancellationTimeout` of a cancel that took more than ``timeout`` s."""
    if legacy:
        return CancellationTimeout(
            f"the legacy cancel request did not complete within {timeout:g} s "
            "(its worker thread gives up when the operating system does)"
        )
    return CancellationTimeout(f"the cancel request did not complete within {timeout:g} s")


def from_native(
    driver: NativeDriver, code: int, message: str, timeout: float
) -> BaseException | None:
    """The exception for outcome ``code`` of ``driver`` (None: the request was sent)."""
    if code == driver.OUTCOME_OK:
        return None
    if code == driver.OUTCOME_TIMEOUT:
        return timed_out(timeout)
    if code == driver.OUTCOME_ABORTED:
        import asyncio  # (here: a blocking program never imports it)

        return asyncio.CancelledError()
    return CancelError(message or "the cancel request failed")
