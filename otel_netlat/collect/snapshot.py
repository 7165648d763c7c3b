"""Plain immutable data read from the kernel maps once per collection interval.

Everything above this module (OpenTelemetry, ``watch``) reads snapshots; nothing below
it knows about OpenTelemetry. Tests can build snapshots by hand, without a kernel.
All values are cumulative: since the agent started, or — for a series of the address maps,
which expire (``--series-ttl``) — since the series (re)appeared, its ``start_ns``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Attributes = tuple[tuple[str, str], ...]
"""Sorted (key, value) pairs: hashable, comparable, and easy to turn into a dict."""


def attrs(**kwargs: str) -> Attributes:
    """Build :data:`Attributes` from keyword arguments whose names use ``_`` for ``.``."""
    return tuple(sorted((k.replace("__", "."), v) for k, v in kwargs.items()))


def as_attributes(mapping: dict[str, str]) -> Attributes:
    """Build :data:`Attributes` from a mapping with dotted keys."""
    return tuple(sorted(mapping.items()))


@dataclass(frozen=True)
class HistogramSeries:
    """One kernel histogram: counts per explicit bucket (``len(bounds) + 1`` of them).

    ``bucket_counts[i]`` counts values in ``(bounds[i-1], bounds[i]]``; the last one is
    ``(bounds[-1], +Inf)``. ``sum_ns`` is the exact sum of the latencies in nanoseconds.
    ``start_ns`` is when its cumulative counts started; 0 means when the agent started.
    """

    attributes: Attributes
    bucket_counts: tuple[int, ...]
    sum_ns: int
    count: int
    start_ns: int = 0

    @property
    def sum_seconds(self) -> float:
        return self.sum_ns / 1e9


@dataclass(frozen=True)
class CounterPoint:
    """One monotonic counter value with its attributes (``start_ns`` as in HistogramSeries)."""

    attributes: Attributes
    value: int
    start_ns: int = 0


@dataclass(frozen=True)
class Retired:
    """The last counts of address-map entries removed in this read because they idled.

    Their series may still be exported (other entries feed it after pod attribution, or it
    has not idled long enough there yet): the exporter adds these counts to it for as long
    as it lives, so that its cumulative values never go down.
    """

    latency: tuple[HistogramSeries, ...] = ()
    packets: tuple[CounterPoint, ...] = ()
    drops: tuple[CounterPoint, ...] = ()


@dataclass(frozen=True)
class SlowRecord:
    """One sample over --slow-threshold, as the kernel wrote it to the ring buffer.

    The kernel reads the 5-tuple from the packet when the sample ends; ports are 0 for
    transports without them. ``pod`` holds ``k8s.pod.name`` / ``k8s.namespace.name`` of the
    local end when pod attribution is on (added above the collect layer).
    """

    stage: str
    latency_ns: int
    time_unix_ns: int
    cpu: int
    network_type: str  # "ipv4" | "ipv6"
    transport: str  # "tcp" | "udp" | "icmp" | "other"
    source_address: str
    source_port: int
    destination_address: str
    destination_port: int
    ifindex: int
    netns: int  # the namespace inode; 0 when the packet had no device
    pod: Attributes = ()
    #: A random 128-bit ID given when the record is read: its exemplar and its log record
    #: carry it as trace_id/span_id, the one link both OpenMetrics exemplars (through the
    #: Collector) and log backends keep. It names the record, not a distributed trace. 0: none.
    record_id: int = 0

    @property
    def latency_s(self) -> float:
        return self.latency_ns / 1e9

    @property
    def trace_id(self) -> int | None:
        """The record ID as a trace ID (128 bits), or None without one."""
        return self.record_id or None

    @property
    def span_id(self) -> int | None:
        """The record ID's low 64 bits as a span ID (never 0: the reader sets bit 0)."""
        return self.record_id & 0xFFFF_FFFF_FFFF_FFFF or None

    def attributes(self) -> dict[str, str | int]:
        """OpenTelemetry semantic-convention attributes (exemplars, log records, --json)."""
        out: dict[str, str | int] = {
            "netlat.stage": self.stage,
            "network.type": self.network_type,
            "network.transport": self.transport,
            "source.address": self.source_address,
            "destination.address": self.destination_address,
            "cpu.logical_number": self.cpu,
            "network.interface.index": self.ifindex,
            "netlat.netns.inode": self.netns,
        }
        if self.source_port or self.destination_port:
            out["source.port"] = self.source_port
            out["destination.port"] = self.destination_port
        out.update(self.pod)
        return out


@dataclass(frozen=True)
class Snapshot:
    """Everything the agent exports, read at one moment.

    ``bounds_s`` are the explicit histogram bounds in seconds, shared by every latency
    series (the kernel slots values with exactly these bounds). ``series`` is the number of
    address-map entries in use per stage, ``expired`` the entries removed so far because
    they idled; ``retired`` the last counts of those removed in this read.
    """

    taken_at_ns: int
    bounds_s: tuple[float, ...]
    latency: tuple[HistogramSeries, ...] = ()
    packets: tuple[CounterPoint, ...] = ()
    drops: tuple[CounterPoint, ...] = ()
    entries: tuple[CounterPoint, ...] = ()
    unmatched: tuple[CounterPoint, ...] = ()
    skipped: tuple[CounterPoint, ...] = ()
    folded: tuple[CounterPoint, ...] = ()
    probes: tuple[CounterPoint, ...] = ()
    #: --latency-sample N: one point, N (1: every packet timed).
    sample_every: tuple[CounterPoint, ...] = ()
    missed: tuple[CounterPoint, ...] = ()
    collection_duration_s: float = 0.0
    extra: dict[str, int] = field(default_factory=dict, compare=False)
    series: tuple[CounterPoint, ...] = ()
    expired: tuple[CounterPoint, ...] = ()
    retired: Retired = Retired()
    #: The newest slow records, oldest first (--slow-threshold; empty when off).
    slow: tuple[SlowRecord, ...] = ()
    #: Slow records lost, by reason (rate_limited, ring_full, log_export), cumulative.
    slow_lost: tuple[CounterPoint, ...] = ()
    #: Slow records received from the kernel, cumulative (one point; empty when off).
    slow_records: tuple[CounterPoint, ...] = ()
    #: NET_RX/NET_TX softirq durations (``netlat.softirq.vector`` net_rx | net_tx,
    #: ``netlat.softirq.phase`` wait = raise → entry | runtime = entry → exit), in the
    #: latency bounds; empty when the softirq stage is off.
    softirq: tuple[HistogramSeries, ...] = ()
    #: NAPI polls that used their whole budget (time squeeze); empty when softirq is off.
    napi_squeezed: tuple[CounterPoint, ...] = ()

    def latency_by(self, **match: str) -> list[HistogramSeries]:
        """Latency series whose attributes include every ``key=value`` given (``_`` → ``.``)."""
        want = {k.replace("__", "."): v for k, v in match.items()}
        return [s for s in self.latency if want.items() <= dict(s.attributes).items()]


def empty_snapshot(bounds_s: tuple[float, ...]) -> Snapshot:
    """The snapshot served before the first read of the maps."""
    return Snapshot(taken_at_ns=0, bounds_s=bounds_s)
