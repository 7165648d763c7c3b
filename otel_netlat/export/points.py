"""Kernel series → OpenTelemetry data points, merged into a collection.

The Python SDK has no MetricProducer and no asynchronous histogram, so the kernel's
pre-aggregated histograms become data points here and are appended to what a reader
collects (see :mod:`otel_netlat.export.readers`). The per-address counters (packets,
drops) are injected the same way rather than observed through SDK instruments: the SDK
keeps the state of every attribute set it ever saw, for good, where address series expire
(``--series-ttl``) and must be forgotten, and start again with a start time of their own.
Injected points bypass Views, the cardinality limit and temporality conversion, so this
module also caps the series count and computes delta points itself.
``tests/unit/test_otel_bridge.py`` checks the points against a reference SDK histogram.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_netlat.collect.snapshot import Attributes, CounterPoint, HistogramSeries, Snapshot
from otel_netlat.export.exemplars import ExemplarIndex
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

    Only live series count: a series absent from the snapshot has expired (kernel series
    never vanish otherwise) and gives its place up; if it comes back it is a new series and
    is admitted like one. While a series lives its admission persists, so it never moves
    between its own row and the overflow row (which would break both cumulative series).
    Shared by all readers so they agree.
    """

    def __init__(self, limit: int = SERIES_LIMIT) -> None:
        self.limit = limit
        self._admitted: set[Attributes] = set()
        self._lock = threading.Lock()
        self._warned = False

    def apply(self, series: Sequence[Any], fold: Callable[[list, list], list] | None = None) -> Sequence[Any]:
        """``series`` (latency series, or counter points with ``fold=fold_counters``) capped."""
        live = {s.attributes for s in series}
        with self._lock:
            if len(live) <= self.limit:  # cannot overflow: admit everything
                self._admitted = live
                return series
            admitted = self._admitted & live
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
            self._admitted = admitted
        if not extra:
            return kept
        if not self._warned:
            self._warned = True
            log.warning(
                "more than %d series of one metric: folding the rest into otel.metric.overflow=true",
                self.limit,
            )
        return (fold or _fold)(kept, extra)


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


def fold_counters(kept: list[CounterPoint], extra: list[CounterPoint]) -> list[CounterPoint]:
    """:func:`_fold` for counter points."""
    rest = [p for p in kept if p.attributes != OVERFLOW_ATTRIBUTES]
    total = sum(p.value for p in kept if p.attributes == OVERFLOW_ATTRIBUTES) + sum(p.value for p in extra)
    return [*rest, CounterPoint(OVERFLOW_ATTRIBUTES, total)]


@dataclass(frozen=True)
class HistogramSpec:
    """Name, description and unit of an injected kernel histogram, and its Snapshot field."""

    name: str
    description: str
    unit: str
    field: str = "latency"


@dataclass(frozen=True)
class CounterSpec:
    """Name, description and unit of an injected kernel counter, and its Snapshot field."""

    name: str
    description: str
    unit: str
    field: str


class AttributeDicts:
    """One reader's attribute dict of each series, the same object from collection to collection.

    The Prometheus renderer finds a series' cached labels by the identity of its dict, and
    the histogram and the counters of one series share it. What a collection did not use
    is forgotten (expired series with it).
    """

    def __init__(self) -> None:
        self._last: dict[Attributes, dict[str, str]] = {}
        self._fresh: dict[Attributes, dict[str, str]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def collection(self) -> Iterator[None]:
        """One collection's use of the dicts (collections of one reader take turns)."""
        with self._lock:
            self._fresh = {}
            try:
                yield
            finally:
                self._last, self._fresh = self._fresh, {}

    def of(self, attributes: Attributes) -> dict[str, str]:
        d = self._fresh.get(attributes)
        if d is None:
            d = self._last.get(attributes)
            if d is None:
                d = dict(attributes)
            self._fresh[attributes] = d
        return d


class KernelMetric(Protocol):
    """What a reader injects: one metric of a snapshot, timed ``now_ns``."""

    def metric(self, snapshot: Snapshot, now_ns: int) -> Metric | None: ...


class KernelHistogram:
    """Turns snapshot latency series into one OTel histogram ``Metric`` for one reader.

    Cumulative points start at the series' own ``start_ns`` (an address series that expired
    and came back), else at ``start_time_ns`` (the agent's maps start empty then). Delta
    points subtract the previous collection of this reader; a series that started again or
    whose counts went down (a reset) reports its current value. min/max are left unset
    (``None``): the kernel does not keep them, and ``None`` leaves the OTLP ``optional
    double`` fields absent, whereas the SDK's ``inf``/``-inf`` placeholders would be sent.
    """

    def __init__(
        self,
        spec: HistogramSpec,
        temporality: AggregationTemporality,
        start_time_ns: int,
        cap: SeriesCap,
        dicts: AttributeDicts | None = None,
    ) -> None:
        self.spec = spec
        self.temporality = temporality
        self._start_ns = start_time_ns
        self._cap = cap
        self._last_ns = start_time_ns
        self._prev: dict[Attributes, HistogramSeries] = {}
        self._own_dicts = dicts is None  # alone (tests): a collection of its own per call
        self._dicts = dicts or AttributeDicts()
        self._lock = threading.Lock()

    def metric(self, snapshot: Snapshot, now_ns: int) -> Metric | None:
        """The histogram for ``snapshot``, or ``None`` when it has no points."""
        with self._lock:
            if self._own_dicts:
                with self._dicts.collection():
                    points = self._points(snapshot, now_ns)
            else:
                points = self._points(snapshot, now_ns)
        if not points:
            return None
        return Metric(
            name=self.spec.name,
            description=self.spec.description,
            unit=self.spec.unit,
            data=Histogram(data_points=points, aggregation_temporality=self.temporality),
        )

    def _points(self, snapshot: Snapshot, now_ns: int) -> list[HistogramDataPoint]:
        series = self._cap.apply(getattr(snapshot, self.spec.field))
        if self.temporality is AggregationTemporality.CUMULATIVE:
            first = self._start_ns
            rows = [(s.attributes, s.bucket_counts, s.sum_ns, s.count, s.start_ns or first) for s in series]
        else:
            start, self._last_ns = self._last_ns, now_ns
            rows = [(*row, start) for row in self._deltas(series)]
        bounds = tuple(snapshot.bounds_s)
        attrs = self._dicts.of
        index = ExemplarIndex(snapshot) if snapshot.slow else None
        delta = self.temporality is AggregationTemporality.DELTA
        return [
            HistogramDataPoint(
                attributes=attrs(attributes),
                start_time_unix_nano=start,
                time_unix_nano=now_ns,
                count=count,
                sum=sum_ns / 1e9,
                bucket_counts=counts,
                explicit_bounds=bounds,
                min=None,  # type: ignore[arg-type]  # the kernel keeps no min/max: leave them unset
                max=None,  # type: ignore[arg-type]
                exemplars=index.for_series(attributes, start if delta else 0) if index else [],
            )
            for attributes, counts, sum_ns, count, start in rows
        ]

    def _deltas(
        self, series: Sequence[HistogramSeries]
    ) -> list[tuple[Attributes, tuple[int, ...], int, int]]:
        """Change of each series since this reader's previous collection."""
        rows = []
        prev = self._prev
        for s in series:
            p = prev.get(s.attributes)
            if (
                p is None
                or p.start_ns != s.start_ns
                or p.count > s.count
                or any(map(int.__lt__, s.bucket_counts, p.bucket_counts))
            ):
                row = (s.attributes, s.bucket_counts, s.sum_ns, s.count)  # new, again, or reset: whole
            else:
                counts = tuple(map(int.__sub__, s.bucket_counts, p.bucket_counts))
                row = (s.attributes, counts, s.sum_ns - p.sum_ns, s.count - p.count)
            if row[3] or row[2]:  # like the SDK: no measurement in the interval, no delta point
                rows.append(row)
        self._prev = {s.attributes: s for s in series}
        return rows


class KernelCounter:
    """Snapshot counter points (``spec.field``) → one monotonic OTel ``Sum`` for one reader.

    Cumulative points start at the series' own ``start_ns``, else at ``start_time_ns``;
    delta points subtract this reader's previous collection (a series that started again,
    or went down, reports its whole value; an unchanged one no point).
    """

    def __init__(
        self,
        spec: CounterSpec,
        temporality: AggregationTemporality,
        start_time_ns: int,
        cap: SeriesCap,
        dicts: AttributeDicts,
    ) -> None:
        self.spec = spec
        self.temporality = temporality
        self._start_ns = start_time_ns
        self._last_ns = start_time_ns
        self._cap = cap
        self._dicts = dicts
        self._prev: dict[Attributes, CounterPoint] = {}
        self._lock = threading.Lock()

    def metric(self, snapshot: Snapshot, now_ns: int) -> Metric | None:
        """The counter for ``snapshot``, or ``None`` when it has no points."""
        with self._lock:
            points = self._points(getattr(snapshot, self.spec.field), now_ns)
        if not points:
            return None
        return Metric(
            name=self.spec.name,
            description=self.spec.description,
            unit=self.spec.unit,
            data=Sum(data_points=points, aggregation_temporality=self.temporality, is_monotonic=True),
        )

    def _points(self, series: Sequence[CounterPoint], now_ns: int) -> list[NumberDataPoint]:
        series = self._cap.apply(series, fold_counters)
        if self.temporality is AggregationTemporality.CUMULATIVE:
            first = self._start_ns
            rows = [(p.attributes, p.value, p.start_ns or first) for p in series]
        else:
            start, self._last_ns = self._last_ns, now_ns
            prev = self._prev
            rows = []
            for p in series:
                q = prev.get(p.attributes)
                whole = q is None or q.start_ns != p.start_ns or q.value > p.value
                value = p.value if whole else p.value - q.value  # type: ignore[union-attr]
                if value:
                    rows.append((p.attributes, value, start))
            self._prev = {p.attributes: p for p in series}
        attrs = self._dicts.of
        return [
            NumberDataPoint(attributes=attrs(a), start_time_unix_nano=start, time_unix_nano=now_ns, value=v)
            for a, v, start in rows
        ]


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
    """What a reader needs to add the kernel metrics to its collections.

    ``counters`` and ``histogram`` share ``dicts`` (a collection is one use of them).
    """

    source: SnapshotSource
    resource: Resource
    scope: InstrumentationScope
    histogram: KernelMetric
    clock_ns: Callable[[], int]
    counters: tuple[KernelMetric, ...] = ()
    dicts: AttributeDicts = field(default_factory=AttributeDicts)

    def merge(self, metrics_data: MetricsData | None, snapshot: Snapshot) -> MetricsData | None:
        """``metrics_data`` plus the kernel metrics of ``snapshot``, timed now."""
        now = self.clock_ns()
        with self.dicts.collection():
            metrics = [m.metric(snapshot, now) for m in (*self.counters, self.histogram)]
        return merge_metrics(metrics_data, self.resource, self.scope, [m for m in metrics if m])
