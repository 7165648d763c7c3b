"""Snapshot → OpenTelemetry data, and the only module that touches SDK internals.

The Python SDK has no MetricProducer and no asynchronous histogram, so the kernel's
pre-aggregated histograms are turned into ``HistogramDataPoint``s here and merged into what
each reader collects (readers are subclassed; ``collect`` and ``_receive_metrics`` are
overridden). Injected points bypass Views, the cardinality limit and temporality conversion,
so this module also caps the series count and computes delta points itself.

The Prometheus text for the collected data is rendered here too: the stock path
(``_CustomCollector`` + ``generate_latest``) costs ~0.3 s per 1,000 histogram series, so a
renderer specialised for what the exporter's translation produces caches per-series label
strings and writes the same bytes 10-20x faster. Anything it does not model falls back to the
stock path, and tests compare both byte for byte.

Pinned: opentelemetry-sdk 1.45.2, opentelemetry-exporter-prometheus 0.66b2,
prometheus-client 0.26.0 (see pyproject.toml); ``tests/test_otel_bridge.py`` checks the
injected points against a reference SDK histogram.
"""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from itertools import accumulate
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader, _CustomCollector
from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute, sanitize_full_name
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    PeriodicExportingMetricReader,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.utils import floatToGoString

from otel_netlat.collect.snapshot import Attributes, HistogramSeries, Snapshot

log = logging.getLogger(__name__)

#: Series the bridge exports per histogram before folding the rest into the overflow series.
#: The kernel folds first (``netlat.agent.series.folded``); this is a backstop that keeps a
#: runaway snapshot from producing an unbounded scrape or export.
SERIES_LIMIT = 20_000
#: Same attributes as the kernel reader's overflow series, so both fold into one series.
OVERFLOW_ATTRIBUTES: Attributes = (("otel.metric.overflow", "true"),)
#: Estimated bytes per OTLP request; half the Collector's default 4 MiB gRPC receive limit.
OTLP_REQUEST_BUDGET = 2 * 1024 * 1024


# ---- one snapshot per collection -----------------------------------------------------------


class _Pin:
    __slots__ = ("snapshot", "delivered")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.delivered = False


class SnapshotSource:
    """Gives every instrument of one collection the same snapshot.

    A reader pins ``latest()`` when its collection starts; observable callbacks (run on the
    collecting thread) and the injected histograms then read that one snapshot, so a scrape
    never shows histogram counts from one map read and packet counters from the next.
    """

    def __init__(self, latest: Callable[[], Snapshot]) -> None:
        self._latest = latest
        self._local = threading.local()

    def current(self) -> Snapshot:
        """The pinned snapshot of this thread's collection, else the latest one."""
        pin: _Pin | None = getattr(self._local, "pin", None)
        return pin.snapshot if pin is not None else self._latest()

    @contextmanager
    def pinned(self) -> Iterator[_Pin]:
        outer: _Pin | None = getattr(self._local, "pin", None)
        if outer is not None:  # a nested collect keeps the outer snapshot
            yield outer
            return
        pin = _Pin(self._latest())
        self._local.pin = pin
        try:
            yield pin
        finally:
            self._local.pin = None

    def _current_pin(self) -> _Pin:
        pin: _Pin | None = getattr(self._local, "pin", None)
        return pin if pin is not None else _Pin(self._latest())


# ---- kernel histograms → data points -------------------------------------------------------


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


class KernelInjection:
    """What a reader needs to add the kernel histogram to its collections."""

    def __init__(
        self,
        source: SnapshotSource,
        resource: Resource,
        scope: InstrumentationScope,
        histogram: KernelHistogram,
        clock_ns: Callable[[], int],
    ) -> None:
        self.source = source
        self.resource = resource
        self.scope = scope
        self.histogram = histogram
        self._clock_ns = clock_ns

    def merge(self, metrics_data: MetricsData | None, snapshot: Snapshot) -> MetricsData | None:
        metric = self.histogram.metric(snapshot, self._clock_ns())
        return merge_metrics(metrics_data, self.resource, self.scope, [metric] if metric else [])


# ---- readers -------------------------------------------------------------------------------


class _InjectingReader:
    """Mixin for MetricReader subclasses: pin one snapshot, inject the kernel histogram.

    ``MetricReader.collect`` is marked ``@final`` in the SDK; overriding it is the only hook
    that runs before the observable callbacks, which is where the snapshot must be pinned.
    The SDK returns ``None`` (and skips ``_receive_metrics``) when its own instruments have
    nothing; the kernel histogram is delivered anyway.
    """

    _injection: KernelInjection
    _collect: Any

    def collect(self, timeout_millis: float = 10_000) -> None:
        if self._collect is None:  # not registered on a MeterProvider yet: the SDK warns
            super().collect(timeout_millis=timeout_millis)  # type: ignore[misc]
            return
        with self._injection.source.pinned() as pin:
            super().collect(timeout_millis=timeout_millis)  # type: ignore[misc]
            if not pin.delivered:
                self._receive_metrics(None, timeout_millis=timeout_millis)

    def _receive_metrics(
        self, metrics_data: MetricsData | None, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        pin = self._injection.source._current_pin()
        pin.delivered = True
        merged = self._injection.merge(metrics_data, pin.snapshot)
        if merged is not None:
            self._deliver(merged, timeout_millis)

    def _deliver(self, metrics_data: MetricsData, timeout_millis: float) -> None:
        raise NotImplementedError


class BridgedPrometheusReader(_InjectingReader, PrometheusMetricReader):
    """A PrometheusMetricReader whose collections include the kernel histogram.

    It keeps the last merged ``MetricsData`` instead of queueing it on the exporter's
    collector (whose queue only drains through ``prometheus_client``'s registry), and
    renders it with :class:`PrometheusText`. Its temporality (cumulative) and component
    type are the stock reader's.
    """

    def __init__(self, injection: KernelInjection, *, scope_info_enabled: bool, **kwargs: Any) -> None:
        # A private registry: the global one would collect us again and leak between instances.
        super().__init__(
            scope_info_enabled=scope_info_enabled, registry=CollectorRegistry(auto_describe=False), **kwargs
        )
        self._injection = injection
        self.scope_info_enabled = scope_info_enabled
        self._latest: MetricsData | None = None
        self._latest_lock = threading.Lock()

    def _deliver(self, metrics_data: MetricsData, timeout_millis: float) -> None:
        with self._latest_lock:
            self._latest = metrics_data

    def collect_metrics_data(self, timeout_millis: float = 10_000) -> MetricsData:
        """Collect now and return what was collected (empty if nothing)."""
        with self._latest_lock:
            self._latest = None
        self.collect(timeout_millis=timeout_millis)
        with self._latest_lock:
            return self._latest if self._latest is not None else MetricsData(resource_metrics=[])


class BridgedPeriodicReader(_InjectingReader, PeriodicExportingMetricReader):
    """A PeriodicExportingMetricReader whose exports include the kernel histogram."""

    def __init__(self, injection: KernelInjection, exporter: Any, **kwargs: Any) -> None:
        self._injection = injection  # set before super(): its thread may collect at once
        super().__init__(exporter, **kwargs)

    def _deliver(self, metrics_data: MetricsData, timeout_millis: float) -> None:
        PeriodicExportingMetricReader._receive_metrics(self, metrics_data, timeout_millis=timeout_millis)


# ---- Prometheus text -----------------------------------------------------------------------


def render_stock(metrics_data: MetricsData, *, scope_info_enabled: bool) -> bytes:
    """The text the stock exporter (``_CustomCollector`` + ``generate_latest``) produces."""
    collector = _CustomCollector(scope_info_enabled=scope_info_enabled)
    collector.add_metrics_data(metrics_data)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return generate_latest(registry)


class _Unsupported(Exception):
    """Data the fast renderer does not model: use the stock path."""


def _check_value(value: Any) -> str:
    # Same as _CustomCollector._check_value.
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _escape_value(v: str) -> str:
    # generate_latest escapes label values with openmetrics._escape(v, ALLOWUTF8).
    if "\\" in v or "\n" in v or '"' in v:
        return v.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return v


_EXACT_INT = 2**53  # below this an int converts to float exactly, so repr(float(v)) is "<digits>.0"


def _fmt_int(v: int) -> str:
    """floatToGoString(v) for 0 <= v < 2**53, without the float round trip."""
    if v < 1_000_000:
        return f"{v}.0"
    digits = str(v)  # Go's %g switches to an exponent from 1e6 on
    rest = digits[1:].rstrip("0")
    return f"{digits[0]}.{rest}e+{len(digits) - 1:02d}" if rest else f"{digits[0]}e+{len(digits) - 1:02d}"


def _fmt(v: Any) -> str:
    """floatToGoString, with the shortcut for the non-negative ints most samples are."""
    if type(v) is int and 0 <= v < _EXACT_INT:
        return _fmt_int(v)
    return floatToGoString(v)


_LINE = "{}{}\n".format
_LINE_SMALL = "{}{}.0\n".format  # with _fmt_int's result for ints below 1e6


_LABEL_NAMES: dict[str, str] = {}


def _pair(key: str, value: str) -> str:
    name = _LABEL_NAMES.get(key)
    if name is None:
        name = _LABEL_NAMES[key] = escape_label_name(key)  # few distinct keys: never evicted
    return f'{name}="{_escape_value(value)}"'


def _label_str(items: Sequence[tuple[str, str]]) -> str:
    return ",".join(_pair(k, v) for k, v in sorted(items))


_FAMILY_CLASS = {
    "counter": "CounterMetricFamily",
    "gauge": "GaugeMetricFamily",
    "histogram": "HistogramMetricFamily",
}


class _HistogramEntry:
    """One histogram series: its labels, sample-line prefixes, and last rendered lines."""

    __slots__ = (
        "attributes",
        "labels",
        "bounds",
        "buckets",
        "count",
        "sum",
        "with_sum",
        "counts",
        "total",
        "text",
    )

    def __init__(self, attributes: Any, labels: list[tuple[str, str]]) -> None:
        self.attributes = attributes  # held, so that id(attributes) stays this series' key
        self.labels = labels
        self.bounds: Any = None
        self.counts: Any = None
        self.total: Any = None
        self.text = ""


class PrometheusText:
    """Renders collected ``MetricsData`` exactly as the stock Prometheus exporter would.

    It mirrors ``_CustomCollector`` (names, unit suffixes, label sanitising and
    back-filling, ``target_info``, scope labels) and ``generate_latest`` (HELP/TYPE,
    sorted labels, escaping, Go float formatting), and keeps each series' label prefixes
    between renders, so a render costs about one string format per sample line.
    """

    def __init__(self, *, scope_info_enabled: bool) -> None:
        self.scope_info_enabled = scope_info_enabled
        self._failed = False
        self._labels: dict[str, str] = {}
        self._le_values: dict[tuple[float, ...], list[str]] = {}
        # (metric context) → {attribute items, or id() of the attributes dict → prefix or
        # _HistogramEntry}; rebuilt by every render from the entries it used, so series that
        # vanish are forgotten. About 5 KB per histogram series (prefixes and last lines).
        self._series: dict[Any, dict[Any, Any]] = {}
        self._next: dict[Any, dict[Any, Any]] = {}

    def render(self, metrics_data: MetricsData) -> bytes:
        self._next = {}
        try:
            return self._render(metrics_data)
        except _Unsupported:
            return render_stock(metrics_data, scope_info_enabled=self.scope_info_enabled)
        except Exception:  # a bug here must not take /metrics down: the stock path is slower, not wrong
            if not self._failed:
                self._failed = True
                log.exception("fast Prometheus rendering failed; using the stock exporter's")
            return render_stock(metrics_data, scope_info_enabled=self.scope_info_enabled)
        finally:
            self._series, self._next = self._next, {}

    def _les(self, bounds: Sequence[float]) -> list[str]:
        """``le`` values as ``_convert_buckets`` writes them: ``f"{bound}"``, then ``+Inf``."""
        key = tuple(bounds)
        les = self._le_values.get(key)
        if les is None:
            les = self._le_values[key] = [_escape_value(f"{b}") for b in bounds] + ["+Inf"]
        return les

    def _label(self, key: str) -> str:
        label = self._labels.get(key)
        if label is None:
            label = self._labels[key] = sanitize_attribute(key)
        return label

    def _render(self, md: MetricsData) -> bytes:
        resource_attrs: dict[str, Any] = {}
        for rm in md.resource_metrics:
            resource_attrs.update(rm.resource.attributes)
        info = {sanitize_attribute(k): _check_value(v) for k, v in resource_attrs.items()}
        info_labels = _label_str(list(info.items()))
        out = [
            "# HELP target_info Target metadata\n# TYPE target_info gauge\n",
            f"target_info{{{info_labels}}} 1.0\n" if info_labels else "target_info 1.0\n",
        ]
        families: dict[str, list[str]] = {}
        for rm in md.resource_metrics:
            for sm in rm.scope_metrics:
                scope_items = self._scope_items(sm.scope)
                for metric in sm.metrics:
                    self._metric(metric, scope_items, families)
        for lines in families.values():
            out.extend(lines)
        return "".join(out).encode("utf-8")

    def _scope_items(self, scope: InstrumentationScope) -> tuple[tuple[str, str], ...]:
        if not self.scope_info_enabled:
            return ()
        attrs: dict[str, Any] = {}
        for key, value in (scope.attributes or {}).items():
            attrs["otel_scope_" + key] = value
        attrs["otel_scope_name"] = scope.name or ""
        attrs["otel_scope_version"] = scope.version or ""
        attrs["otel_scope_schema_url"] = scope.schema_url or ""
        return tuple((self._label(k), _check_value(v)) for k, v in attrs.items())

    def _metric(
        self, metric: Metric, scope_items: tuple[tuple[str, str], ...], families: dict[str, list[str]]
    ) -> None:
        data = metric.data
        if isinstance(data, Sum):
            to_gauge = (
                not data.is_monotonic and data.aggregation_temporality == AggregationTemporality.CUMULATIVE
            )
            kind = "gauge" if to_gauge else "counter"
        elif isinstance(data, Gauge):
            kind = "gauge"
        elif isinstance(data, Histogram):
            kind = "histogram"
        else:
            raise _Unsupported(type(data).__name__)
        name = sanitize_full_name(metric.name)
        description = metric.description or ""
        unit = map_unit(metric.unit or "")
        family_id = "|".join((name, description, unit, _FAMILY_CLASS[kind]))
        if family_id in families:
            raise _Unsupported("two metrics share one family")  # the stock code merges them
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]
        if unit and not name.endswith("_" + unit):
            name += "_" + unit
        mname = name + "_total" if kind == "counter" else name
        help_text = description.replace("\\", r"\\").replace("\n", r"\n")
        lines = [
            f"# HELP {escape_metric_name(mname)} {help_text}\n# TYPE {escape_metric_name(mname)} {kind}\n"
        ]
        families[family_id] = lines

        points = data.data_points
        keys = {k for k, _ in scope_items}
        for key_set in {tuple(p.attributes) for p in points}:
            keys.update(self._label(k) for k in key_set)
        label_keys = tuple(sorted(keys))
        context = (name, kind, label_keys, scope_items)
        cache = self._series.get(context, {})
        fresh = self._next.setdefault(context, {})
        if kind == "histogram":
            self._histogram(points, name, scope_items, label_keys, cache, fresh, lines)
            return
        sample = escape_metric_name(mname)
        append = lines.append
        for p in points:
            key, prefix = self._lookup(p, cache, fresh)
            if prefix is None:
                labels = self._labels_of(p, scope_items, label_keys)
                prefix = f"{sample}{{{_label_str(labels)}}} " if labels else f"{sample} "
                if key is not None:
                    fresh[key] = prefix
            append(f"{prefix}{_fmt(p.value)}\n")

    @staticmethod
    def _lookup(point: Any, cache: dict[Any, Any], fresh: dict[Any, Any]) -> tuple[Any, Any]:
        try:
            key = tuple(point.attributes.items())
            entry = cache.get(key)
        except TypeError:  # unhashable (sequence) attribute values: not cached
            return None, None
        if entry is not None:
            fresh[key] = entry
        return key, entry

    def _labels_of(
        self, point: Any, scope_items: tuple[tuple[str, str], ...], label_keys: tuple[str, ...]
    ) -> list[tuple[str, str]]:
        # Later keys win on a sanitising collision, and absent keys are back-filled with "",
        # as in _CustomCollector._collect_data_points.
        labels = dict(scope_items)
        for k, v in point.attributes.items():
            labels[self._label(k)] = _check_value(v)
        return [(k, labels.get(k, "")) for k in label_keys]

    def _histogram(
        self,
        points: Sequence[HistogramDataPoint],
        name: str,
        scope_items: tuple[tuple[str, str], ...],
        label_keys: tuple[str, ...],
        cache: dict[Any, Any],
        fresh: dict[Any, Any],
        lines: list[str],
    ) -> None:
        bucket_name = escape_metric_name(name + "_bucket")
        count_name = escape_metric_name(name + "_count")
        sum_name = escape_metric_name(name + "_sum")
        append = lines.append
        for p in points:
            # The bridge hands out the same attributes dict for a series every collection:
            # finding it by identity spares a tuple of its items per point (and the GC runs).
            attributes = p.attributes
            entry = cache.get(id(attributes))
            if entry is None or entry.attributes is not attributes:
                key, entry = self._lookup(p, cache, fresh)
                if entry is None:
                    entry = _HistogramEntry(attributes, self._labels_of(p, scope_items, label_keys))
                    if key is not None:
                        fresh[key] = entry
                entry.attributes = attributes
            fresh[id(attributes)] = entry
            bounds = p.explicit_bounds
            if entry.bounds is not bounds and entry.bounds != bounds:
                # entry.labels are sorted by key, so "le" goes between the pairs before and after it.
                pairs = [(k, _pair(k, v)) for k, v in entry.labels]
                before = ",".join(p for k, p in pairs if k < "le")
                after = ",".join(p for k, p in pairs if k > "le")  # a user "le" label loses, as in the family
                head = f'{bucket_name}{{{before}{"," if before else ""}le="'
                end = f'"{"," if after else ""}{after}}} '
                entry.buckets = [head + le + end for le in self._les(bounds)]
                tail = f"{{{','.join(p for _, p in pairs)}}} " if pairs else " "
                entry.count, entry.sum = count_name + tail, sum_name + tail
                entry.with_sum = float(self._les(bounds)[0]) >= 0  # below 0 the family drops _sum/_count
                entry.bounds = bounds
            counts, total = p.bucket_counts, p.sum
            if entry.counts == counts and entry.total == total:
                append(entry.text)  # an idle series renders as it did last time
                continue
            prefixes = entry.buckets
            if len(counts) != len(prefixes):  # _convert_buckets zips, stopping at the shorter
                n = min(len(counts), len(prefixes))
                if not n:
                    raise _Unsupported("histogram point without buckets")
                prefixes, counts = prefixes[:n], counts[:n]
            cums = list(accumulate(counts))
            top = cums[-1]
            if type(top) is int and top < _EXACT_INT and min(counts) >= 0:
                # cums ascend: "<n>.0" below 1e6 without a call per value, Go exponents above.
                k = bisect_left(cums, 1_000_000)
                text = "".join(map(_LINE_SMALL, prefixes[:k], cums[:k]))
                if k < len(cums):  # _fmt_int's exponent form, inlined: a call per value costs 30%
                    text += "".join(
                        [
                            f"{p}{(d[0] + '.' + d[1:]).rstrip('0.')}e+{len(d) - 1:02d}\n"
                            for p, d in zip(prefixes[k:], map(str, cums[k:]), strict=True)
                        ]
                    )
            else:
                text = "".join(map(_LINE, prefixes, map(_fmt, cums)))
            if entry.with_sum and total is not None:
                text = f"{text}{entry.count}{_fmt(top)}\n{entry.sum}{_fmt(total)}\n"
            entry.counts, entry.total, entry.text = p.bucket_counts, total, text
            append(text)


# ---- OTLP request splitting ----------------------------------------------------------------


def _str_size(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def _attrs_size(attributes: Mapping[str, Any] | None) -> int:
    # KeyValue{key, AnyValue{...}}: tags and lengths take < 12 bytes per pair.
    if not attributes:
        return 0
    return sum(
        _str_size(k) + (_str_size(v) if isinstance(v, str) else 24 * (1 + len(str(v)))) + 12
        for k, v in attributes.items()
    )


def estimate_point_size(point: Any) -> int:
    """An upper bound on a data point's encoded OTLP size in bytes."""
    size = 64 + _attrs_size(point.attributes)  # times, count, sum, min, max, framing
    if isinstance(point, HistogramDataPoint):
        size += 9 * (len(point.bucket_counts) + len(point.explicit_bounds)) + 16
    for exemplar in getattr(point, "exemplars", None) or ():
        size += 96 + _attrs_size(getattr(exemplar, "filtered_attributes", None))
    return size


def split_metrics_data(metrics_data: MetricsData, budget: int = OTLP_REQUEST_BUDGET) -> list[MetricsData]:
    """Split ``metrics_data`` into requests whose estimated encoded size stays under ``budget``.

    Unlike the exporters' ``max_export_batch_size`` (a point count) this bounds bytes, so
    long attribute values cannot push a request over the Collector's 4 MiB receive limit.
    """
    chunks: list[MetricsData] = []
    current: list[ResourceMetrics] = []
    used = 0
    for rm in metrics_data.resource_metrics:
        rm_size = 64 + _attrs_size(rm.resource.attributes)
        for sm in rm.scope_metrics:
            sm_size = 64 + _attrs_size(sm.scope.attributes) + len(sm.scope.name) + len(sm.scope.version or "")
            for metric in sm.metrics:
                # Counted once per metric and chunk: generous when one chunk holds several.
                header = rm_size + sm_size + 64 + len(metric.name) + len(metric.description or "")
                taken: list[Any] = []
                for point in metric.data.data_points:
                    size = estimate_point_size(point)
                    need = size if taken else size + header
                    if used and used + need > budget:
                        if taken:
                            _append(current, rm, sm, metric, taken)
                            taken = []
                        chunks.append(MetricsData(resource_metrics=current))
                        current, used, need = [], 0, size + header
                    taken.append(point)
                    used += need
                if taken:
                    _append(current, rm, sm, metric, taken)
    if current:
        chunks.append(MetricsData(resource_metrics=current))
    return chunks


def _append(
    current: list[ResourceMetrics], rm: ResourceMetrics, sm: ScopeMetrics, metric: Metric, points: list[Any]
) -> None:
    """Add ``points`` of ``metric`` to the chunk being built, under its resource and scope."""
    part = replace(metric, data=replace(metric.data, data_points=points))
    if current and current[-1].resource is rm.resource:
        last_rm = current[-1]
        scopes = last_rm.scope_metrics
        if scopes and scopes[-1].scope is sm.scope:
            scopes[-1].metrics.append(part)  # type: ignore[attr-defined]
            return
        scopes.append(replace(sm, metrics=[part]))  # type: ignore[attr-defined]
        return
    current.append(replace(rm, scope_metrics=[replace(sm, metrics=[part])]))
