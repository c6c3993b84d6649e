"""Fixtures of the integration tests (issue 23)."""

from __future__ import annotations

from tests.integrations.helpers import black_hole
from tests.support.frameworks import fdsn, monitor

__all__ = ["black_hole", "fdsn", "monitor"]
