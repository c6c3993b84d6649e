"""libpq enumerations used by both twins (values from libpq-fe.h)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ConnStatus", "PollingStatus"]


class ConnStatus(IntEnum):
    """``ConnStatusType``: the state of a connection or cancel connection."""

    OK = 0
    BAD = 1
    STARTED = 2
    MADE = 3
    AWAITING_RESPONSE = 4
    AUTH_OK = 5
    SETENV = 6
    SSL_STARTUP = 7
    NEEDED = 8
    CHECK_WRITABLE = 9
    CONSUME = 10
    GSS_STARTUP = 11
    CHECK_TARGET = 12
    CHECK_STANDBY = 13
    ALLOCATED = 14
    AUTHENTICATING = 15

    @classmethod
    def _missing_(cls, value: object) -> ConnStatus | None:
        # A newer libpq may add states: keep the number rather than fail.
        if not isinstance(value, int):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


class PollingStatus(IntEnum):
    """``PostgresPollingStatusType``: what a poll function asks for next."""

    FAILED = 0
    READING = 1
    WRITING = 2
    OK = 3
    ACTIVE = 4


# Constructing an IntEnum member by value costs ~0.5 us; these tables make the
# conversion of libpq's ints (a hot path in both twins) a tuple lookup.
_CONN_STATUS = tuple(ConnStatus(i) for i in range(max(ConnStatus) + 1))
_POLLING_STATUS = tuple(PollingStatus(i) for i in range(max(PollingStatus) + 1))


def conn_status(value: int) -> ConnStatus:
    """``ConnStatus(value)``, fast for the known values."""
    if 0 <= value < len(_CONN_STATUS):
        return _CONN_STATUS[value]
    return ConnStatus(value)


def polling_status(value: int) -> PollingStatus:
    """``PollingStatus(value)``, fast for the known values."""
    if 0 <= value < len(_POLLING_STATUS):
        return _POLLING_STATUS[value]
    return PollingStatus(value)
