"""Kernel-side figures: per-hook BPF cost against a floor, throughput, accuracy.

All programs are built exactly as ``otel-netlat run`` builds them: the plan comes from the
agent's default configuration (``plan_for_this_kernel(Config())``), so what is measured is what runs.
"""

from __future__ import annotations

import time
from dataclasses import replace

from bench.bpfstats import Stats, bpf_stats, delta, hook_stats, load_floor
from bench.stats import summary
from bench.traffic import LoadResult, Traffic, settle
from otel_netlat.collect.reader import SnapshotReader
from otel_netlat.collect.snapshot import Snapshot
from otel_netlat.config import Config
from otel_netlat.program.build import load_program
from otel_netlat.program.layout import ENDING_OUTCOMES, OUTCOME_NAMES
from otel_netlat.program.plan import Plan, plan_for_this_kernel

#: Offered load for ``kernel_ns_per_packet``: well below what one sender reaches here
#: (≈ 300-450 k/s without the agent), so every round carries the same packets.
PACED_PPS = 50_000


def default_plan() -> Plan:
    """The program ``otel-netlat run`` loads with no flags."""
    return plan_for_this_kernel(Config())


def _per_event(d: dict[str, tuple[int, int]]) -> dict[str, float | None]:
    return {k: (ns / n if n else None) for k, (ns, n) in d.items()}


DROP_HOOK = "skb:kfree_skb"


def measure(traffic: Traffic, programs: dict, seconds: float) -> tuple[dict[str, Stats], LoadResult]:
    """Run time and run count of each program's hooks over one saturating run.

    Delivered datagrams never reach ``kfree_skb``: that hook is measured in a second, shorter
    run to a closed port, where every datagram is dropped (reason NO_SOCKET).
    """
    before = {n: hook_stats(b) for n, b in programs.items()}
    load = traffic.run(seconds)
    settle()
    out = {n: delta(hook_stats(b), before[n]) for n, b in programs.items()}
    if any(DROP_HOOK in d for d in out.values()):
        before = {n: hook_stats(b) for n, b in programs.items()}
        traffic.to_closed_port(seconds / 2)
        settle()
        for n, b in programs.items():
            if DROP_HOOK in out[n]:
                out[n][DROP_HOOK] = delta(hook_stats(b), before[n])[DROP_HOOK]
    return out, load


def cost(traffic: Traffic, plan: Plan, rounds: int, seconds: float, paced_seconds: float) -> dict:
    """ns per event of each hook and of the floor, under saturating load; ns per packet paced.

    Agent program and floor are attached together, so both see the same events under the
    same load; each program's own run time is counted by the kernel separately.
    """
    per_packet, rates, paced_rates = [], [], []
    with bpf_stats() as how:
        program = load_program(plan.spec, plan.info)
        hooks = list(hook_stats(program.bpf))  # every program the agent loaded
        # The floor sits on the hooks the way the agent does: raw tracepoints.
        floor = load_floor(tracepoints(plan), plan.info, raw=True)
        per_hook: dict[str, list] = {h: [] for h in hooks}
        per_floor: dict[str, list] = {h: [] for h in hooks}
        over_floor: dict[str, list] = {h: [] for h in hooks}
        events: dict[str, list] = {h: [] for h in hooks if h != DROP_HOOK}
        try:
            for _ in range(rounds):
                d, load = measure(traffic, {"agent": program.bpf, "floor": floor}, seconds)
                a, f = _per_event(d["agent"]), _per_event(d["floor"])
                rates.append(load.rate)
                for h in hooks:
                    per_hook[h].append(a[h])
                    per_floor[h].append(f.get(h))
                    over_floor[h].append(a[h] / f[h] if a[h] and f.get(h) else None)
                    if h in events:
                        events[h].append(d["agent"][h][1] / load.received if load.received else None)
            floor.cleanup()
            floor = None
            for _ in range(rounds):
                a0 = hook_stats(program.bpf)
                load = traffic.run(paced_seconds, pps=PACED_PPS)
                settle()
                d = delta(hook_stats(program.bpf), a0)
                paced_rates.append(load.rate)
                per_packet.append(sum(ns for ns, _ in d.values()) / load.received if load.received else None)
        finally:
            if floor is not None:
                floor.cleanup()
            program.detach()
    return {
        "ns_per_event": {h: summary(v, 1) for h, v in per_hook.items()},
        "ns_per_event_floor": {h: summary(v, 1) for h, v in per_floor.items()},
        "ns_per_event_over_floor": {h: summary(v, 2) for h, v in over_floor.items()},
        "events_per_packet": {h: summary(v, 2) for h, v in events.items()},
        "drop_hook_measured_with": "datagrams to a closed port (each dropped: NO_SOCKET)",
        "cost_load_pps": summary(rates, 0),
        "kernel_ns_per_packet": summary(per_packet, 1),
        "kernel_ns_per_packet_load": {"offered_pps": PACED_PPS, "received_pps": summary(paced_rates, 0)},
        "bpf_stats_via": how,
    }


def tracepoints(plan: Plan) -> list[str]:
    """The plan's tracepoint hooks (``group:event``): those a floor program can sit on."""
    return [h.target for h in plan.spec.hooks if h.kind == "tracepoint"]


#: The --latency-sample of the throughput's sampled arm.
SAMPLED = 8


def throughput(traffic: Traffic, plan: Plan, rounds: int, seconds: float, with_floor: bool) -> dict:
    """Saturating UDP pkts/s with the agent's program attached ÷ without, in rotating order.

    BPF statistics stay off here, as in production. Each round's ratio is taken from
    adjacent runs, so slow drifts of the shared machine cancel; the per-CPU figure
    (packets per CPU-second of sender, receiver and ksoftirqd) is the noise-robust twin.
    The program is loaded for each of its runs and unloaded after it, whatever its hooks.
    ``with_floor`` adds runs with only the floor program attached: what merely having a
    program on these hooks costs, the bound any design of the agent's C has to live with;
    and with the same floor attached as raw tracepoints, which skip the perf trace record.
    ``agent_sample8`` is the agent's program with ``--latency-sample 8`` (issue 13's lever:
    counts exact, one packet in 8 timed), in the same rounds.
    """
    arms = ["without", "agent", "agent_sample8", *(["floor", "floor_raw"] if with_floor else [])]
    rates: dict[str, list] = {a: [] for a in arms}
    ratios: dict[str, list] = {a: [] for a in arms[1:]}
    cpu_ratios: dict[str, list] = {a: [] for a in arms[1:]}
    for i in range(rounds):
        got = {}
        for arm in arms[i % len(arms) :] + arms[: i % len(arms)]:
            if arm in ("agent", "agent_sample8"):
                spec = plan.spec if arm == "agent" else replace(plan.spec, latency_sample=SAMPLED)
                loaded = load_program(spec, plan.info)
                unload = loaded.detach
            elif arm in ("floor", "floor_raw"):
                unload = load_floor(tracepoints(plan), plan.info, raw=arm == "floor_raw").cleanup
            else:
                unload = None
            try:
                got[arm] = traffic.run(seconds)
            finally:
                if unload:
                    unload()
        base = got["without"]
        rates["without"].append(base.rate)
        for arm in arms[1:]:
            rates[arm].append(got[arm].rate)
            ratios[arm].append(got[arm].rate / base.rate if base.rate else None)
            w, wo = got[arm].per_cpu_s, base.per_cpu_s
            cpu_ratios[arm].append(w / wo if w and wo else None)
    out = {
        "throughput_ratio": summary(ratios["agent"], 3),
        "throughput_pps_with": summary(rates["agent"], 0),
        "throughput_pps_without": summary(rates["without"], 0),
        "throughput_ratio_per_cpu": summary(cpu_ratios["agent"], 3),
        "throughput_ratio_sample8": summary(ratios["agent_sample8"], 3),
        "throughput_ratio_sample8_per_cpu": summary(cpu_ratios["agent_sample8"], 3),
    }
    if with_floor:
        for arm in ("floor", "floor_raw"):
            out[f"throughput_ratio_{arm}"] = summary(ratios[arm], 3)
            out[f"throughput_ratio_{arm}_per_cpu"] = summary(cpu_ratios[arm], 3)
    return out


def _stage_counts(snap: Snapshot) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for p in snap.packets:
        stage = dict(p.attributes)["netlat.stage"]
        out.setdefault(stage, {}).setdefault("starts", 0)
        out[stage]["starts"] += p.value
    for p in snap.entries:
        a = dict(p.attributes)
        out.setdefault(a["netlat.stage"], {})[a["netlat.outcome"]] = p.value
    for p in snap.unmatched:
        out.setdefault(dict(p.attributes)["netlat.stage"], {})["tail_not_matched"] = p.value
    for s in snap.latency:
        c = out.setdefault(dict(s.attributes)["netlat.stage"], {})
        c["histogram_count"] = c.get("histogram_count", 0) + s.count
    return out


def accuracy(traffic: Traffic, plan: Plan, rounds: int, seconds: float) -> dict:
    """Samples ÷ starts per stage and the identity's terms, under the saturating load.

    The program is the default one filtered to the benchmark's two namespaces, so other
    traffic on the machine cannot enter the counts. Terms are per round (differences of
    the cumulative counters; ``pending`` is a level, so its change is the term).
    """
    spec = replace(plan.spec, filter_netns=traffic.netns_inodes)
    program = load_program(spec, plan.info)
    reader = SnapshotReader(program, plan.unavailable)
    ending = [OUTCOME_NAMES[o] for o in ENDING_OUTCOMES]
    per_stage: dict[str, dict[str, list]] = {}
    backlog_ratio, received = [], []
    try:
        before = _stage_counts(reader.read())
        for _ in range(rounds):
            load = traffic.run(seconds)
            settle(0.3)
            after = _stage_counts(reader.read())
            received.append(load.received)
            for stage, c in after.items():
                b = before.get(stage, {})
                d = {k: v - b.get(k, 0) for k, v in c.items()}
                terms = sum(d.get(k, 0) for k in ending) + d.get("pending", 0)
                row = per_stage.setdefault(stage, {})
                starts = d.get("starts", 0)
                ratio = d.get("sample", 0) / starts if starts else None
                row.setdefault("samples_per_start", []).append(ratio)
                row.setdefault("unaccounted", []).append(starts - terms)
                for k in ("starts", *ending, "pending", "tail_not_matched"):
                    if k in d:
                        row.setdefault(k, []).append(d[k])
                if stage == "backlog":
                    backlog_ratio.append(starts / load.received if load.received else None)
            before = after
        final = _stage_counts(reader.read())
    finally:
        reader.close()
        program.detach()
    identity = {
        stage: c.get("starts", 0) - sum(c.get(k, 0) for k in ending) - c.get("pending", 0)
        for stage, c in final.items()
    }
    return {
        "stages": {
            stage: {k: summary(v, 4 if k == "samples_per_start" else 0) for k, v in row.items()}
            for stage, row in per_stage.items()
        },
        "backlog_starts_per_received": summary(backlog_ratio, 4),
        "received": summary(received, 0),
        "identity_unaccounted_total": identity,
        "totals": final,
    }


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t0
