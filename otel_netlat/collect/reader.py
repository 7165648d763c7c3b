"""Kernel maps → :class:`Snapshot`, once per collection interval.

This is the only place that knows both the map layouts and the metric attributes. Its cost
depends on the number of keys, never on the packet rate.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass, replace

from otel_netlat.collect.addr_maps import AddrMap
from otel_netlat.collect.hook_misses import MissReader, function_hooks
from otel_netlat.collect.maps import SlotScanner, read_percpu_u64
from otel_netlat.collect.per_cpu import (
    ALL_CPUS,
    CpuAddrMap,
    CpuCap,
    CpuRows,
    PercpuArray,
    merge_counters,
    merge_hist,
    summed,
    total,
    with_cpu,
)
from otel_netlat.collect.snapshot import CounterPoint, HistogramSeries, Retired, Snapshot, as_attributes
from otel_netlat.program import layout
from otel_netlat.program.build import LoadedProgram, function_probes
from otel_netlat.program.layout import NET_TYPE_NAMES, OUTCOME_NAMES, SKIP_NAMES, TRANSPORT_NAMES, Outcome
from otel_netlat.stages.table import DROP_HOOK, DROPS, SOFTIRQ, SOFTIRQ_HOOKS, Stage

log = logging.getLogger(__name__)

OVERFLOW_ATTRS = as_attributes({"otel.metric.overflow": "true"})
#: Rows of the softirq histogram map, in bpf/softirq.h's softirq_row() order.
SOFTIRQ_ROWS = (("net_tx", "wait"), ("net_tx", "runtime"), ("net_rx", "wait"), ("net_rx", "runtime"))


class SnapshotReader:
    """Reads one loaded program's maps into snapshots.

    ``series_ttl_s``: address-map entries whose value has not changed for that long are
    removed from the kernel (see :mod:`otel_netlat.collect.addr_maps`); None keeps them.
    """

    def __init__(
        self,
        program: LoadedProgram,
        unavailable: dict[str, str] | None = None,
        series_ttl_s: float | None = None,
    ) -> None:
        self.program = program
        self.spec = program.spec
        self.bpf = program.bpf
        self.bounds_s = tuple(b / 1e9 for b in self.spec.bounds_ns)
        self.n_buckets = len(self.spec.bounds_ns) + 1
        self.hist_words = self.n_buckets + 2  # buckets, sum_ns, starts (count = sum of buckets)
        self.n_keys = self.spec.n_stage_ids * layout.N_NET_TYPES * layout.N_TRANSPORTS
        self.stages: dict[int, Stage] = {s.id: s for s in self.spec.stages}
        self.unavailable = unavailable or {}
        slot_size = ct.sizeof(self.bpf[b"starts"].Leaf)
        self.scanner = SlotScanner(
            self.bpf[b"starts"], self.spec.n_stage_ids, 1 << self.spec.slots_shift, slot_size
        )
        self.probes = self._probe_points()
        self.sample_every = (CounterPoint((), self.spec.latency_sample),)
        kprobes = {p.hook.attach_name: p.kprobe_fn for p in function_probes(self.spec)}
        self.misses = MissReader(self.bpf.funcs, function_hooks(self.spec.hooks, kprobes))
        self._hist_addr: AddrMap | None = None
        self._drops_addr: AddrMap | None = None
        self.cpu_labels = self.spec.cpu_labels
        if self.spec.addr_labels:
            ttl_ns = None if series_ttl_s is None else int(series_ttl_s * 1e9)
            self._hist_addr, self._drops_addr = self._addr_maps(ttl_ns)
        self._cap_reported = self._cpu_cap_reported = False
        self._per_cpu = self._per_cpu_reads() if self.cpu_labels else {}
        cap = self.spec.max_series
        self._caps = {
            "latency": CpuCap(cap, merge_hist, _stage_of, _samples),
            "softirq": CpuCap(cap, merge_hist, lambda s: SOFTIRQ, _samples),
            "napi_squeezed": CpuCap(cap, merge_counters),
        }

    def _per_cpu_reads(self) -> dict[str, PercpuArray]:
        """The per-CPU arrays read CPU by CPU (--cpu-labels)."""
        reads = {}
        if not self.spec.addr_labels:
            reads["hist"] = PercpuArray(self.bpf[b"hist"], self.hist_words)
        if self.spec.softirq:
            reads["softirq_hist"] = PercpuArray(self.bpf[b"softirq_hist"], self.hist_words)
            reads["napi_squeezed"] = PercpuArray(self.bpf[b"napi_squeezed"], 1)
        return reads

    def _probe_points(self) -> tuple[CounterPoint, ...]:
        """One point per attached hook (value 1) and per unavailable stage (value 0)."""
        hooks = [(stage.name, role, hook) for stage in self.spec.stages for role, hook in stage.roles]
        if self.spec.drops:
            hooks.append((DROPS, "drop", DROP_HOOK))
        if self.spec.softirq:
            hooks += [(SOFTIRQ, hook.target.rpartition("_")[2], hook) for hook in SOFTIRQ_HOOKS]
        points = [
            _counter(
                {
                    "netlat.stage": stage,
                    "netlat.hook": hook.attach_name,
                    "netlat.hook.role": role,
                    "netlat.hook.type": hook.attach_type,
                },
                1,
            )
            for stage, role, hook in hooks
        ]
        points += [
            _counter({"netlat.stage": n, "netlat.hook.type": "unavailable"}, 0) for n in self.unavailable
        ]
        return tuple(points)

    def _key_attrs(self, stage: Stage, nt: int, tr: int) -> dict[str, str]:
        return {
            "netlat.stage": stage.name,
            "network.type": NET_TYPE_NAMES[layout.NetType(nt)],
            "network.transport": TRANSPORT_NAMES[layout.Transport(tr)],
            "network.io.direction": stage.direction,
        }

    def read(self) -> Snapshot:
        """Every map, read once; the histograms first (the sample counts come from them)."""
        t0, now_ns = time.perf_counter(), time.monotonic_ns()  # idle time: no clock step moves it
        latency, packets, samples = self._read_hist()
        addr = self._read_addr(now_ns) if self.spec.addr_labels else None
        entries, unmatched = self._read_outcomes(samples)
        skipped = self._read_skipped(
            self.bpf[b"skipped"], self.spec.n_stage_ids, [(s.name, s.id) for s in self.spec.stages]
        )
        drops: list[CounterPoint] = []
        if self.spec.drops:
            drops = addr.drops if addr else self._read_drops()
            skipped += self._read_skipped(self.bpf[b"drops_skipped"], 1, [(DROPS, 0)])
        if addr:
            latency, packets = addr.latency, addr.packets
        softirq, squeezed = self._read_softirq() if self.spec.softirq else ([], [])
        snap = Snapshot(
            taken_at_ns=time.time_ns(),
            bounds_s=self.bounds_s,
            latency=tuple(latency),
            packets=tuple(packets),
            drops=tuple(drops),
            entries=tuple(entries),
            unmatched=tuple(unmatched),
            skipped=tuple(skipped),
            folded=tuple(self._read_folded()) if addr else (),
            probes=self.probes,
            sample_every=self.sample_every,
            missed=self.misses.read(),
            collection_duration_s=time.perf_counter() - t0,
            series=addr.series if addr else (),
            expired=addr.expired if addr else (),
            retired=addr.retired if addr else Retired(),
            softirq=tuple(softirq),
            napi_squeezed=tuple(squeezed),
        )
        return self._capped(snap) if self.cpu_labels else snap

    def _read_hist(self) -> tuple[list[HistogramSeries], list[CounterPoint], dict[int, int]]:
        """Latency series, packet counts, and the samples per stage id.

        The C counts samples only in the buckets, so the SAMPLE outcome is summed here. With
        address labels the series come from the address map (:meth:`_read_addr`); the samples
        still from this one.
        """
        per_cpu = self._per_cpu.get("hist")
        if per_cpu is not None:
            hist = per_cpu.read()
        else:
            hist = summed(read_percpu_u64(self.bpf[b"hist"], self.n_keys, self.hist_words))
        nb = self.n_buckets
        latency: list[HistogramSeries] = []
        packets: list[CounterPoint] = []
        samples: dict[int, int] = {}
        for stage in self.spec.stages:
            for nt in range(layout.N_NET_TYPES):
                for tr in range(layout.N_TRANSPORTS):
                    rows = hist.get(layout.hist_index(stage.id, nt, tr))
                    if not rows:
                        continue
                    row = total(rows)
                    starts, count = row[nb + 1], sum(row[:nb])
                    samples[stage.id] = samples.get(stage.id, 0) + count
                    if not starts and not count:
                        continue
                    a = as_attributes(self._key_attrs(stage, nt, tr))
                    if not self.spec.addr_labels:
                        latency += self._series(a, rows)
                        packets.append(CounterPoint(a, starts))
        return latency, packets, samples

    def _series(self, a, rows: CpuRows) -> list[HistogramSeries]:
        """A key's histogram: its sum, or with CPU labels one per CPU that has samples."""
        nb = self.n_buckets
        if not self.cpu_labels:
            ((_, row),) = rows
            return [HistogramSeries(a, tuple(row[:nb]), row[nb], sum(row[:nb]))]
        return [
            HistogramSeries(with_cpu(a, cpu), tuple(row[:nb]), row[nb], n)
            for cpu, row in rows
            if (n := sum(row[:nb]))
        ]

    def _read_softirq(self) -> tuple[list[HistogramSeries], list[CounterPoint]]:
        """NET_RX/NET_TX wait and runtime (every row, or each CPU's with samples), and the
        NAPI polls that used their whole budget."""
        if self.cpu_labels:
            hist = self._per_cpu["softirq_hist"].read()
            napi = self._per_cpu["napi_squeezed"].read().get(0, [])
        else:
            hist = summed(read_percpu_u64(self.bpf[b"softirq_hist"], len(SOFTIRQ_ROWS), self.hist_words))
            napi = summed(read_percpu_u64(self.bpf[b"napi_squeezed"], 1, 1))[0]
        series: list[HistogramSeries] = []
        for i, (vector, phase) in enumerate(SOFTIRQ_ROWS):
            a = as_attributes({"netlat.softirq.vector": vector, "netlat.softirq.phase": phase})
            series += self._series(a, hist.get(i, []))
        return series, [CounterPoint(with_cpu((), cpu), row[0]) for cpu, row in napi]

    def _capped(self, snap: Snapshot) -> Snapshot:
        """The per-CPU series under --max-series each (:class:`CpuCap`); the samples they
        folded added to ``folded`` (by stage; ``softirq`` for the softirq histograms)."""
        latency, kept, weights = self._caps["latency"].apply(list(snap.latency), snap.retired.latency)
        softirq, _, softirq_weights = self._caps["softirq"].apply(list(snap.softirq))
        squeezed, _, _ = self._caps["napi_squeezed"].apply(list(snap.napi_squeezed))
        weights.update(softirq_weights)
        if any(weights.values()) and not self._cpu_cap_reported:
            self._cpu_cap_reported = True
            log.warning(
                "series cap reached: with --cpu-labels the per-CPU series of a metric exceed "
                "--max-series %d; the rest fold into otel.metric.overflow=true, counted in "
                "netlat_agent_series_folded_total (logged once)",
                self.spec.max_series,
            )
        kernel = {dict(p.attributes)["netlat.stage"]: p.value for p in snap.folded}
        groups = [*kernel, *(s.name for s in self.spec.stages), *([SOFTIRQ] if self.spec.softirq else [])]
        folded = [_counter({"netlat.stage": g}, kernel.get(g, 0) + weights[g]) for g in dict.fromkeys(groups)]
        return replace(
            snap,
            latency=tuple(latency),
            retired=replace(snap.retired, latency=tuple(kept)),
            softirq=tuple(softirq),
            napi_squeezed=tuple(squeezed),
            folded=tuple(folded),
        )

    def _read_outcomes(self, samples: dict[int, int]) -> tuple[list[CounterPoint], list[CounterPoint]]:
        """What became of each start (``netlat.outcome``, with ``pending`` from the start table),
        and the unmatched socket-queue tails of stages that end at one."""
        outcomes = read_percpu_u64(self.bpf[b"outcomes"], self.spec.n_stage_ids * layout.N_OUTCOMES, 1)
        pending = self.scanner.pending()
        entries: list[CounterPoint] = []
        unmatched: list[CounterPoint] = []
        for stage in self.spec.stages:
            for o in layout.Outcome:
                value = outcomes[stage.id * layout.N_OUTCOMES + o][0]
                if o is Outcome.SAMPLE:
                    value = samples.get(stage.id, 0)
                if o is Outcome.TAIL_NOT_MATCHED:
                    if stage.end.obj == "sock_queue_tail":
                        unmatched.append(_counter({"netlat.stage": stage.name}, value))
                    continue
                entries.append(
                    _counter({"netlat.stage": stage.name, "netlat.outcome": OUTCOME_NAMES[o]}, value)
                )
            entries.append(
                _counter({"netlat.stage": stage.name, "netlat.outcome": "pending"}, pending[stage.id])
            )
        return entries, unmatched

    def _read_skipped(self, table, n_rows: int, rows: list[tuple[str, int]]) -> list[CounterPoint]:
        """Skipped packets by reason, for each (stage name, row) of a skip-count array of ``n_rows``."""
        raw = read_percpu_u64(table, n_rows * layout.N_SKIPS, 1)
        return [
            _counter(
                {"netlat.stage": name, "netlat.skip.reason": SKIP_NAMES[s]}, raw[row * layout.N_SKIPS + s][0]
            )
            for name, row in rows
            for s in layout.Skip
        ]

    def _read_folded(self) -> list[CounterPoint]:
        """Samples folded into the overflow series when the address maps were full.

        The first fold is logged, once: from then on the count says how much.
        """
        n = self.spec.n_stage_ids
        f = read_percpu_u64(self.bpf[b"folded"], n + 1, 1)
        points = [_counter({"netlat.stage": stage.name}, f[stage.id][0]) for stage in self.spec.stages]
        points.append(_counter({"netlat.stage": DROPS}, f[n][0]))
        if not self._cap_reported and any(p.value for p in points):
            self._cap_reported = True
            log.warning(
                "series cap reached: an address map holds --max-series %d entries; new address "
                "pairs fold into otel.metric.overflow=true, counted in "
                "netlat_agent_series_folded_total (logged once)",
                self.spec.max_series,
            )
        return points

    def _read_drops(self) -> list[CounterPoint]:
        info = self.program.info
        n = (info.max_drop_reason + 1) * layout.N_NET_TYPES * layout.N_TRANSPORTS
        raw = read_percpu_u64(self.bpf[b"drops"], n, 1)
        out = []
        for reason in range(info.max_drop_reason + 1):
            for nt in range(layout.N_NET_TYPES):
                for tr in range(layout.N_TRANSPORTS):
                    value = raw[layout.drop_index(reason, nt, tr)][0]
                    if value:
                        out.append(_counter(self._drop_attrs(reason, nt, tr), value))
        return out

    def _drop_attrs(self, reason: int, nt: int, tr: int) -> dict[str, str]:
        return {
            "netlat.drop.reason": self.program.info.drop_reasons.get(reason, f"REASON_{reason}"),
            "network.type": NET_TYPE_NAMES[layout.NetType(nt)],
            "network.transport": TRANSPORT_NAMES[layout.Transport(tr)],
        }

    # ---- address-labelled maps (opt-in) ----------------------------------------------

    def _addr(self, raw, nt: int) -> str:
        if nt == layout.NetType.IPV4:  # cut to the prefix in the kernel: the network's address
            return f"{socket.inet_ntop(socket.AF_INET, bytes(raw[:4]))}/{self.spec.ipv4_prefix}"
        else:
            net = ipaddress.IPv6Network((bytes(raw[:16]), self.spec.ipv6_prefix))
        return str(net)

    def _with_addrs(self, attrs: dict[str, str], key) -> dict[str, str]:
        """``attrs`` plus the source and destination prefixes of an address-map key."""
        attrs["source.address"] = self._addr(key.saddr, key.net_type)
        attrs["destination.address"] = self._addr(key.daddr, key.net_type)
        return attrs

    def _addr_maps(self, ttl_ns: int | None) -> tuple[AddrMap, AddrMap | None]:
        """The two address-keyed maps, each entry decoded once and rebuilt only when it changes."""
        kind = CpuAddrMap if self.cpu_labels else AddrMap
        hist = kind(self.bpf[b"hist_addr"], self.hist_words, self._decode_flow, self._flow_points, ttl_ns)
        drops = None
        if self.spec.drops:
            drops = AddrMap(self.bpf[b"drops_addr"], 1, self._decode_drop, self._drop_point, ttl_ns)
        return hist, drops

    def _decode_flow(self, raw: bytes) -> tuple[object, str]:
        key = self.bpf[b"hist_addr"].Key.from_buffer_copy(raw)
        stage = self.stages.get(key.stage)
        if stage is None:
            return None, "unknown"
        a = self._with_addrs(self._key_attrs(stage, key.net_type, key.transport), key)
        return as_attributes(a), stage.name

    def _flow_points(self, a, value) -> tuple[tuple[HistogramSeries, ...], CounterPoint] | None:
        """An entry's histogram (or, with CPU labels, one per CPU: ``value`` is then its
        :data:`CpuRows`) and its packets."""
        rows: CpuRows = value if self.cpu_labels else [(ALL_CPUS, value)]
        nb = self.n_buckets
        row = total(rows) if rows else [0] * self.hist_words
        starts, count = row[nb + 1], sum(row[:nb])
        if a is None or (not starts and not count):
            return None
        return tuple(self._series(a, rows)), CounterPoint(a, starts)

    def _decode_drop(self, raw: bytes) -> tuple[object, str]:
        key = self.bpf[b"drops_addr"].Key.from_buffer_copy(raw)
        a = self._with_addrs(self._drop_attrs(key.reason, key.net_type, key.transport), key)
        return as_attributes(a), DROPS

    @staticmethod
    def _drop_point(a, row: list[int]) -> CounterPoint | None:
        return CounterPoint(a, row[0]) if row[0] else None

    def _read_addr(self, now_ns: int) -> _AddrRead:
        """Both address maps (idle entries removed), their overflow rows, and their use."""
        assert self._hist_addr is not None
        flows, retired_flows, in_use = self._hist_addr.read(now_ns)
        latency = [h for hs, _ in flows for h in hs]
        packets = [p for _, p in flows]
        # Keys that found the map full, folded together (an array of its own: always room).
        nb = self.n_buckets
        row = read_percpu_u64(self.bpf[b"hist_addr_overflow"], 1, self.hist_words)[0]
        buckets, starts = row[:nb], row[nb + 1]
        if starts or any(buckets):
            latency.append(HistogramSeries(OVERFLOW_ATTRS, tuple(buckets), row[nb], sum(buckets)))
            packets.append(CounterPoint(OVERFLOW_ATTRS, starts))
        drops: list[CounterPoint] = []
        retired_drops: list[CounterPoint] = []
        expired = Counter(self._hist_addr.expired)
        if self._drops_addr is not None:
            drops, retired_drops, drops_in_use = self._drops_addr.read(now_ns)
            in_use.update(drops_in_use)
            expired.update(self._drops_addr.expired)
            folded = read_percpu_u64(self.bpf[b"drops_addr_overflow"], 1, 1)[0][0]
            if folded:
                drops.append(CounterPoint(OVERFLOW_ATTRS, folded))
        groups = [s.name for s in self.spec.stages] + ([DROPS] if self.spec.drops else [])
        retired = Retired(
            latency=tuple(h for hs, _ in retired_flows for h in hs),
            packets=tuple(p for _, p in retired_flows),
            drops=tuple(retired_drops),
        )
        return _AddrRead(
            latency=latency,
            packets=packets,
            drops=drops,
            retired=retired,
            series=tuple(_counter({"netlat.stage": g}, in_use[g]) for g in groups),
            expired=tuple(_counter({"netlat.stage": g}, expired[g]) for g in groups),
        )

    def close(self) -> None:
        self.scanner.close()


@dataclass(frozen=True)
class _AddrRead:
    """What one read of the address maps gives the snapshot."""

    latency: list[HistogramSeries]
    packets: list[CounterPoint]
    drops: list[CounterPoint]
    retired: Retired
    series: tuple[CounterPoint, ...]
    expired: tuple[CounterPoint, ...]


def _stage_of(series: HistogramSeries) -> str:
    return dict(series.attributes).get("netlat.stage", "")


def _samples(series: HistogramSeries) -> int:
    return series.count


def _counter(attributes: dict[str, str], value: int) -> CounterPoint:
    """A counter point from a mapping with dotted keys."""
    return CounterPoint(as_attributes(attributes), value)
