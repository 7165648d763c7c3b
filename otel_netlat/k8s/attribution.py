"""Name the pod behind a packet's local address: add ``k8s.namespace.name``/``k8s.pod.name``.

Works on :class:`~otel_netlat.collect.snapshot.Snapshot` values only (no kernel, no API calls), so
it is a pure function of a snapshot and a pod lookup. It applies to series that carry
``source.address``/``destination.address`` — the opt-in address-labelled kernel maps. The
*local* end is the one a pod on this node can own: the destination of received packets, the
source of transmitted ones; drops carry no direction, so their destination is tried first,
then their source. Addresses are prefixes ("10.1.2.3/32"); only a full-length prefix names
a single host, so an aggregated prefix ("10.1.2.0/24") is never attributed.

With ``keep_addresses=False`` the address attributes are removed and series that become
identical are merged (buckets, sums, counts and counter values added), which trades
per-address detail for per-pod series and bounds cardinality by the number of pods.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from otel_netlat.collect.snapshot import (
    Attributes,
    CounterPoint,
    HistogramSeries,
    Retired,
    SlowRecord,
    Snapshot,
    as_attributes,
)
from otel_netlat.stages.table import ALL_STAGES

SRC = "source.address"
DST = "destination.address"
DIRECTION = "network.io.direction"
STAGE_DIRECTIONS = {s.name: s.direction for s in ALL_STAGES}
NAMESPACE = "k8s.namespace.name"
POD = "k8s.pod.name"


class PodLookup(Protocol):
    """What attribution needs from :class:`~otel_netlat.k8s.pods.PodIndex`."""

    def lookup(self, ip: str) -> tuple[str, str] | None: ...


def host_ip(address: str | None) -> str | None:
    """The IP of a full-length prefix ("10.1.2.3/32" → "10.1.2.3"), else None.

    The result is in canonical form (compressed IPv6), the form the pod index keys by.
    """
    if not address:
        return None
    try:
        net = ipaddress.ip_network(address, strict=False)
    except ValueError:
        return None
    if net.prefixlen != net.max_prefixlen:
        return None
    return str(net.network_address)


def _local_addresses(d: dict[str, str], *, is_drop: bool) -> tuple[str | None, ...]:
    if is_drop:
        return (d.get(DST), d.get(SRC))
    direction = d.get(DIRECTION)
    if direction == "receive":
        return (d.get(DST),)
    if direction == "transmit":
        return (d.get(SRC),)
    return ()


def _relabel(a: Attributes, pod: tuple[str, str] | None, keep_addresses: bool) -> Attributes:
    d = dict(a)
    if pod is not None:
        d[NAMESPACE], d[POD] = pod
    if not keep_addresses:
        d.pop(SRC, None)
        d.pop(DST, None)
    return as_attributes(d)


@dataclass(frozen=True)
class _Relabelled:
    """One series' relabelling: its local IPs (parsed once), the pods they had, the result."""

    ips: tuple[str, ...]
    pods: tuple[tuple[str, str] | None, ...]
    attributes: Attributes


class Attributor:
    """:func:`attribute` for the run loop, which sees the same series snapshot after snapshot.

    Each series' local addresses are parsed once, and its new attributes are reused while
    the pods of those addresses stay the same; only what the last snapshot used is kept,
    so the cache is bounded by the live series.
    """

    def __init__(self, index: PodLookup, *, keep_addresses: bool) -> None:
        self.index = index
        self.keep_addresses = keep_addresses
        self._done: dict[tuple[Attributes, bool], _Relabelled] = {}
        self._next: dict[tuple[Attributes, bool], _Relabelled] = {}

    def _relabel(self, a: Attributes, is_drop: bool) -> Attributes:
        key = (a, is_drop)
        done = self._next.get(key) or self._done.get(key)
        if done is None:
            d = dict(a)
            if SRC not in d and DST not in d:
                return a
            ips = tuple(ip for ip in map(host_ip, _local_addresses(d, is_drop=is_drop)) if ip)
        else:
            ips = done.ips
        pods = tuple(self.index.lookup(ip) for ip in ips)
        if done is None or done.pods != pods:
            pod = next((p for p in pods if p is not None), None)
            done = _Relabelled(ips, pods, _relabel(a, pod, self.keep_addresses))
        self._next[key] = done
        return done.attributes

    def record_pod(self, record: SlowRecord) -> SlowRecord:
        """The slow record with the pod of its local end (by its stage's direction; a custom
        stage's: whichever end is a pod)."""
        if record.pod:
            return record
        direction = STAGE_DIRECTIONS.get(record.stage)
        ends = {
            "receive": (record.destination_address,),
            "transmit": (record.source_address,),
        }.get(direction or "", (record.destination_address, record.source_address))
        for ip in ends:
            pod = self.index.lookup(ip) if ip else None
            if pod is not None:
                return replace(record, pod=((NAMESPACE, pod[0]), (POD, pod[1])))
        return record

    def __call__(self, snapshot: Snapshot) -> Snapshot:
        """A copy of ``snapshot`` whose latency, packets and drops name local pods.

        Other series (entries, probes, self-metrics) are returned unchanged. Series without
        address attributes (including the overflow series) pass through as they are. The
        last counts of address-map entries removed in this read (``retired``) are
        attributed alike, so that they go on counting in the series they fed.
        """
        self._next = {}

        def flow(a: Attributes) -> Attributes:
            return self._relabel(a, False)

        def drop(a: Attributes) -> Attributes:
            return self._relabel(a, True)

        retired = snapshot.retired
        try:
            return replace(
                snapshot,
                latency=_merge_hist(snapshot.latency, flow),
                packets=_merge_counters(snapshot.packets, flow),
                drops=_merge_counters(snapshot.drops, drop),
                extra=dict(snapshot.extra),
                slow=tuple(self.record_pod(r) for r in snapshot.slow),
                retired=Retired(
                    latency=_merge_hist(retired.latency, flow),
                    packets=_merge_counters(retired.packets, flow),
                    drops=_merge_counters(retired.drops, drop),
                ),
            )
        finally:
            self._done, self._next = self._next, {}


def _merge_hist(series: Iterable[HistogramSeries], relabel: Callable[[Attributes], Attributes]):
    out: dict[Attributes, HistogramSeries] = {}
    for s in series:
        a = relabel(s.attributes)
        prev = out.get(a)
        if prev is None:
            out[a] = replace(s, attributes=a)
        else:
            out[a] = HistogramSeries(
                a,
                tuple(x + y for x, y in zip(prev.bucket_counts, s.bucket_counts, strict=True)),
                prev.sum_ns + s.sum_ns,
                prev.count + s.count,
            )
    return tuple(out.values())


def _merge_counters(points: Iterable[CounterPoint], relabel: Callable[[Attributes], Attributes]):
    out: dict[Attributes, int] = {}
    for p in points:
        a = relabel(p.attributes)
        out[a] = out.get(a, 0) + p.value
    return tuple(CounterPoint(a, v) for a, v in out.items())


def attribute(snapshot: Snapshot, index: PodLookup, *, keep_addresses: bool = True) -> Snapshot:
    """A copy of ``snapshot`` whose latency, packets and drops name local pods (see :class:`Attributor`)."""
    return Attributor(index, keep_addresses=keep_addresses)(snapshot)
