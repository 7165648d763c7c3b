"""Kernel histograms → OpenTelemetry ``HistogramDataPoint``s, merged into a collection.

The Python SDK has no MetricProducer and no asynchronous histogram, so the kernel's
pre-aggregated histograms become data points here and are appended to what a reader
collects (see :mod:`otel_netlat.export.readers`). Injected points bypass Views, the
cardinality limit and temporality conversion, so this module also caps the series count
and computes delta points itself. ``tests/unit/test_otel_bridge.py`` checks the points against a
reference SDK histogram.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_netlat.collect.snapshot import Attributes, HistogramSeries, Snapshot
from otel_netlat.export.pinning import SnapshotSource

log = logging.getLogger(__name__)

#: Series exported per histogram before the rest fold into the overflow series.
#: The kernel folds first (``netlat.agent.series.folded``); this is a backstop that keeps a
#: runaway snapshot from producing an unbounded scrape or export.
SERIES_LIMIT = 20_000
#: Same attributes as the kernel reader's overflow series, so both fold into one series.
OVERFLOW_ATTRIBUTES: Attributes = (("otel.metric.overflow", "true"),)


class SeriesCap:
    """Admits attribute sets first come, first served, up to ``limit``; folds the rest.

    Admission persists, so a series never moves between its own row and the overflow row
    (which would break both cumulative series). Shared by all readers so they agree.
    """

    def __init__(self, limit: int = SERIES_LIMIT) -> None:
        self.limit = limit
        self._admitted: set[Attributes] = set()
        self._lock = threading.Lock()
        self._warned = False

    def apply(self, series: Sequence[HistogramSeries]) -> Sequence[HistogramSeries]:
        with self._lock:
            admitted = self._admitted
            if len(admitted) + len(series) <= self.limit:  # cannot overflow: admit everything
                admitted.update(s.attributes for s in series)
                return series
            kept: list[HistogramSeries] = []
            extra: list[HistogramSeries] = []
            for s in series:
                if s.attributes in admitted or s.attributes == OVERFLOW_ATTRIBUTES:
                    kept.append(s)
                elif len(admitted) < self.limit:
                    admitted.add(s.attributes)
                    kept.append(s)
                else:
                    extra.append(s)
        if not extra:
            return kept
        if not self._warned:
            self._warned = True
            log.warning(
                "more than %d latency series: folding the rest into otel.metric.overflow=true", self.limit
            )
        return _fold(kept, extra)


def _fold(kept: list[HistogramSeries], extra: list[HistogramSeries]) -> list[HistogramSeries]:
    """Merge ``extra`` (and any existing overflow series) into one overflow series."""
    rest = [s for s in kept if s.attributes != OVERFLOW_ATTRIBUTES]
    parts = [s for s in kept if s.attributes == OVERFLOW_ATTRIBUTES] + extra
    counts = [0] * len(parts[0].bucket_counts)
    for s in parts:
        for i, c in enumerate(s.bucket_counts):
            counts[i] += c
    merged = HistogramSeries(
        OVERFLOW_ATTRIBUTES, tuple(counts), sum(s.sum_ns for s in parts), sum(s.count for s in parts)
    )
    return [*rest, merged]


@dataclass(frozen=True)
class HistogramSpec:
    """Name, description and unit of the injected kernel histogram."""

    name: str
    description: str
    unit: str


class KernelHistogram:
    """Turns snapshot latency series into one OTel histogram ``Metric`` for one reader.

    Cumulative points start at ``start_time_ns`` (the agent's maps start empty then). Delta
    points subtract the previous collection of this reader; a series whose counts went down
    (a reset) reports its current value. min/max are left unset (``None``): the kernel does
    not keep them, and ``None`` leaves the OTLP ``optional double`` fields absent, whereas
    the SDK's ``inf``/``-inf`` placeholders would be sent as values.
    """

    def __init__(
        self,
        spec: HistogramSpec,
        temporality: AggregationTemporality,
        start_time_ns: int,
        cap: SeriesCap,
    ) -> None:
        self.spec = spec
        self.temporality = temporality
        self._start_ns = start_time_ns
        self._cap = cap
        self._last_ns = start_time_ns
        self._prev: dict[Attributes, HistogramSeries] = {}
        self._attr_dicts: dict[Attributes, dict[str, str]] = {}
        self._lock = threading.Lock()

    def metric(self, snapshot: Snapshot, now_ns: int) -> Metric | None:
        """The histogram for ``snapshot``, or ``None`` when it has no points."""
        with self._lock:
            points = self._points(snapshot, now_ns)
        if not points:
            return None
        return Metric(
            name=self.spec.name,
            description=self.spec.description,
            unit=self.spec.unit,
            data=Histogram(data_points=points, aggregation_temporality=self.temporality),
        )

    def _attrs(self, attributes: Attributes, fresh: dict[Attributes, dict[str, str]]) -> dict[str, str]:
        d = self._attr_dicts.get(attributes)
        if d is None:
            d = dict(attributes)
        fresh[attributes] = d
        return d

    def _points(self, snapshot: Snapshot, now_ns: int) -> list[HistogramDataPoint]:
        series = self._cap.apply(snapshot.latency)
        if self.temporality is AggregationTemporality.CUMULATIVE:
            start = self._start_ns
            rows = [(s.attributes, s.bucket_counts, s.sum_ns, s.count) for s in series]
        else:
            start, self._last_ns = self._last_ns, now_ns
            rows = self._deltas(series)
        bounds = tuple(snapshot.bounds_s)
        fresh: dict[Attributes, dict[str, str]] = {}
        points = [
            HistogramDataPoint(
                attributes=self._attrs(attributes, fresh),
                start_time_unix_nano=start,
                time_unix_nano=now_ns,
                count=count,
                sum=sum_ns / 1e9,
                bucket_counts=counts,
                explicit_bounds=bounds,
                min=None,  # type: ignore[arg-type]  # the kernel keeps no min/max: leave them unset
                max=None,  # type: ignore[arg-type]
            )
            for attributes, counts, sum_ns, count in rows
        ]
        self._attr_dicts = fresh
        return points

    def _deltas(
        self, series: Sequence[HistogramSeries]
    ) -> list[tuple[Attributes, tuple[int, ...], int, int]]:
        """Change of each series since this reader's previous collection."""
        rows = []
        prev = self._prev
        for s in series:
            p = prev.get(s.attributes)
            if p is None or p.count > s.count or any(map(int.__lt__, s.bucket_counts, p.bucket_counts)):
                row = (s.attributes, s.bucket_counts, s.sum_ns, s.count)  # new, or reset: whole
            else:
                counts = tuple(map(int.__sub__, s.bucket_counts, p.bucket_counts))
                row = (s.attributes, counts, s.sum_ns - p.sum_ns, s.count - p.count)
            if row[3] or row[2]:  # like the SDK: no measurement in the interval, no delta point
                rows.append(row)
        self._prev = {s.attributes: s for s in series}
        return rows


def merge_metrics(
    metrics_data: MetricsData | None,
    resource: Resource,
    scope: InstrumentationScope,
    extra: Sequence[Metric],
) -> MetricsData | None:
    """``metrics_data`` with ``extra`` appended to ``scope``'s metrics (created if absent)."""
    if not extra:
        return metrics_data
    if metrics_data is None or not metrics_data.resource_metrics:
        sm = ScopeMetrics(scope=scope, metrics=list(extra), schema_url=scope.schema_url)
        return MetricsData(
            [ResourceMetrics(resource=resource, scope_metrics=[sm], schema_url=resource.schema_url)]
        )
    first, *others = metrics_data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, sm in enumerate(scopes):
        if sm.scope == scope:
            scopes[i] = replace(sm, metrics=[*sm.metrics, *extra])
            break
    else:
        scopes.append(ScopeMetrics(scope=scope, metrics=list(extra), schema_url=scope.schema_url))
    return MetricsData([replace(first, scope_metrics=scopes), *others])


@dataclass(frozen=True)
class KernelInjection:
    """What a reader needs to add the kernel histogram to its collections."""

    source: SnapshotSource
    resource: Resource
    scope: InstrumentationScope
    histogram: KernelHistogram
    clock_ns: Callable[[], int]

    def merge(self, metrics_data: MetricsData | None, snapshot: Snapshot) -> MetricsData | None:
        """``metrics_data`` plus the kernel histogram of ``snapshot``, timed now."""
        metric = self.histogram.metric(snapshot, self.clock_ns())
        return merge_metrics(metrics_data, self.resource, self.scope, [metric] if metric else [])
