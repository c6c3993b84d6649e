"""The real OpenTelemetry SDK, in memory: one meter provider per test process.

The API allows one global meter provider per process, so the first test that
asks sets it (an SDK ``MeterProvider`` with an ``InMemoryMetricReader``) and
every later test of the process reads the same reader. Counters are
cumulative: tests compare :func:`Snapshot` taken before and after.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)

__all__ = ["Snapshot", "attrs", "reader"]

_lock = threading.Lock()
_reader: InMemoryMetricReader | None = None

Key = frozenset[tuple[str, Any]]


def reader() -> InMemoryMetricReader:
    """The process's in-memory reader, its meter provider made global on first use."""
    global _reader
    with _lock:
        if _reader is None:
            made = InMemoryMetricReader()
            metrics.set_meter_provider(MeterProvider(metric_readers=[made]))
            _reader = made
        return _reader


class Snapshot:
    """The ``psycancel`` meter's data points now: sums (counters) and histograms."""

    def __init__(self) -> None:
        self.sums: dict[tuple[str, Key], float] = {}
        self.histograms: dict[tuple[str, Key], tuple[int, float]] = {}
        self.units: dict[str, str | None] = {}
        data = reader().get_metrics_data()
        if data is None:
            return
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                if scope.scope.name != "psycancel":
                    continue
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        key = (metric.name, frozenset((point.attributes or {}).items()))
                        if isinstance(point, HistogramDataPoint):
                            self.histograms[key] = (point.count, point.sum)
                        elif isinstance(point, NumberDataPoint):
                            self.sums[key] = point.value
                    self.units[metric.name] = metric.unit

    def added(self, before: Snapshot, name: str) -> dict[Key, float]:
        """What counter ``name`` gained since ``before``, per attribute set (gains only)."""
        out: dict[Key, float] = {}
        for (metric, key), value in self.sums.items():
            if metric == name:
                gain = value - before.sums.get((metric, key), 0)
                if gain:
                    out[key] = gain
        return out

    def recorded(self, before: Snapshot, name: str) -> dict[Key, tuple[int, float]]:
        """What histogram ``name`` gained since ``before``: (count, sum) per attribute set."""
        out: dict[Key, tuple[int, float]] = {}
        for (metric, key), (count, total) in self.histograms.items():
            if metric == name:
                count0, total0 = before.histograms.get((metric, key), (0, 0.0))
                if count - count0:
                    out[key] = (count - count0, total - total0)
        return out


def attrs(key: Key) -> Mapping[str, Any]:
    """An attribute set as a dict."""
    return dict(key)
