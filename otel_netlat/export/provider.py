"""The MeterProvider: the agent's resource, its instruments, and the injecting readers.

One provider carries the agent's own observable counters (callbacks read the snapshot
pinned for the collection), the collection-duration histogram, the export-failure counter,
and two readers that add the kernel metrics — the latency histogram and the per-series
packet and drop counters, whose series can expire, and the softirq histogram and NAPI
squeeze counter when the softirq stage is on — the Prometheus one behind /metrics and,
when an OTLP endpoint is configured, a periodic one pushing through the guarded exporter.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation
from opentelemetry.sdk.metrics import Histogram, MeterProvider, ObservableCounter, ObservableGauge
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, MetricReader
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_netlat.export.otlp_env import OtlpConfig
from otel_netlat.export.otlp_exporter import GuardedExporter
from otel_netlat.export.pinning import SnapshotSource
from otel_netlat.export.points import (
    SERIES_LIMIT,
    AttributeDicts,
    CounterSpec,
    HistogramSpec,
    KernelCounter,
    KernelHistogram,
    KernelInjection,
    SeriesCap,
)
from otel_netlat.export.readers import BridgedPeriodicReader, BridgedPrometheusReader

SERVICE_NAME = "otel-netlat"
#: otel_scope_name/version/schema_url labels on every series: off. The agent has one scope,
#: so they carry nothing a query could use, yet they add ~40% to each sample line.
SCOPE_LABELS = False
#: The SDK instruments' cardinality limit: the same backstop as the injected histogram's.
LIMITS = {ObservableCounter: SERIES_LIMIT, ObservableGauge: SERIES_LIMIT}

LATENCY = HistogramSpec(
    name="netlat.packet.latency",
    description="Time a packet spent inside the kernel between the start and end hooks of a stage",
    unit="s",
)
#: The NET_RX/NET_TX softirqs (the softirq stage), injected like the latency histogram.
SOFTIRQ = HistogramSpec(
    name="netlat.softirq.duration",
    description="NET_RX/NET_TX softirq durations per CPU: wait (raised to running) and runtime "
    "(entry to exit), by netlat.softirq.vector and netlat.softirq.phase",
    unit="s",
    field="softirq",
)
#: Kernel counters, injected like the histogram (their address series expire).
KERNEL_COUNTERS = (
    CounterSpec("netlat.packets", "Packets that entered a measured stage", "{packet}", "packets"),
    CounterSpec("netlat.packet.drops", "Packets the kernel dropped, by drop reason", "{packet}", "drops"),
    CounterSpec(
        "netlat.napi.squeezed",
        "NAPI polls that used their whole budget: the device had more packets than one poll takes",
        "{poll}",
        "napi_squeezed",
    ),
)
#: Observable gauges: (name, Snapshot field, unit, description).
GAUGES = (
    (
        "netlat.agent.series.live",
        "series",
        "{series}",
        "Address-map entries in use, by stage (each map holds at most --max-series)",
    ),
    (
        "netlat.latency.sample_every",
        "sample_every",
        "{packet}",
        "--latency-sample: one packet in this many is timed at each stage start (the latency "
        "histograms hold about 1/N of netlat.packets; counts are exact)",
    ),
    (
        "netlat.agent.probes",
        "probes",
        "{probe}",
        "Attached hooks: 1 each (0 for a stage this kernel cannot attach)",
    ),
)
#: Observable counters: (name, Snapshot field, unit, description).
COUNTERS = (
    (
        "netlat.agent.ends.unmatched",
        "unmatched",
        "{event}",
        "End events whose object was not a recorded start (e.g. a socket queue tail already drained)",
    ),
    ("netlat.agent.skipped", "skipped", "{packet}", "Packets a hook did not measure, by reason"),
    (
        "netlat.agent.hook.missed",
        "missed",
        "{event}",
        "Hook runs the kernel skipped because a BPF program was already running on that CPU "
        "(events that hook never saw)",
    ),
    (
        "netlat.agent.series.folded",
        "folded",
        "{packet}",
        "Packets folded into the otel.metric.overflow series because the series limit was reached",
    ),
    (
        "netlat.agent.series.expired",
        "expired",
        "{series}",
        "Address-map entries removed because their counts did not change for --series-ttl seconds",
    ),
    (
        "netlat.agent.slow.records",
        "slow_records",
        "{record}",
        "Slow-packet records received from the kernel (--slow-threshold)",
    ),
    (
        "netlat.agent.slow.lost",
        "slow_lost",
        "{record}",
        "Slow-packet records lost: rate_limited (--slow-rate), ring_full (the kernel's ring), "
        "log_export (the OTLP log export dropped them); histograms never depend on them",
    ),
)
COLLECTION_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def build_resource() -> Resource:
    """The agent's resource: our defaults, overridden by OTEL_RESOURCE_ATTRIBUTES/OTEL_SERVICE_NAME.

    ``Resource.create(attrs)`` lets ``attrs`` win over the env, so the env attributes are
    merged over the defaults first; the SDK's ``telemetry.sdk.*`` attributes come with it.
    """
    host = socket.gethostname()
    node = os.environ.get("NODE_NAME") or None
    defaults: dict[str, str] = {
        "service.name": SERVICE_NAME,
        "host.name": host,
        "service.instance.id": node or host,
    }
    if node:
        defaults["k8s.node.name"] = node
    return Resource.create({**defaults, **OTELResourceDetector().detect().attributes})


def instrumentation_scope() -> InstrumentationScope:
    """The agent's one scope, versioned as the installed package."""
    try:
        version = metadata.version("otel-netlat")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return InstrumentationScope("otel_netlat", version)


@dataclass(frozen=True)
class Pipeline:
    """A running MeterProvider and the parts of it the facade drives."""

    provider: MeterProvider
    prometheus: BridgedPrometheusReader
    exporter: GuardedExporter | None
    collection: Any  # the netlat.agent.collection.duration Histogram instrument


class _KernelMetrics:
    """What the readers' kernel metrics share: the agent's start, and one series cap per metric."""

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self.latency = SeriesCap(SERIES_LIMIT)
        self.softirq = SeriesCap(SERIES_LIMIT)
        self.counters = [SeriesCap(SERIES_LIMIT) for _ in KERNEL_COUNTERS]

    def injection(
        self,
        source: SnapshotSource,
        resource: Resource,
        scope: InstrumentationScope,
        temporalities: dict[type, AggregationTemporality],
    ) -> KernelInjection:
        """One reader's kernel metrics, at its temporalities."""
        dicts = AttributeDicts()
        histogram = KernelHistogram(LATENCY, temporalities[Histogram], self.start_ns, self.latency, dicts)
        softirq = KernelHistogram(SOFTIRQ, temporalities[Histogram], self.start_ns, self.softirq, dicts)
        counters = tuple(
            KernelCounter(spec, temporalities[ObservableCounter], self.start_ns, cap, dicts)
            for spec, cap in zip(KERNEL_COUNTERS, self.counters, strict=True)
        )
        # Every kernel metric but the latency histogram goes in `counters` (all are injected
        # alike); one with no points (softirq off) is left out of the collection.
        return KernelInjection(source, resource, scope, histogram, time.time_ns, (*counters, softirq), dicts)


class _FailureCounter:
    """The exporter's ``on_failure``: count on netlat.agent.export.failures, then notify."""

    def __init__(self, notify: Callable[[], None]) -> None:
        self.counter: Any = None  # set once the meter exists (after the exporter)
        self.attributes: dict[str, str] = {}
        self._notify = notify

    def __call__(self) -> None:
        if self.counter is not None:
            self.counter.add(1, self.attributes)
        self._notify()


def build_pipeline(
    source: SnapshotSource,
    otlp: OtlpConfig | None,
    inner: MetricExporter | None,
    on_export_failure: Callable[[], None],
) -> Pipeline:
    """The provider with its readers and instruments; ``inner`` is the SDK OTLP exporter, if any.

    Cumulative points start now: the agent builds this before it loads its programs, so the
    kernel maps are empty at this time.
    """
    resource, scope = build_resource(), instrumentation_scope()
    kernel = _KernelMetrics(time.time_ns())

    def injection(temporalities: dict[type, AggregationTemporality]) -> KernelInjection:
        return kernel.injection(source, resource, scope, temporalities)

    cumulative = AggregationTemporality.CUMULATIVE
    prometheus = BridgedPrometheusReader(
        injection({Histogram: cumulative, ObservableCounter: cumulative}),
        scope_info_enabled=SCOPE_LABELS,
        cardinality_limits=LIMITS,
    )
    readers: list[MetricReader] = [prometheus]
    failures = _FailureCounter(on_export_failure)
    exporter = None
    if inner is not None and otlp is not None:
        exporter = GuardedExporter(inner, otlp, failures)
        exporter.start()
        interval = otlp.interval_ms
        readers.append(
            BridgedPeriodicReader(
                injection(otlp.temporality),
                exporter,
                export_interval_millis=interval,
                cardinality_limits=LIMITS,
            )
        )
    provider = MeterProvider(metric_readers=readers, resource=resource, shutdown_on_exit=False)
    meter = provider.get_meter(scope.name, scope.version, scope.schema_url)
    _observables(meter, source)
    collection = meter.create_histogram(
        "netlat.agent.collection.duration",
        unit="s",
        description="Time to read the kernel maps into one snapshot",
        explicit_bucket_boundaries_advisory=list(COLLECTION_BOUNDS_S),
    )
    if otlp is not None:
        failures.attributes = {"exporter": otlp.exporter_name}
        failures.counter = meter.create_counter(
            "netlat.agent.export.failures", unit="{export}", description="OTLP exports that failed"
        )
        failures.counter.add(0, failures.attributes)  # visible before the first failure
    return Pipeline(provider, prometheus, exporter, collection)


def _observables(meter: Meter, source: SnapshotSource) -> None:
    """The instruments whose values the snapshot carries, read at each collection."""
    for name, field, unit, description in COUNTERS:
        meter.create_observable_counter(name, [_observe(source, field)], unit=unit, description=description)
    # Not a counter: "pending" goes down as entries end. Per stage, the outcomes add up to
    # netlat.packets (the accounting identity), so they share one up-down counter.
    meter.create_observable_up_down_counter(
        "netlat.agent.entries",
        [_observe(source, "entries")],
        unit="{entry}",
        description="Start entries of a stage by outcome: sample, dropped, no_socket, overwritten, "
        "evicted, coalesced, negative, pending; per stage they add up to netlat.packets",
    )
    for name, field, unit, description in GAUGES:
        meter.create_observable_gauge(name, [_observe(source, field)], unit=unit, description=description)


def _observe(source: SnapshotSource, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(p.value, dict(p.attributes)) for p in getattr(source.current(), field)]

    return callback
