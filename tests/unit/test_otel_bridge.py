"""The kernel-histogram bridge against the SDK it imitates.

Kernel-style points (bucket counts slotted the way the BPF program slots them) must come out
exactly like an SDK ``Histogram`` fed the same raw values, on the Prometheus text and in OTLP;
the fast Prometheus renderer must write the stock exporter's bytes; delta conversion,
series cap, snapshot pinning and OTLP request splitting are checked on their own.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import replace

import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.utils import floatToGoString

from otel_netlat.collect.snapshot import CounterPoint, HistogramSeries, Retired, Snapshot, attrs
from otel_netlat.export.expiry import SeriesBook
from otel_netlat.export.otlp_split import estimate_point_size, split_metrics_data
from otel_netlat.export.pinning import SnapshotSource
from otel_netlat.export.points import (
    OVERFLOW_ATTRIBUTES,
    SERIES_LIMIT,
    AttributeDicts,
    CounterSpec,
    HistogramSpec,
    KernelCounter,
    KernelHistogram,
    KernelInjection,
    SeriesCap,
)
from otel_netlat.export.prometheus_text import PrometheusText, _fmt, render_stock
from otel_netlat.export.readers import BridgedPeriodicReader

BOUNDS_NS = tuple(2**k for k in range(10, 30))  # 1.024 µs … 0.54 s, as log2 kernel slots
BOUNDS_S = tuple(b / 1e9 for b in BOUNDS_NS)
SPEC = HistogramSpec("netlat.packet.latency", "Time a packet spent inside the kernel", "s")
SCOPE = InstrumentationScope("otel_netlat", "0.1.0")
RESOURCE = Resource.create({"service.name": "otel-netlat", "host.name": "test"})
RX = attrs(
    netlat__stage="rx", network__type="ipv4", network__transport="tcp", network__io__direction="receive"
)
TX = attrs(
    netlat__stage="tx", network__type="ipv6", network__transport="udp", network__io__direction="transmit"
)
CUMULATIVE, DELTA = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA


def edge_values() -> list[int]:
    """Latencies (ns) on every bound and 1 ns either side, plus both open ends."""
    values = [0, 1, BOUNDS_NS[-1] * 4]
    for b in BOUNDS_NS:
        values += [b - 1, b, b + 1]
    return values


def kernel_series(attributes, values_ns: Sequence[int]) -> HistogramSeries:
    """What the BPF program accumulates: upper-inclusive slots ``(b[i-1], b[i]]``, exact ns sum."""
    counts = [0] * (len(BOUNDS_NS) + 1)
    for v in values_ns:
        counts[bisect_left(BOUNDS_NS, v)] += 1
    return HistogramSeries(attributes, tuple(counts), sum(values_ns), len(values_ns))


def reference_metric(data: dict) -> Metric:
    """An SDK Histogram with the same explicit bounds, fed the raw values in seconds."""
    reader = InMemoryMetricReader()
    view = View(
        instrument_name=SPEC.name, aggregation=ExplicitBucketHistogramAggregation(boundaries=BOUNDS_S)
    )
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE, views=[view], shutdown_on_exit=False)
    histogram = provider.get_meter(SCOPE.name, SCOPE.version).create_histogram(
        SPEC.name, unit=SPEC.unit, description=SPEC.description
    )
    for attributes, values in data.items():
        for v in values:
            histogram.record(v / 1e9, dict(attributes))
    metrics = reader.get_metrics_data()
    provider.shutdown()
    return metrics.resource_metrics[0].scope_metrics[0].metrics[0]


def kernel_metric(data: dict, temporality=CUMULATIVE) -> Metric:
    snapshot = Snapshot(1, BOUNDS_S, latency=tuple(kernel_series(a, v) for a, v in data.items()))
    metric = KernelHistogram(SPEC, temporality, 1_000, SeriesCap()).metric(snapshot, 2_000)
    assert metric is not None
    return metric


def wrap(*metrics: Metric, scope: InstrumentationScope = SCOPE) -> MetricsData:
    return MetricsData([ResourceMetrics(RESOURCE, [ScopeMetrics(scope, list(metrics), "")], "")])


def by_attrs(metric: Metric) -> dict:
    return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}


DATASETS = {
    "edges": {RX: edge_values(), TX: [7, BOUNDS_NS[3], BOUNDS_NS[3] + 1] * 5},
    # Multiples of 1/512 s are exact in binary: float sums equal the exact ns sum.
    "exact": {RX: [1_953_125 * k for k in (1, 2, 3, 64, 129, 256, 1024)]},
}


@pytest.mark.parametrize("name", DATASETS)
def test_points_match_reference_sdk_histogram(name):
    data = DATASETS[name]
    ours, ref = by_attrs(kernel_metric(data)), by_attrs(reference_metric(data))
    assert ours.keys() == ref.keys()
    for key, p in ours.items():
        r = ref[key]
        assert list(p.bucket_counts) == list(r.bucket_counts)
        assert list(p.explicit_bounds) == list(r.explicit_bounds)
        assert p.count == r.count
        assert math.isclose(p.sum, r.sum, rel_tol=1e-9)
        assert p.min is None and p.max is None


@pytest.mark.parametrize("name", DATASETS)
def test_otlp_encoding_matches_reference(name):
    data = DATASETS[name]
    ours = encode_metrics(wrap(kernel_metric(data))).resource_metrics[0].scope_metrics[0].metrics[0]
    ref = encode_metrics(wrap(reference_metric(data))).resource_metrics[0].scope_metrics[0].metrics[0]
    assert ours.histogram.aggregation_temporality == ref.histogram.aggregation_temporality
    assert (ours.name, ours.unit, ours.description) == (ref.name, ref.unit, ref.description)
    ref_points = {
        tuple((kv.key, kv.value.string_value) for kv in p.attributes): p for p in ref.histogram.data_points
    }
    for p in ours.histogram.data_points:
        r = ref_points[tuple((kv.key, kv.value.string_value) for kv in p.attributes)]
        assert not p.HasField("min") and not p.HasField("max")  # absent, not ±inf
        assert math.isclose(p.sum, r.sum, rel_tol=1e-9)
        for field in ("min", "max", "start_time_unix_nano", "time_unix_nano"):
            r.ClearField(field)
            p.ClearField(field)
        p.sum = r.sum
        assert p.SerializeToString(deterministic=True) == r.SerializeToString(deterministic=True)


def family(text: bytes, name: str) -> list[str]:
    """The HELP, TYPE and sample lines of the metric family ``name``."""
    lines = []
    for line in text.decode().splitlines():
        metric = line.split(" ")[2] if line.startswith("#") else line.split("{")[0].split(" ")[0]
        if metric.startswith(name):
            lines.append(line)
    return lines


@pytest.mark.parametrize("name", DATASETS)
def test_prometheus_text_matches_reference(name):
    data = DATASETS[name]
    ours = family(
        PrometheusText(scope_info_enabled=True).render(wrap(kernel_metric(data))), "netlat_packet_latency"
    )
    ref = family(render_stock(wrap(reference_metric(data)), scope_info_enabled=True), "netlat_packet_latency")
    assert len(ours) == len(ref) == 2 + 23 * len(data)  # HELP, TYPE, 21 buckets, _count, _sum
    for a, b in zip(ours, ref, strict=True):
        if "_sum{" in a:  # float sum of seconds vs exact ns sum / 1e9
            head_a, value_a = a.rsplit(" ", 1)
            head_b, value_b = b.rsplit(" ", 1)
            assert head_a == head_b and math.isclose(float(value_a), float(value_b), rel_tol=1e-9)
            if name == "exact":
                assert a == b
        else:
            assert a == b


# ---- the fast renderer writes the stock bytes ----------------------------------------------


def number(attributes, value, **kw) -> NumberDataPoint:
    return NumberDataPoint(attributes=attributes, start_time_unix_nano=1, time_unix_nano=2, value=value, **kw)


def odd_metrics() -> list[Metric]:
    """Everything the exporter's translation does something special with."""
    rng = random.Random(7)
    histogram_points = [
        HistogramDataPoint(
            attributes={"netlat.stage": f"s{i}", "source.address": f"10.0.0.{i}"}
            if i % 3
            else {"netlat.stage": "x"},
            start_time_unix_nano=1,
            time_unix_nano=2,
            count=0,
            sum=rng.random() * 10 ** rng.randrange(-9, 9),
            bucket_counts=tuple(
                rng.choice([0, 1, 999_999, 1_000_000, 123_456_789, 2**53 + 1]) for _ in range(21)
            ),
            explicit_bounds=BOUNDS_S,
            min=None,
            max=None,
        )
        for i in range(20)
    ]
    histogram_points.append(
        HistogramDataPoint({}, 1, 2, 3, 0.5, (1, 2.5, 0), (0.25, 1.0), None, None)  # float count, no labels
    )
    weird = {
        'quote"back\\slash\nnewline': 'v\\a"l\nue',
        "ünïcode.key": "välue ✓",
        "9leading.digit": True,
        "list.value": ["a", 1],
        "a.b": "dotted",
        "a_b": "collides with a.b after sanitising",
        "le": "user le label",
    }
    histogram_points.append(HistogramDataPoint(weird, 1, 2, 1, 0.5, (0, 1, 0), (0.25, 1.0), None, None))
    return [
        Metric(
            "netlat.packet.latency", "Latency\nwith \\ newline", "s", Histogram(histogram_points, CUMULATIVE)
        ),
        Metric(
            "requests_total", "already _total", "{request}", Sum([number({"k": "v"}, 5)], CUMULATIVE, True)
        ),
        Metric("bytes", "", "By", Sum([number(weird, 12_345_678.9), number({}, 2**60)], DELTA, True)),
        Metric(
            "in.flight",
            "non-monotonic cumulative sum → gauge",
            "1",
            Sum([number({"x": "1"}, -3)], CUMULATIVE, False),
        ),
        Metric(
            "temperature",
            "gauge",
            "Cel",
            Gauge([number({"room": "a"}, 21.5), number({"room": "b"}, float("nan"))]),
        ),
        Metric("speed", "rate unit", "m/s", Gauge([number({"x": "y"}, float("inf"))])),
        Metric("lat.ms", "unit already in name", "ms", Gauge([number({"a": "b"}, 1e-7)])),
    ]


def test_number_formatting_is_go_float_formatting():
    rng = random.Random(5)
    values = [*range(0, 2_000_000, 13), *(10**k + d for k in range(17) for d in (-1, 0, 1))]
    values += (
        [rng.randrange(2**53) for _ in range(100_000)]
        + [rng.randrange(10**6) for _ in range(10)]
        + [2**53 - 1, 2**53, 2**60, -5, -(10**15)]
    )
    values += [0.0, 0.5, 1e-05, 12345678.9, 1e22, float("inf"), float("-inf"), float("nan")]
    assert [_fmt(v) for v in values] == [floatToGoString(v) for v in values]
    # The renderer's inlined path, through whole lines: cumulative counts on both sides of 1e6.
    cumulative = sorted(rng.sample([v for v in values if type(v) is int and 0 <= v < 2**53], 21))
    buckets = tuple(b - a for a, b in zip([0, *cumulative], cumulative, strict=False))
    point = HistogramDataPoint({"k": "v"}, 1, 2, 0, 1.5, buckets, BOUNDS_S, None, None)
    md = wrap(Metric("h", "", "s", Histogram([point], CUMULATIVE)))
    assert PrometheusText(scope_info_enabled=False).render(md) == render_stock(md, scope_info_enabled=False)


def test_bucket_lines_format_survives_percent_signs_in_labels():
    """The bucket lines are one %-format a series: a label value's own % must stay text."""
    buckets = (0, 3, 0, 999_000, *(0,) * (len(BOUNDS_S) - 3))
    point = HistogramDataPoint({"k": "100% %d %s %%"}, 1, 2, 999_003, 1.5, buckets, BOUNDS_S, None, None)
    md = wrap(Metric("h", "", "s", Histogram([point], CUMULATIVE)))
    text = PrometheusText(scope_info_enabled=False)
    assert text.render(md) == render_stock(md, scope_info_enabled=False)
    assert text.render(md) == render_stock(md, scope_info_enabled=False)  # the cached format


@pytest.mark.parametrize("scope_info", [False, True])
def test_fast_renderer_writes_stock_bytes(scope_info):
    scope = InstrumentationScope(
        "otel_netlat", "0.1.0", "https://opentelemetry.io/schemas/1.44.0", {"a.b": "c"}
    )
    md = wrap(*odd_metrics(), scope=scope)
    text = PrometheusText(scope_info_enabled=scope_info)
    assert text.render(md) == render_stock(md, scope_info_enabled=scope_info)
    assert text.render(md) == render_stock(md, scope_info_enabled=scope_info)  # from the cache


@pytest.mark.parametrize("same_histogram", [True, False])
def test_fast_renderer_follows_changes_and_forgets_series(same_histogram):
    """Series found by attributes identity (one bridge) or by value (new dicts) render right."""
    text = PrometheusText(scope_info_enabled=False)
    shared = KernelHistogram(SPEC, CUMULATIVE, 1, SeriesCap())
    steps = [
        [kernel_series(RX, [1_000, 2_000_000]), kernel_series(TX, [5])],
        [kernel_series(RX, [1_000, 2_000_000, 3]), kernel_series(TX, [5])],
        [kernel_series(RX, [1_000, 2_000_000, 3])],
    ]
    for series in steps:
        histogram = shared if same_histogram else KernelHistogram(SPEC, CUMULATIVE, 1, SeriesCap())
        md = wrap(histogram.metric(Snapshot(1, BOUNDS_S, tuple(series)), 2))
        assert text.render(md) == render_stock(md, scope_info_enabled=False)
    entries = {id(e) for by_key in text._series.values() for e in by_key.values()}
    assert len(entries) == 1  # the vanished series was dropped


def test_fast_renderer_falls_back_when_two_metrics_share_a_family():
    a = Metric("x", "d", "", Sum([number({"k": "1"}, 1)], CUMULATIVE, True))
    b = Metric("x", "d", "", Sum([number({"k": "2"}, 2)], CUMULATIVE, True))
    md = MetricsData(
        [
            ResourceMetrics(
                RESOURCE, [ScopeMetrics(SCOPE, [a], ""), ScopeMetrics(InstrumentationScope("o"), [b], "")], ""
            )
        ]
    )
    assert PrometheusText(scope_info_enabled=False).render(md) == render_stock(md, scope_info_enabled=False)


# ---- delta -----------------------------------------------------------------------------------


def test_deltas_add_up_to_the_final_cumulative():
    rng = random.Random(1)
    values: dict = {RX: [], TX: []}
    histogram = KernelHistogram(SPEC, DELTA, 1_000, SeriesCap())
    totals: dict = {}
    last_time = 1_000
    for step in range(12):
        for key in values:
            if step % 4 != 3 or key is RX:  # TX idles every 4th step: it must not report then
                values[key] += [rng.randrange(1, 2**31) for _ in range(rng.randrange(0, 50))]
        snapshot = Snapshot(step, BOUNDS_S, tuple(kernel_series(a, v) for a, v in values.items() if v))
        now = 2_000 + step * 1_000
        metric = histogram.metric(snapshot, now)
        for p in metric.data.data_points if metric else ():
            assert metric.data.aggregation_temporality is DELTA
            assert (p.start_time_unix_nano, p.time_unix_nano) == (last_time, now)
            assert p.count > 0
            key = tuple(sorted(p.attributes.items()))
            counts, total, count = totals.get(key, ([0] * 21, 0.0, 0))
            totals[key] = (
                [a + b for a, b in zip(counts, p.bucket_counts, strict=True)],
                total + p.sum,
                count + p.count,
            )
        last_time = now
    final = by_attrs(kernel_metric(values))
    assert totals.keys() == final.keys()
    for key, (counts, total, count) in totals.items():
        assert counts == list(final[key].bucket_counts)
        assert count == final[key].count
        assert math.isclose(total, final[key].sum, rel_tol=1e-9)


def test_delta_reports_a_reset_series_whole():
    histogram = KernelHistogram(SPEC, DELTA, 0, SeriesCap())
    histogram.metric(Snapshot(1, BOUNDS_S, (kernel_series(RX, [5, 6, 7]),)), 10)
    metric = histogram.metric(Snapshot(2, BOUNDS_S, (kernel_series(RX, [5]),)), 20)
    (point,) = metric.data.data_points
    assert point.count == 1 and point.start_time_unix_nano == 10
    assert histogram.metric(Snapshot(3, BOUNDS_S, (kernel_series(RX, [5]),)), 30) is None  # no change


# ---- series cap --------------------------------------------------------------------------------


def test_series_cap_folds_the_rest_into_the_overflow_series():
    cap = SeriesCap(limit=3)
    series = [kernel_series(attrs(netlat__stage=f"s{i}"), [1_000 * (i + 1)] * (i + 1)) for i in range(5)]
    series.append(kernel_series(OVERFLOW_ATTRIBUTES, [7]))  # the kernel's own overflow series
    kept = cap.apply(series)
    assert [s.attributes for s in kept][:3] == [s.attributes for s in series[:3]]
    overflow = kept[3]
    assert len(kept) == 4 and overflow.attributes == OVERFLOW_ATTRIBUTES
    assert overflow.count == 4 + 5 + 1
    assert overflow.sum_ns == 4 * 4_000 + 5 * 5_000 + 7
    # Admission persists: a new series arriving first later does not evict an admitted one.
    kept = cap.apply([series[4], series[0], series[1], series[2]])
    assert [s.attributes for s in kept] == [s.attributes for s in series[:3]] + [OVERFLOW_ATTRIBUTES]


def test_series_cap_counts_live_series_only():
    """A series gone from the snapshot has expired: its place goes to the next new series."""
    cap = SeriesCap(limit=2)
    a, b, c = (kernel_series(attrs(netlat__stage=n), [1_000]) for n in "abc")
    assert [s.attributes for s in cap.apply([a, b, c])] == [a.attributes, b.attributes, OVERFLOW_ATTRIBUTES]
    assert [s.attributes for s in cap.apply([b, c])] == [b.attributes, c.attributes]  # a expired
    assert [s.attributes for s in cap.apply([a, b, c])][:2] == [b.attributes, c.attributes]  # a: new, last


# ---- series that expire and come back ----------------------------------------------------------


def test_cumulative_points_start_when_their_series_started():
    histogram = KernelHistogram(SPEC, CUMULATIVE, 1_000, SeriesCap())
    again = replace(kernel_series(TX, [5]), start_ns=1_500)
    metric = histogram.metric(Snapshot(1, BOUNDS_S, (kernel_series(RX, [5]), again)), 2_000)
    assert [p.start_time_unix_nano for p in metric.data.data_points] == [1_000, 1_500]


def test_delta_reports_a_series_that_started_again_whole():
    """Back after expiring, with more than it had: a delta from zero, not from its old counts."""
    histogram = KernelHistogram(SPEC, DELTA, 0, SeriesCap())
    histogram.metric(Snapshot(1, BOUNDS_S, (kernel_series(RX, [5]),)), 10)
    histogram.metric(Snapshot(2, BOUNDS_S, ()), 20)  # expired
    back = replace(kernel_series(RX, [5, 6, 7]), start_ns=25)
    (point,) = histogram.metric(Snapshot(3, BOUNDS_S, (back,)), 30).data.data_points
    assert point.count == 3
    histogram.metric(Snapshot(4, BOUNDS_S, (kernel_series(RX, [5]),)), 40)
    again = replace(kernel_series(RX, [5, 6, 7, 8]), start_ns=45)  # gone and back between two exports
    (point,) = histogram.metric(Snapshot(5, BOUNDS_S, (again,)), 50).data.data_points
    assert point.count == 4


PACKETS = CounterSpec("netlat.packets", "Packets that entered a measured stage", "{packet}", "packets")


def counter_of(temporality, start_ns: int = 1_000, limit: int = SERIES_LIMIT) -> KernelCounter:
    return KernelCounter(PACKETS, temporality, start_ns, SeriesCap(limit), AttributeDicts())


def counter_points(counter: KernelCounter, snapshot: Snapshot, now_ns: int) -> dict:
    metric = counter.metric(snapshot, now_ns)
    if metric is None:
        return {}
    assert metric.data.is_monotonic and metric.data.aggregation_temporality is counter.temporality
    return {
        tuple(sorted(p.attributes.items())): (p.value, p.start_time_unix_nano)
        for p in metric.data.data_points
    }


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA])
def test_injected_counters_match_the_sdk_observable_counter(temporality):
    """What the SDK made of the same values through an observable counter (the former path)."""
    steps = [{RX: 5, TX: 1}, {RX: 9, TX: 1}, {RX: 12, TX: 4}]
    state = {"values": steps[0]}
    reader = InMemoryMetricReader(preferred_temporality={ObservableCounter: temporality})
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE, shutdown_on_exit=False)
    provider.get_meter(SCOPE.name).create_observable_counter(
        PACKETS.name,
        [lambda options: [Observation(v, dict(a)) for a, v in state["values"].items()]],
        unit=PACKETS.unit,
        description=PACKETS.description,
    )
    counter = counter_of(temporality)
    for values in steps:
        state["values"] = values
        (sdk,) = reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics
        snapshot = Snapshot(1, BOUNDS_S, packets=tuple(CounterPoint(a, v) for a, v in values.items()))
        ours = counter.metric(snapshot, 2_000)
        assert (ours.name, ours.description, ours.unit) == (sdk.name, sdk.description, sdk.unit)
        assert (ours.data.is_monotonic, ours.data.aggregation_temporality) == (True, temporality)
        sdk_values = {tuple(sorted(p.attributes.items())): p.value for p in sdk.data.data_points}
        our_values = {tuple(sorted(p.attributes.items())): p.value for p in ours.data.data_points}
        assert our_values == {a: v for a, v in sdk_values.items() if v}  # the SDK also sends 0 deltas
    provider.shutdown()


def test_a_counter_series_that_comes_back_starts_afresh():
    cumulative, delta = counter_of(CUMULATIVE, 1_000), counter_of(DELTA, 1_000)
    before = Snapshot(1, BOUNDS_S, packets=(CounterPoint(RX, 5), CounterPoint(TX, 9)))
    gone = Snapshot(2, BOUNDS_S, packets=(CounterPoint(RX, 6),))
    back = Snapshot(3, BOUNDS_S, packets=(CounterPoint(RX, 7), CounterPoint(TX, 2, start_ns=2_500)))
    assert counter_points(cumulative, before, 2_000)[TX] == (9, 1_000)
    assert TX not in counter_points(cumulative, gone, 3_000)
    assert counter_points(cumulative, back, 4_000)[TX] == (2, 2_500)  # its own start, from zero
    assert counter_points(delta, before, 2_000)[TX] == (9, 1_000)
    assert TX not in counter_points(delta, gone, 3_000)
    assert counter_points(delta, back, 4_000) == {RX: (1, 3_000), TX: (2, 3_000)}  # not 2 - 9
    again = Snapshot(4, BOUNDS_S, packets=(CounterPoint(RX, 7), CounterPoint(TX, 12, start_ns=4_500)))
    assert counter_points(delta, again, 5_000) == {TX: (12, 4_000)}  # gone and back between two exports


def test_counter_series_beyond_the_cap_fold_into_overflow():
    counter = counter_of(CUMULATIVE, limit=2)
    points = [CounterPoint(attrs(netlat__stage=n), v) for n, v in (("a", 1), ("b", 2), ("c", 3), ("d", 4))]
    got = counter_points(counter, Snapshot(1, BOUNDS_S, packets=tuple(points)), 2)
    assert {a: v for a, (v, _) in got.items()} == {
        points[0].attributes: 1,
        points[1].attributes: 2,
        OVERFLOW_ATTRIBUTES: 7,
    }


# ---- expiry: carried counts, idle series, start times (export/expiry.py) -----------------------

S = 1_000_000_000  # ns


def at(t_s: float, flows=(), drops=(), retired=(), retired_drops=(), duration_s: float = 0.0) -> Snapshot:
    """A snapshot at ``t_s`` seconds: flows are (attributes, packets) pairs, one sample each."""
    return Snapshot(
        int(t_s * S),
        BOUNDS_S,
        latency=tuple(kernel_series(a, [1_000] * n) for a, n in flows),
        packets=tuple(CounterPoint(a, n) for a, n in flows),
        drops=tuple(CounterPoint(a, n) for a, n in drops),
        collection_duration_s=duration_s,
        retired=Retired(
            latency=tuple(kernel_series(a, [1_000] * n) for a, n in retired),
            packets=tuple(CounterPoint(a, n) for a, n in retired),
            drops=tuple(CounterPoint(a, n) for a, n in retired_drops),
        ),
    )


def step(book: SeriesBook, snapshot: Snapshot) -> Snapshot:
    """The book's view of ``snapshot``, its idle clock at the snapshot's time."""
    return book.apply(snapshot, now_ns=snapshot.taken_at_ns)


def shown(snapshot: Snapshot) -> dict:
    """attributes → (packets, latency count, start) of the flows; drops as attributes → (value, start)."""
    counts = {s.attributes: (s.count, s.start_ns) for s in snapshot.latency}
    flows = {p.attributes: (p.value, *counts[p.attributes]) for p in snapshot.packets}
    return flows | {("drop", p.attributes): (p.value, p.start_ns) for p in snapshot.drops}


def test_removed_entries_counts_carry_on_until_the_series_expires():
    book = SeriesBook(ttl_s=10)
    assert shown(step(book, at(0, [(RX, 3)]))) == {RX: (3, 3, 0)}  # in the first read: the agent's start
    # The reader's clock (the start of its read) is a little ahead of the snapshot's: the entry
    # may go first. Its counts are carried...
    assert shown(step(book, at(9.99, retired=[(RX, 3)]))) == {RX: (3, 3, 0)}
    assert shown(step(book, at(10))) == {}  # ...until the series has idled 10 s too
    assert len(book) == 0


def test_a_series_expires_with_its_last_entry():
    book = SeriesBook(ttl_s=10)
    step(book, at(0, [(RX, 3)]))
    assert shown(step(book, at(12, retired=[(RX, 3)]))) == {}
    assert len(book) == 0


def test_a_series_fed_by_a_live_entry_never_expires():
    book = SeriesBook(ttl_s=10)
    step(book, at(0, [(RX, 3)]))
    assert shown(step(book, at(60, [(RX, 3)]))) == {RX: (3, 3, 0)}  # the kernel has not removed it yet


def test_a_series_that_comes_back_starts_afresh():
    book = SeriesBook(ttl_s=10)
    step(book, at(0, [(RX, 3)]))
    step(book, at(12, retired=[(RX, 3)]))
    step(book, at(13, duration_s=0.5))
    # Back: counted from zero in a new entry, started no later than the read that missed it.
    assert shown(step(book, at(14, [(RX, 1)]))) == {RX: (1, 1, int(12.5 * S))}


def test_carry_and_live_entries_of_one_series_add_up():
    """After pod attribution one series has many entries; one removed changes nothing shown."""
    book = SeriesBook(ttl_s=10)
    step(book, at(0, [(RX, 5)]))  # two entries, merged by attribution: 2 + 3
    assert shown(step(book, at(11, [(RX, 3)], retired=[(RX, 2)]))) == {RX: (5, 5, 0)}
    assert shown(step(book, at(12, [(RX, 4)]))) == {RX: (6, 6, 0)}
    assert shown(step(book, at(21, retired=[(RX, 4)]))) == {RX: (6, 6, 0)}  # idle since 12 s, carried
    assert shown(step(book, at(22))) == {}


def test_a_series_whose_counts_go_down_gets_a_new_start():
    """A pod IP reused by another pod takes its entry's counts along: a new cumulative series."""
    book = SeriesBook(ttl_s=10)
    step(book, at(0, [(RX, 5)]))
    step(book, at(1, [(RX, 5)], duration_s=0.25))
    assert shown(step(book, at(2, [(RX, 2)]))) == {RX: (2, 2, int(0.75 * S))}


def test_drops_expire_and_overflow_never_does():
    book = SeriesBook(ttl_s=10)
    drop = attrs(netlat__drop__reason="NO_SOCKET", source__address="10.0.0.1/32")
    step(book, at(0, [(OVERFLOW_ATTRIBUTES, 4)], drops=[(drop, 2)]))
    assert shown(step(book, at(9, [(OVERFLOW_ATTRIBUTES, 4)], retired_drops=[(drop, 2)]))) == {
        OVERFLOW_ATTRIBUTES: (4, 4, 0),
        ("drop", drop): (2, 0),
    }
    assert shown(step(book, at(60, [(OVERFLOW_ATTRIBUTES, 4)]))) == {OVERFLOW_ATTRIBUTES: (4, 4, 0)}


# ---- readers -----------------------------------------------------------------------------------


class Capture(MetricExporter):
    def __init__(self, temporality=CUMULATIVE):
        super().__init__(preferred_temporality={k: temporality for k in _instrument_classes()})
        self.exports: list[MetricsData] = []

    def export(self, metrics_data, timeout_millis=10_000, **kwargs):
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis=10_000):
        return True

    def shutdown(self, timeout_millis=30_000, **kwargs):
        pass


def _instrument_classes():
    from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter

    return (Counter, Histogram, ObservableCounter)


def provider_with(latest, temporality=CUMULATIVE, with_counter=True):
    source = SnapshotSource(latest)
    histogram = KernelHistogram(SPEC, temporality, 1, SeriesCap())
    exporter = Capture(temporality)
    injection = KernelInjection(source, RESOURCE, SCOPE, histogram, lambda: 5)
    reader = BridgedPeriodicReader(injection, exporter, export_interval_millis=math.inf)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE, shutdown_on_exit=False)
    if with_counter:
        meter = provider.get_meter(SCOPE.name, SCOPE.version)
        meter.create_observable_counter(
            "netlat.packets",
            [lambda options: [Observation(p.value, dict(p.attributes)) for p in source.current().packets]],
        )
    return provider, exporter


def test_one_collection_sees_one_snapshot():
    reads = []

    def latest() -> Snapshot:  # every call returns a newer snapshot
        n = len(reads) + 1
        reads.append(n)
        series = kernel_series(RX, [1_000] * n)
        return Snapshot(n, BOUNDS_S, (series,), packets=(CounterPoint(RX, n),))

    provider, exporter = provider_with(latest)
    for _ in range(3):
        provider.force_flush()
    provider.shutdown()
    for md in exporter.exports:
        (sm,) = md.resource_metrics[0].scope_metrics
        assert sm.scope == SCOPE  # injected into the meter's own scope
        metrics = {m.name: m for m in sm.metrics}
        (packets,) = metrics["netlat.packets"].data.data_points
        (latency,) = metrics[SPEC.name].data.data_points
        assert packets.value == latency.count  # same snapshot for the callback and the histogram


def test_histogram_is_delivered_when_the_sdk_has_nothing():
    snapshot = Snapshot(1, BOUNDS_S, (kernel_series(RX, [1_000]),))
    provider, exporter = provider_with(lambda: snapshot, with_counter=False)
    provider.force_flush()
    provider.shutdown()
    (md, *_) = exporter.exports
    (metric,) = md.resource_metrics[0].scope_metrics[0].metrics
    assert metric.name == SPEC.name and md.resource_metrics[0].resource is RESOURCE


def test_delta_reader_exports_injected_deltas():
    state = {"n": 1}

    def latest():
        return Snapshot(1, BOUNDS_S, (kernel_series(RX, [1_000] * state["n"]),))

    provider, exporter = provider_with(latest, temporality=DELTA, with_counter=False)
    provider.force_flush()
    state["n"] = 4
    provider.force_flush()
    provider.shutdown()
    counts = [
        md.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0].count
        for md in exporter.exports[:2]
    ]
    assert counts == [1, 3]


# ---- OTLP request splitting --------------------------------------------------------------------


def test_ten_thousand_series_split_into_requests_under_4_mib():
    rng = random.Random(3)
    series = tuple(
        HistogramSeries(
            attrs(
                netlat__stage=f"stage-{i % 5}",
                network__type="ipv6",
                network__transport="tcp",
                network__io__direction="receive",
                source__address=f"fd00:1234:5678:9abc:def0:{i // 65536:x}:{i % 65536:x}:1",
                destination__address="fd00:1234:5678:9abc:def0:ffff:ffff:ffff",
            ),
            tuple(rng.randrange(2**40) for _ in range(21)),
            rng.randrange(2**60),
            rng.randrange(2**40),
        )
        for i in range(10_000)
    )
    metric = KernelHistogram(SPEC, CUMULATIVE, 1, SeriesCap()).metric(Snapshot(1, BOUNDS_S, series), 2)
    md = wrap(metric)
    whole = encode_metrics(md).ByteSize()
    assert whole > 4 * 2**20  # unsplit, this would be refused by a default Collector
    chunks = split_metrics_data(md)
    sizes = [encode_metrics(c).ByteSize() for c in chunks]
    assert len(chunks) > 1 and max(sizes) < 4 * 2**20
    points = [p for c in chunks for p in c.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points]
    assert points == list(metric.data.data_points)
    for p in points[::500]:  # the size estimate is never optimistic
        one = replace(metric, data=replace(metric.data, data_points=[p]))
        encoded = (
            encode_metrics(wrap(one)).resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
        )
        assert estimate_point_size(p) >= encoded.ByteSize() + 4


def test_split_keeps_every_metric_and_scope():
    md = wrap(*odd_metrics())
    chunks = split_metrics_data(md, budget=2_000)
    assert len(chunks) > 3
    names = [
        m.name for c in chunks for rm in c.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    ]
    assert set(names) == {m.name for m in odd_metrics()}
    total = sum(
        len(m.data.data_points) for c in chunks for m in c.resource_metrics[0].scope_metrics[0].metrics
    )
    assert total == sum(len(m.data.data_points) for m in odd_metrics())
