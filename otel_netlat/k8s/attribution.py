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
from dataclasses import replace
from typing import Protocol

from otel_netlat.collect.snapshot import Attributes, CounterPoint, HistogramSeries, Snapshot, as_attributes

SRC = "source.address"
DST = "destination.address"
DIRECTION = "network.io.direction"
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


def _relabel(a: Attributes, index: PodLookup, keep_addresses: bool, *, is_drop: bool) -> Attributes:
    d = dict(a)
    if SRC not in d and DST not in d:
        return a
    for address in _local_addresses(d, is_drop=is_drop):
        ip = host_ip(address)
        pod = index.lookup(ip) if ip else None
        if pod is not None:
            d[NAMESPACE], d[POD] = pod
            break
    if not keep_addresses:
        d.pop(SRC, None)
        d.pop(DST, None)
    return as_attributes(d)


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
    """A copy of ``snapshot`` whose latency, packets and drops name local pods.

    Other series (entries, probes, self-metrics) are returned unchanged. Series without
    address attributes (including the overflow series) pass through as they are.
    """

    def flow(a: Attributes) -> Attributes:
        return _relabel(a, index, keep_addresses, is_drop=False)

    def drop(a: Attributes) -> Attributes:
        return _relabel(a, index, keep_addresses, is_drop=True)

    return replace(
        snapshot,
        latency=_merge_hist(snapshot.latency, flow),
        packets=_merge_counters(snapshot.packets, flow),
        drops=_merge_counters(snapshot.drops, drop),
        extra=dict(snapshot.extra),
    )
