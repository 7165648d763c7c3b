"""Kernel maps → :class:`Snapshot`, once per collection interval.

This is the only place that knows both the map layouts and the metric attributes. Its cost
depends on the number of keys, never on the packet rate.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import time

from otel_netlat.collect.hook_misses import MissReader, function_hooks
from otel_netlat.collect.maps import SlotScanner, read_percpu_u64
from otel_netlat.collect.snapshot import CounterPoint, HistogramSeries, Snapshot, as_attributes
from otel_netlat.program import layout
from otel_netlat.program.build import LoadedProgram, function_probes
from otel_netlat.program.layout import NET_TYPE_NAMES, OUTCOME_NAMES, SKIP_NAMES, TRANSPORT_NAMES, Outcome
from otel_netlat.stages.table import DROP_HOOK, Stage

OVERFLOW_ATTRS = as_attributes({"otel.metric.overflow": "true"})


class SnapshotReader:
    """Reads one loaded program's maps into snapshots."""

    def __init__(self, program: LoadedProgram, unavailable: dict[str, str] | None = None) -> None:
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
        kprobes = {p.hook.attach_name: p.kprobe_fn for p in function_probes(self.spec)}
        self.misses = MissReader(self.bpf.funcs, function_hooks(self.spec.hooks, kprobes))

    def _probe_points(self) -> tuple[CounterPoint, ...]:
        points = []
        for stage in self.spec.stages:
            for role, hook in stage.roles:
                points.append(
                    CounterPoint(
                        as_attributes(
                            {
                                "netlat.stage": stage.name,
                                "netlat.hook": hook.attach_name,
                                "netlat.hook.role": role,
                                "netlat.hook.type": hook.attach_type,
                            }
                        ),
                        1,
                    )
                )
        if self.spec.drops:
            points.append(
                CounterPoint(
                    as_attributes(
                        {
                            "netlat.stage": "drops",
                            "netlat.hook": DROP_HOOK.target,
                            "netlat.hook.role": "drop",
                            "netlat.hook.type": DROP_HOOK.attach_type,
                        }
                    ),
                    1,
                )
            )
        for name in self.unavailable:
            points.append(
                CounterPoint(as_attributes({"netlat.stage": name, "netlat.hook.type": "unavailable"}), 0)
            )
        return tuple(points)

    def _key_attrs(self, stage: Stage, nt: int, tr: int) -> dict[str, str]:
        return {
            "netlat.stage": stage.name,
            "network.type": NET_TYPE_NAMES[layout.NetType(nt)],
            "network.transport": TRANSPORT_NAMES[layout.Transport(tr)],
            "network.io.direction": stage.direction,
        }

    def read(self) -> Snapshot:
        t0 = time.perf_counter()
        hist = read_percpu_u64(self.bpf[b"hist"], self.n_keys, self.hist_words)
        nb = self.n_buckets
        latency: list[HistogramSeries] = []
        packets: list[CounterPoint] = []
        samples: dict[int, int] = {}  # the SAMPLE outcome: the C counts samples only in buckets
        for stage in self.spec.stages:
            for nt in range(layout.N_NET_TYPES):
                for tr in range(layout.N_TRANSPORTS):
                    row = hist[layout.hist_index(stage.id, nt, tr)]
                    starts, count = row[nb + 1], sum(row[:nb])
                    samples[stage.id] = samples.get(stage.id, 0) + count
                    if not starts and not count:
                        continue
                    a = as_attributes(self._key_attrs(stage, nt, tr))
                    if not self.spec.addr_labels:
                        latency.append(HistogramSeries(a, tuple(row[:nb]), row[nb], count))
                        packets.append(CounterPoint(a, starts))
        if self.spec.addr_labels:
            addr_latency, addr_packets = self._read_addr_hist()
            latency, packets = addr_latency, addr_packets

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
                        unmatched.append(CounterPoint(as_attributes({"netlat.stage": stage.name}), value))
                    continue
                entries.append(
                    CounterPoint(
                        as_attributes({"netlat.stage": stage.name, "netlat.outcome": OUTCOME_NAMES[o]}), value
                    )
                )
            entries.append(
                CounterPoint(
                    as_attributes({"netlat.stage": stage.name, "netlat.outcome": "pending"}),
                    pending[stage.id],
                )
            )

        skipped_raw = read_percpu_u64(self.bpf[b"skipped"], self.spec.n_stage_ids * layout.N_SKIPS, 1)
        skipped: list[CounterPoint] = []
        for stage in self.spec.stages:
            for s in layout.Skip:
                skipped.append(
                    CounterPoint(
                        as_attributes({"netlat.stage": stage.name, "netlat.skip.reason": SKIP_NAMES[s]}),
                        skipped_raw[stage.id * layout.N_SKIPS + s][0],
                    )
                )

        drops: list[CounterPoint] = []
        folded: list[CounterPoint] = []
        if self.spec.drops:
            drops = self._read_drops()
            dskip = read_percpu_u64(self.bpf[b"drops_skipped"], layout.N_SKIPS, 1)
            for s in layout.Skip:
                skipped.append(
                    CounterPoint(
                        as_attributes({"netlat.stage": "drops", "netlat.skip.reason": SKIP_NAMES[s]}),
                        dskip[s][0],
                    )
                )
        if self.spec.addr_labels:
            f = read_percpu_u64(self.bpf[b"folded"], self.spec.n_stage_ids + 1, 1)
            for stage in self.spec.stages:
                folded.append(CounterPoint(as_attributes({"netlat.stage": stage.name}), f[stage.id][0]))
            folded.append(CounterPoint(as_attributes({"netlat.stage": "drops"}), f[self.spec.n_stage_ids][0]))

        return Snapshot(
            taken_at_ns=time.time_ns(),
            bounds_s=self.bounds_s,
            latency=tuple(latency),
            packets=tuple(packets),
            drops=tuple(drops),
            entries=tuple(entries),
            unmatched=tuple(unmatched),
            skipped=tuple(skipped),
            folded=tuple(folded),
            probes=self.probes,
            missed=self.misses.read(),
            collection_duration_s=time.perf_counter() - t0,
        )

    def _read_drops(self) -> list[CounterPoint]:
        info = self.program.info
        n = (info.max_drop_reason + 1) * layout.N_NET_TYPES * layout.N_TRANSPORTS
        if self.spec.addr_labels:
            return self._read_addr_drops()
        raw = read_percpu_u64(self.bpf[b"drops"], n, 1)
        out = []
        for reason in range(info.max_drop_reason + 1):
            for nt in range(layout.N_NET_TYPES):
                for tr in range(layout.N_TRANSPORTS):
                    value = raw[layout.drop_index(reason, nt, tr)][0]
                    if value:
                        out.append(CounterPoint(as_attributes(self._drop_attrs(reason, nt, tr)), value))
        return out

    def _drop_attrs(self, reason: int, nt: int, tr: int) -> dict[str, str]:
        return {
            "netlat.drop.reason": self.program.info.drop_reasons.get(reason, f"REASON_{reason}"),
            "network.type": NET_TYPE_NAMES[layout.NetType(nt)],
            "network.transport": TRANSPORT_NAMES[layout.Transport(tr)],
        }

    # ---- address-labelled maps (opt-in) ----------------------------------------------

    def _addr(self, raw, nt: int) -> str:
        if nt == layout.NetType.IPV4:
            net = ipaddress.IPv4Network((bytes(raw[:4]), self.spec.ipv4_prefix))
        else:
            net = ipaddress.IPv6Network((bytes(raw[:16]), self.spec.ipv6_prefix))
        return str(net)

    def _read_addr_hist(self) -> tuple[list[HistogramSeries], list[CounterPoint]]:
        nb = self.n_buckets
        latency, packets = [], []
        table = self.bpf[b"hist_addr"]
        for key, per_cpu in _percpu_items(table):
            buckets = [sum(v.buckets[i] for v in per_cpu) for i in range(nb)]
            sum_ns = sum(v.sum_ns for v in per_cpu)
            count = sum(buckets)
            starts = sum(v.starts for v in per_cpu)
            stage = self.stages.get(key.stage)
            if stage is None or (not starts and not count):
                continue
            d = self._key_attrs(stage, key.net_type, key.transport)
            d["source.address"] = self._addr(key.saddr, key.net_type)
            d["destination.address"] = self._addr(key.daddr, key.net_type)
            a = as_attributes(d)
            latency.append(HistogramSeries(a, tuple(buckets), sum_ns, count))
            packets.append(CounterPoint(a, starts))
        # Keys that found the map full, folded together (an array of its own: always room).
        row = read_percpu_u64(self.bpf[b"hist_addr_overflow"], 1, self.hist_words)[0]
        buckets, starts = row[:nb], row[nb + 1]
        if starts or any(buckets):
            latency.append(HistogramSeries(OVERFLOW_ATTRS, tuple(buckets), row[nb], sum(buckets)))
            packets.append(CounterPoint(OVERFLOW_ATTRS, starts))
        return latency, packets

    def _read_addr_drops(self) -> list[CounterPoint]:
        out = []
        for key, per_cpu in _percpu_items(self.bpf[b"drops_addr"]):
            value = sum(per_cpu)
            if not value:
                continue
            attrs = self._drop_attrs(key.reason, key.net_type, key.transport)
            attrs["source.address"] = self._addr(key.saddr, key.net_type)
            attrs["destination.address"] = self._addr(key.daddr, key.net_type)
            out.append(CounterPoint(as_attributes(attrs), value))
        folded = read_percpu_u64(self.bpf[b"drops_addr_overflow"], 1, 1)[0][0]
        if folded:
            out.append(CounterPoint(OVERFLOW_ATTRS, folded))
        return out

    def close(self) -> None:
        self.scanner.close()


def _percpu_items(table):
    """(key, [value per CPU]) for a per-CPU hash; bounded by the series cap."""
    for key in list(table.keys()):
        try:
            values = table.getvalue(key)
        except KeyError:
            continue
        yield key, [v.value if hasattr(v, "value") and not hasattr(v, "buckets") else v for v in values]
