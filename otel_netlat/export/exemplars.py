"""Slow records → the exemplars of each latency histogram bucket.

A bucket's exemplar is the newest slow record that fell in it *and* belongs to the series:
same stage, network type and transport, and — for address-labelled or pod-attributed
series — source/destination inside the series' prefixes and the same pod. Built once per
snapshot, so a scrape of thousands of series costs one dict lookup per series without
records. The record's 5-tuple becomes the exemplar's ``filtered_attributes``, as
OpenTelemetry defines them: attributes of the measurement that are not on the point.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Sequence
from functools import lru_cache

from opentelemetry.sdk.metrics._internal.exemplar import Exemplar

from otel_netlat.collect.snapshot import Attributes, SlowRecord, Snapshot

_KEY = ("netlat.stage", "network.type", "network.transport")
_ADDRESSES = ("source.address", "destination.address")
_PODS = ("k8s.namespace.name", "k8s.pod.name")


@lru_cache(maxsize=4096)
def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None


def _inside(address: str, series_value: str) -> bool:
    if not address:
        return False
    net = _network(series_value)
    if net is None:
        return address == series_value
    try:
        return ipaddress.ip_address(address) in net
    except ValueError:
        return False


def _belongs(record: SlowRecord, mine: dict[str, str | int], series: dict[str, str]) -> bool:
    """Whether the record (``mine``: its attributes) is a packet of this series (its address
    and pod attributes)."""
    for key in _ADDRESSES:
        if key in series and not _inside(str(mine.get(key, "")), series[key]):
            return False
    if "cpu.logical_number" in series and str(record.cpu) != series["cpu.logical_number"]:
        return False  # --cpu-labels: the CPU the sample ended on
    return all(key not in series or mine.get(key) == series[key] for key in _PODS)


class ExemplarIndex:
    """The slow records of one snapshot, by (stage, type, transport), newest first."""

    def __init__(self, snapshot: Snapshot) -> None:
        self._bounds = snapshot.bounds_s
        # Each record with its attributes, made once: a scrape asks every series.
        self._by_key: dict[tuple[str, str, str], list[tuple[SlowRecord, dict[str, str | int]]]] = {}
        for record in reversed(snapshot.slow):  # snapshot.slow is oldest first
            key = (record.stage, record.network_type, record.transport)
            self._by_key.setdefault(key, []).append((record, record.attributes()))

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def for_series(self, attributes: Attributes, since_ns: int = 0) -> list[Exemplar]:
        """At most one exemplar per bucket: the newest record of this series in it (recorded
        at or after ``since_ns``: a delta point's exemplars are from its own interval)."""
        d = dict(attributes)
        records = self._by_key.get(tuple(d.get(k, "") for k in _KEY))  # type: ignore[arg-type]
        if not records:
            return []
        taken: dict[int, Exemplar] = {}
        for record, mine in records:
            if record.time_unix_ns < since_ns:
                break
            bucket = bisect.bisect_left(self._bounds, record.latency_s)
            if bucket in taken or not _belongs(record, mine, d):
                continue
            taken[bucket] = exemplar_of(record, d, mine)
        return [taken[b] for b in sorted(taken)]


#: An exemplar's filtered attributes: the flow. OpenMetrics and Prometheus cap an exemplar's
#: labels at 128 characters and drop all of them beyond; the 5-tuple of an IPv4 flow fits
#: (≈ 95), and the transport is on the point. CPU, interface and namespace are in the log record.
EXEMPLAR_KEYS = ("source.address", "source.port", "destination.address", "destination.port")


def exemplar_of(
    record: SlowRecord, point_attributes: dict[str, str], mine: dict[str, str | int] | None = None
) -> Exemplar:
    """The record as an exemplar: its flow, as attributes not already on the point, and its
    record ID as trace/span ID (what the Collector's Prometheus exporter keeps, and the key of
    the record's log record). ``mine``: the record's attributes, if already made."""
    mine = mine if mine is not None else record.attributes()
    filtered = {k: mine[k] for k in EXEMPLAR_KEYS if k in mine and point_attributes.get(k) != mine[k]}
    return Exemplar(
        filtered_attributes=filtered,
        value=record.latency_s,
        time_unix_nano=record.time_unix_ns,
        span_id=record.span_id,
        trace_id=record.trace_id,
    )


def newest(records: Sequence[SlowRecord], n: int) -> list[SlowRecord]:
    """The ``n`` newest records, newest first (watch, the slow command)."""
    return list(reversed(records[-n:]))
