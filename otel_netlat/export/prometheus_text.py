"""Collected ``MetricsData`` → Prometheus text, byte for byte what the stock exporter writes.

The stock path (``_CustomCollector`` + ``generate_latest``) costs ~0.3 s per 1,000
histogram series, so this renderer, specialised for what the exporter's translation
produces, caches per-series label strings and writes the same bytes several times faster.
Anything it does not model falls back to the stock path, and tests compare both byte for
byte. The text comes out series by series (:meth:`PrometheusText.chunks`), so the page can
be compressed as it is written: 10,000 histogram series are ~45 MB of text, ~2 MB gzipped,
and the agent runs in 256 MiB. It mirrors private parts of opentelemetry-exporter-prometheus 0.66b2 and
prometheus-client 0.26.0 (pinned in pyproject.toml). :mod:`.openmetrics_text` writes OpenMetrics
with the same walk and the same series cache (the hooks ``_header``, ``_histogram``, ``_stock``).
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from itertools import accumulate
from typing import Any

from opentelemetry.exporter.prometheus import _CustomCollector
from opentelemetry.exporter.prometheus._mapping import map_unit, sanitize_attribute, sanitize_full_name
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    Sum,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import escape_label_name, escape_metric_name
from prometheus_client.utils import floatToGoString

log = logging.getLogger(__name__)


def stock_registry(metrics_data: MetricsData, *, scope_info_enabled: bool) -> CollectorRegistry:
    """A registry holding the stock exporter's translation (``_CustomCollector``) of ``metrics_data``."""
    collector = _CustomCollector(scope_info_enabled=scope_info_enabled)
    collector.add_metrics_data(metrics_data)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


def render_stock(metrics_data: MetricsData, *, scope_info_enabled: bool) -> bytes:
    """The text the stock exporter (``_CustomCollector`` + ``generate_latest``) produces."""
    return generate_latest(stock_registry(metrics_data, scope_info_enabled=scope_info_enabled))


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


#: Counter and gauge lines handed on at a time (a chunk of the page).
_LINES_PER_CHUNK = 512


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
    """One histogram series: its labels and the pieces of its sample lines (not the lines:
    ~1 KB a series instead of ~18 KB, the difference between 10,000 series fitting in a
    small memory limit or not)."""

    __slots__ = ("attributes", "labels", "bounds", "head", "end", "tail", "with_sum")

    def __init__(self, attributes: Any, labels: list[tuple[str, str]]) -> None:
        self.attributes = attributes  # held, so that id(attributes) stays this series' key
        self.labels = labels
        self.bounds: Any = None
        self.head = self.end = self.tail = ""
        self.with_sum = True


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
        """The whole page as bytes."""
        try:
            return "".join(self.chunks(metrics_data)).encode("utf-8")
        except _Unsupported:
            return self._stock(metrics_data)
        except Exception:  # a bug here must not take /metrics down: the stock path is slower, not wrong
            self._report_failure()
            return self._stock(metrics_data)

    def render_gzip(self, metrics_data: MetricsData, level: int = 1) -> bytes:
        """The page gzipped as it is written: the text itself is never whole in memory."""
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: the gzip container
        parts: list[bytes] = []
        try:
            for chunk in self.chunks(metrics_data):
                parts.append(compressor.compress(chunk.encode("utf-8")))
        except Exception as e:
            if not isinstance(e, _Unsupported):
                self._report_failure()
            return gzip.compress(self._stock(metrics_data), level)
        parts.append(compressor.flush())
        return b"".join(parts)

    def _stock(self, metrics_data: MetricsData) -> bytes:
        """The page as the stock exporter writes it: for what this renderer does not model."""
        return render_stock(metrics_data, scope_info_enabled=self.scope_info_enabled)

    def _report_failure(self) -> None:
        if not self._failed:
            self._failed = True
            log.exception("fast Prometheus rendering failed; using the stock exporter's")

    def chunks(self, metrics_data: MetricsData) -> Iterator[str]:
        """The page's text, a family header or a series at a time; raises ``_Unsupported``
        (possibly after some chunks) for what only the stock path writes."""
        self._next.clear()
        try:
            yield from self._render(metrics_data)
        finally:  # in place (a few dicts a family): a renderer sharing the cache sees the swap
            self._series.clear()
            self._series.update(self._next)
            self._next.clear()

    def share_cache(self, other: PrometheusText) -> None:
        """Use ``other``'s per-series cache from now on (one set of label strings for two formats).

        A series' sample lines are the same in the text format and in OpenMetrics, so the two
        renderers of a page share one cache. Renders must not run concurrently (the page's lock).
        """
        if other.scope_info_enabled != self.scope_info_enabled:
            raise ValueError("renderers sharing a cache must agree on scope labels")
        self._labels, self._le_values = other._labels, other._le_values
        self._series, self._next = other._series, other._next

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

    def _render(self, md: MetricsData) -> Iterator[str]:
        resource_attrs: dict[str, Any] = {}
        for rm in md.resource_metrics:
            resource_attrs.update(rm.resource.attributes)
        info = {sanitize_attribute(k): _check_value(v) for k, v in resource_attrs.items()}
        info_labels = _label_str(list(info.items()))
        yield "# HELP target_info Target metadata\n# TYPE target_info gauge\n"
        yield f"target_info{{{info_labels}}} 1.0\n" if info_labels else "target_info 1.0\n"
        families: set[str] = set()
        for rm in md.resource_metrics:
            for sm in rm.scope_metrics:
                scope_items = self._scope_items(sm.scope)
                for metric in sm.metrics:
                    yield from self._metric(metric, scope_items, families)

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
        self, metric: Metric, scope_items: tuple[tuple[str, str], ...], families: set[str]
    ) -> Iterator[str]:
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
        families.add(family_id)
        if kind == "counter" and name.endswith("_total"):
            name = name[:-6]
        if unit and not name.endswith("_" + unit):
            name += "_" + unit
        mname = name + "_total" if kind == "counter" else name
        yield self._header(name, mname, kind, description, unit)

        points = data.data_points
        keys = {k for k, _ in scope_items}
        for key_set in {tuple(p.attributes) for p in points}:
            keys.update(self._label(k) for k in key_set)
        label_keys = tuple(sorted(keys))
        context = (name, kind, label_keys, scope_items)
        cache = self._series.get(context, {})
        fresh = self._next.setdefault(context, {})
        if kind == "histogram":
            yield from self._histogram(points, name, scope_items, label_keys, cache, fresh)
            return
        sample = escape_metric_name(mname)
        lines: list[str] = []
        append = lines.append
        for p in points:
            key, prefix = self._lookup(p, cache, fresh)
            if prefix is None:
                labels = self._labels_of(p, scope_items, label_keys)
                prefix = f"{sample}{{{_label_str(labels)}}} " if labels else f"{sample} "
                if key is not None:
                    fresh[key] = prefix
            append(f"{prefix}{_fmt(p.value)}\n")
            if len(lines) >= _LINES_PER_CHUNK:
                yield "".join(lines)
                lines.clear()
        yield "".join(lines)

    def _header(self, name: str, sample: str, kind: str, description: str, unit: str) -> str:
        """The family's HELP and TYPE lines; the text format names a counter by its sample."""
        help_text = description.replace("\\", r"\\").replace("\n", r"\n")
        return (
            f"# HELP {escape_metric_name(sample)} {help_text}\n# TYPE {escape_metric_name(sample)} {kind}\n"
        )

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
    ) -> Iterator[str]:
        names = tuple(escape_metric_name(name + suffix) for suffix in ("_bucket", "_count", "_sum"))
        _, count_name, sum_name = names
        for p in points:
            entry = self._histogram_entry(p, scope_items, label_keys, cache, fresh)
            bounds = p.explicit_bounds
            if entry.bounds is not bounds and entry.bounds != bounds:
                self._set_prefixes(entry, bounds, names)
            text, top = _bucket_lines(entry.head, self._les(bounds), entry.end, p.bucket_counts)
            if entry.with_sum and p.sum is not None:
                text = f"{text}{count_name}{entry.tail}{_fmt(top)}\n{sum_name}{entry.tail}{_fmt(p.sum)}\n"
            yield text

    def _histogram_entry(
        self,
        point: HistogramDataPoint,
        scope_items: tuple[tuple[str, str], ...],
        label_keys: tuple[str, ...],
        cache: dict[Any, Any],
        fresh: dict[Any, Any],
    ) -> _HistogramEntry:
        """The cached entry of ``point``'s series (kept for the next render), or a new one."""
        # The points module hands out the same attributes dict for a series every collection:
        # finding it by identity spares a tuple of its items per point (and the GC runs).
        attributes = point.attributes
        entry = cache.get(id(attributes))
        if entry is None or entry.attributes is not attributes:
            key, entry = self._lookup(point, cache, fresh)
            if entry is None:
                entry = _HistogramEntry(attributes, self._labels_of(point, scope_items, label_keys))
                if key is not None:
                    fresh[key] = entry
            entry.attributes = attributes
        fresh[id(attributes)] = entry
        return entry

    def _set_prefixes(self, entry: _HistogramEntry, bounds: Sequence[float], names: tuple[str, ...]) -> None:
        """Build the pieces of ``entry``'s sample lines for ``bounds``: once per series and bounds."""
        bucket_name = names[0]
        # entry.labels are sorted by key, so "le" goes between the pairs before and after it.
        pairs = [(k, _pair(k, v)) for k, v in entry.labels]
        before = ",".join(p for k, p in pairs if k < "le")
        after = ",".join(p for k, p in pairs if k > "le")  # a user "le" label loses, as in the family
        entry.head = f'{bucket_name}{{{before}{"," if before else ""}le="'
        entry.end = f'"{"," if after else ""}{after}}} '
        entry.tail = f"{{{','.join(p for _, p in pairs)}}} " if pairs else " "
        entry.with_sum = float(self._les(bounds)[0]) >= 0  # below 0 the family drops _sum/_count
        entry.bounds = bounds


def _bucket_lines(head: str, les: Sequence[str], end: str, counts: Sequence[int]) -> tuple[str, Any]:
    """The ``_bucket`` lines of one point (cumulative counts), and its total count."""
    if len(counts) != len(les):  # _convert_buckets zips, stopping at the shorter
        n = min(len(counts), len(les))
        if not n:
            raise _Unsupported("histogram point without buckets")
        les, counts = les[:n], counts[:n]
    cums = list(accumulate(counts))
    top = cums[-1]
    if not (type(top) is int and top < _EXACT_INT and min(counts) >= 0):
        return "".join([f"{head}{le}{end}{_fmt(c)}\n" for le, c in zip(les, cums, strict=True)]), top
    # cums ascend: "<n>.0" below 1e6 without a call per value, Go exponents above.
    k = bisect_left(cums, 1_000_000)
    text = "".join([f"{head}{le}{end}{c}.0\n" for le, c in zip(les[:k], cums[:k], strict=True)])
    if k < len(cums):  # _fmt_int's exponent form, inlined: a call per value costs 30%
        text += "".join(
            [
                f"{head}{le}{end}{(d[0] + '.' + d[1:]).rstrip('0.')}e+{len(d) - 1:02d}\n"
                for le, d in zip(les[k:], map(str, cums[k:]), strict=True)
            ]
        )
    return text, top
