"""Series that idle for ``--series-ttl`` leave every exporter; one that comes back starts afresh.

Applies to the address-keyed series (``--address-labels``, ``--pod-attribution``): latency,
packets and drops. The kernel side (:mod:`otel_netlat.collect.addr_maps`) removes an entry
whose value did not change for the TTL and hands on its last counts (``Snapshot.retired``).
An exported series may be fed by several entries (after pod attribution, every peer of a
pod feeds the pod's series), so this book keeps, per exported series:

* the counts of its removed entries (the *carry*), added to what live entries show, so that
  its cumulative values never go down while it lives;
* when its values last changed, and when it started.

A series leaves when its values have not changed for the TTL *and* no kernel entry feeds it
any more (they have all been removed as idle, so none can bring back old counts). It is
then simply absent from the snapshot: the Prometheus page no longer shows it, the OTLP
readers forget it. If traffic brings it back, it is a new series: its counts start from
zero in a new kernel entry, and its start time is the start of the read before the one that
first saw it again (no counted packet is older). A series whose values go down (a pod IP
that moved to another pod takes its entry's counts along) also gets a new start time, so a
cumulative OTLP point never decreases under one start time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from otel_netlat.collect.snapshot import Attributes, CounterPoint, HistogramSeries, Retired, Snapshot
from otel_netlat.export.points import OVERFLOW_ATTRIBUTES


@dataclass
class _Track:
    """One exported series: when it started, when it last changed, its carried counts."""

    start_ns: int
    changed_ns: int
    signature: tuple[int, ...] = ()  # () until first settled
    carry_hist: HistogramSeries | None = None
    carry_value: int = 0


class _Ledger:
    """The tracks of one kind of series (flows: latency with packets; drops)."""

    def __init__(self) -> None:
        self.tracks: dict[Attributes, _Track] = {}

    def track(self, a: Attributes, born_ns: int, now_ns: int) -> _Track:
        t = self.tracks.get(a)
        if t is None:
            t = self.tracks[a] = _Track(born_ns, now_ns)
        return t

    def settle(
        self, a: Attributes, signature: tuple[int, ...], live: bool, now_ns: int, born_ns: int, ttl_ns: int
    ) -> int | None:
        """The series' start time after this snapshot, or None: it expires now."""
        t = self.track(a, born_ns, now_ns)
        if not t.signature:
            t.signature = signature
        elif signature != t.signature:
            if any(map(int.__lt__, signature, t.signature)):
                t.start_ns = born_ns  # went down: a new cumulative series
            t.signature, t.changed_ns = signature, now_ns
        elif not live and now_ns - t.changed_ns >= ttl_ns:
            del self.tracks[a]
            return None
        return t.start_ns


def _add_hist(a: HistogramSeries | None, b: HistogramSeries, attributes: Attributes) -> HistogramSeries:
    if a is None:
        return HistogramSeries(attributes, b.bucket_counts, b.sum_ns, b.count)
    counts = tuple(map(int.__add__, a.bucket_counts, b.bucket_counts))
    return HistogramSeries(attributes, counts, a.sum_ns + b.sum_ns, a.count + b.count)


class SeriesBook:
    """Carries removed entries' counts, expires idle series, dates new ones (one per agent)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_ns = int(ttl_s * 1e9)
        self._flows = _Ledger()
        self._drops = _Ledger()
        self._last_read_ns = 0  # start of the previous read; 0: the agent's start

    def __len__(self) -> int:
        """Series tracked (live ones, and carried ones not yet expired)."""
        return len(self._flows.tracks) + len(self._drops.tracks)

    def apply(self, snapshot: Snapshot, now_ns: int | None = None) -> Snapshot:
        """``snapshot`` with carried counts added, idle series gone, start times set.

        Idle time is measured on ``now_ns`` (default: the monotonic clock, which no clock
        step moves); start times are wall-clock times from the snapshots.
        """
        now = time.monotonic_ns() if now_ns is None else now_ns
        born = self._last_read_ns
        latency, packets = self._flows_of(snapshot, now, born)
        drops = self._drops_of(snapshot, now, born)
        self._last_read_ns = snapshot.taken_at_ns - int(snapshot.collection_duration_s * 1e9)
        return replace(
            snapshot,
            latency=latency,
            packets=packets,
            drops=drops,
            extra=dict(snapshot.extra),
            retired=Retired(),
        )

    def _flows_of(
        self, snapshot: Snapshot, now: int, born: int
    ) -> tuple[tuple[HistogramSeries, ...], tuple[CounterPoint, ...]]:
        ledger = self._flows
        for s in snapshot.retired.latency:
            t = ledger.track(s.attributes, born, now)
            t.carry_hist = _add_hist(t.carry_hist, s, s.attributes)
        for p in snapshot.retired.packets:
            ledger.track(p.attributes, born, now).carry_value += p.value
        hists = {s.attributes: s for s in snapshot.latency}
        counts = {p.attributes: p for p in snapshot.packets}
        latency: list[HistogramSeries] = []
        packets: list[CounterPoint] = []
        for a in list(dict.fromkeys([*hists, *counts, *ledger.tracks])):
            h, p = hists.get(a), counts.get(a)
            if a == OVERFLOW_ATTRIBUTES:  # an array of its own: never removed, never expires
                latency += [h] if h else []
                packets += [p] if p else []
                continue
            t = ledger.tracks.get(a)
            value = p.value if p else 0
            if t is not None and t.carry_hist is not None:
                h = _add_hist(h, t.carry_hist, a)
            if t is not None:
                value += t.carry_value
            signature = (h.count, h.sum_ns, value) if h else (0, 0, value)
            start = ledger.settle(a, signature, a in hists or a in counts, now, born, self.ttl_ns)
            if start is None:
                continue
            if h is not None:
                latency.append(HistogramSeries(a, h.bucket_counts, h.sum_ns, h.count, start))
            if p is not None or (t is not None and t.carry_value):
                packets.append(CounterPoint(a, value, start))
        return tuple(latency), tuple(packets)

    def _drops_of(self, snapshot: Snapshot, now: int, born: int) -> tuple[CounterPoint, ...]:
        ledger = self._drops
        for p in snapshot.retired.drops:
            ledger.track(p.attributes, born, now).carry_value += p.value
        live = {p.attributes: p for p in snapshot.drops}
        drops: list[CounterPoint] = []
        for a in list(dict.fromkeys([*live, *ledger.tracks])):
            p = live.get(a)
            if a == OVERFLOW_ATTRIBUTES:
                drops += [p] if p else []
                continue
            t = ledger.tracks.get(a)
            value = (p.value if p else 0) + (t.carry_value if t else 0)
            start = ledger.settle(a, (value,), p is not None, now, born, self.ttl_ns)
            if start is not None:
                drops.append(CounterPoint(a, value, start))
        return tuple(drops)
