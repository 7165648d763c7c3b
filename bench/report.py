"""Figures against the issue's targets, and the Markdown table the README includes."""

from __future__ import annotations

from bench.kernel import PACED_PPS

# Issue 13's targets: the agent's own work within 5 % of bare hooks.
TARGET_NS = 150
TARGET_OVER_FLOOR = 2.0
TARGET_VS_FLOOR = 0.95  # throughput_ratio ÷ throughput_ratio_floor (same hooks, counting only)
TARGET_TCP_STREAM = 0.98
TARGET_RR_ADDED_US = 1.0
TARGET_CPU = 2.0
TARGET_CPU_FLAT_PP = 0.5  # loaded − idle, percentage points of one core
TARGET_RSS = 150
TARGET_STARTUP = 3.0
TARGET_SCRAPE = {"1000": 50, "10000": 100}


def med(s: dict | None) -> float | None:
    return s.get("median") if isinstance(s, dict) else None


def fmt(s: dict | None, unit: str = "", digits: int = 1) -> str:
    """``median (min–max) unit`` of a summary."""
    if not isinstance(s, dict):
        return "not measured"
    f = lambda v: f"{v:,.{digits}f}"  # noqa: E731
    return f"{f(s['median'])} ({f(s['min'])}–{f(s['max'])}){unit}"


def _ok(flag: bool | None) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def targets(r: dict) -> list[dict]:
    """One row per target: figure, measured, target, met (None: no target or not measured)."""
    rows = []
    hooks = r.get("ns_per_event") or {}
    for hook, s in hooks.items():
        f = (r.get("ns_per_event_floor") or {}).get(hook)
        over = (r.get("ns_per_event_over_floor") or {}).get(hook)
        m, fm, om = med(s), med(f), med(over)
        ok = None if m is None or om is None else (m <= TARGET_NS and om <= TARGET_OVER_FLOOR)
        rows.append(
            {
                "figure": f"ns_per_event {hook}",
                "measured": f"{fmt(s, ' ns')}; floor {fm:.1f} ns → {om:.2f}× floor"
                if ok is not None
                else fmt(s),
                "target": f"≤ {TARGET_OVER_FLOOR:g}× floor and ≤ {TARGET_NS} ns",
                "met": ok,
            }
        )
    tr = r.get("throughput_ratio")
    floor = r.get("throughput_ratio_floor_raw")
    vs_floor = med(tr) / med(floor) if med(tr) is not None and med(floor) else None
    rows.append(
        {
            "figure": "throughput_ratio (with ÷ without agent, saturating UDP over veth) ÷ "
            "throughput_ratio_floor (a counting-only program on the same hooks)",
            "measured": ("floor not measured" if vs_floor is None else f"{vs_floor:.3f}")
            + f"; agent {fmt(tr, '', 3)}; {fmt(r.get('throughput_pps_with'), '', 0)} vs "
            f"{fmt(r.get('throughput_pps_without'), '', 0)} pkt/s; "
            f"per CPU-second {fmt(r.get('throughput_ratio_per_cpu'), '', 3)}"
            + (
                f"; floor as raw tracepoints (as the agent attaches): "
                f"{fmt(floor, '', 3)} "
                f"(per CPU-second {fmt(r.get('throughput_ratio_floor_raw_per_cpu'), '', 3)}), as classic "
                f"tracepoints: {fmt(r['throughput_ratio_floor'], '', 3)} "
                f"(per CPU-second {fmt(r.get('throughput_ratio_floor_per_cpu'), '', 3)})"
                if r.get("throughput_ratio_floor")
                else ""
            ),
            "target": f"≥ {TARGET_VS_FLOOR:.2f}",
            "met": None if vs_floor is None else vs_floor >= TARGET_VS_FLOOR,
        }
    )
    sampled = r.get("throughput_ratio_sample8")
    sampled_vs_floor = med(sampled) / med(floor) if med(sampled) is not None and med(floor) else None
    rows.append(
        {
            "figure": "the same with --latency-sample 8 (counts exact, one packet in 8 timed), "
            "÷ throughput_ratio_floor",
            "measured": ("not measured" if sampled_vs_floor is None else f"{sampled_vs_floor:.3f}")
            + f"; agent sampled {fmt(sampled, '', 3)}; per CPU-second "
            f"{fmt(r.get('throughput_ratio_sample8_per_cpu'), '', 3)}",
            "target": "— (the lever's effect; the default times every packet)",
            "met": None,
        }
    )
    ts = r.get("tcp_stream_ratio")
    rows.append(
        {
            "figure": "tcp_stream_ratio (one bulk TCP stream over veth with GRO, with ÷ without agent)",
            "measured": f"{fmt(ts, '', 3)}; {fmt(r.get('tcp_stream_mbit_s_with'), '', 0)} vs "
            f"{fmt(r.get('tcp_stream_mbit_s_without'), '', 0)} Mbit/s; "
            f"floor (counting only, same hooks) {fmt(r.get('tcp_stream_ratio_floor'), '', 3)}",
            "target": f"≥ {TARGET_TCP_STREAM:.2f}",
            "met": None if med(ts) is None else med(ts) >= TARGET_TCP_STREAM,
        }
    )
    rr = r.get("rr_added_us") or {}
    rr_floor = r.get("rr_added_us_floor") or {}
    base = r.get("rr_us_without") or {}
    rows.append(
        {
            "figure": "rr_added_us (64-byte UDP ping-pong between namespaces: agent − without)",
            "measured": f"median {fmt(rr.get('p50'), ' µs', 2)}, p99 {fmt(rr.get('p99'), ' µs', 2)}; "
            f"round trip without the agent: median {fmt(base.get('p50'), ' µs', 1)}, "
            f"p99 {fmt(base.get('p99'), ' µs', 1)}; the floor adds median "
            f"{fmt(rr_floor.get('p50'), ' µs', 2)}, p99 {fmt(rr_floor.get('p99'), ' µs', 2)}",
            "target": f"median ≤ {TARGET_RR_ADDED_US:g} µs",
            "met": None if med(rr.get("p50")) is None else med(rr.get("p50")) <= TARGET_RR_ADDED_US,
        }
    )
    load = (r.get("kernel_ns_per_packet_load") or {}).get("offered_pps") or PACED_PPS
    rows.append(
        {
            "figure": f"kernel_ns_per_packet (all hooks, {load:,} pkt/s offered)",
            "measured": fmt(r.get("kernel_ns_per_packet"), " ns"),
            "target": "—",
            "met": None,
        }
    )
    cpu = r.get("agent_cpu_percent") or {}
    loaded, idle = med(cpu.get("loaded")), med(cpu.get("idle"))
    rows.append(
        {
            "figure": f"agent_cpu_percent (saturating load, --interval {r.get('agent_interval_s', '?')})",
            "measured": f"{fmt(cpu.get('loaded'), ' %', 2)}; "
            f"at {load:,} pkt/s {fmt(cpu.get('paced'), ' %', 2)}; idle {fmt(cpu.get('idle'), ' %', 2)}",
            "target": f"< {TARGET_CPU:g} % of a core",
            "met": None if loaded is None else loaded < TARGET_CPU,
        }
    )
    rows.append(
        {
            "figure": "agent CPU flat vs idle (loaded − idle)",
            "measured": "not measured" if loaded is None or idle is None else f"{loaded - idle:+.2f} points",
            "target": f"≤ {TARGET_CPU_FLAT_PP:g} points",
            "met": None if loaded is None or idle is None else loaded - idle <= TARGET_CPU_FLAT_PP,
        }
    )
    rows.append(
        {
            "figure": "agent_cpu_per_mpkt_s (CPU-s per million packets)",
            "measured": fmt(r.get("agent_cpu_per_mpkt_s"), " s", 4),
            "target": "—",
            "met": None,
        }
    )
    rss = r.get("agent_rss_mb") or {}
    rows.append(
        {
            "figure": "agent_rss_mb steady",
            "measured": f"{fmt(rss.get('steady'), ' MB')}: anon {med(rss.get('steady_anon'))}, "
            f"file-backed {med(rss.get('steady_file'))} "
            f"(LLVM/clang text {med(rss.get('steady_llvm_text'))}); "
            f"start-up peak {fmt(rss.get('peak_startup'), ' MB')}",
            "target": f"≤ {TARGET_RSS} MB",
            "met": None if med(rss.get("steady")) is None else med(rss.get("steady")) <= TARGET_RSS,
        }
    )
    st = r.get("startup_s")
    rows.append(
        {
            "figure": "startup_s (to first /metrics with kernel data)",
            "measured": fmt(st, " s", 2),
            "target": f"≤ {TARGET_STARTUP:g} s",
            "met": None if med(st) is None else med(st) <= TARGET_STARTUP,
        }
    )
    for n, limit in TARGET_SCRAPE.items():
        s = (r.get("scrape_ms") or {}).get(n)
        g = {
            k: (r.get(k) or {}).get(n)
            for k in (
                "scrape_cpu_ms",
                "scrape_ms_gzip",
                "scrape_ms_cached",
                "scrape_ms_stock",
                "scrape_cpu_ms_stock",
            )
        }
        rows.append(
            {
                "figure": f"scrape_ms @ {int(n):,} series (fresh snapshot)",
                "measured": f"{fmt(s, ' ms')} (server CPU {fmt(g['scrape_cpu_ms'], ' ms')}); "
                f"gzip {fmt(g['scrape_ms_gzip'], ' ms')}; cached {fmt(g['scrape_ms_cached'], ' ms', 2)}; "
                f"stock path {fmt(g['scrape_ms_stock'], ' ms')} (CPU {fmt(g['scrape_cpu_ms_stock'], ' ms')})",
                "target": f"≤ {limit} ms",
                "met": None if med(s) is None else med(s) <= limit,
            }
        )
    for n, s in (r.get("otlp_export_ms") or {}).items():
        rows.append(
            {
                "figure": f"otlp_export_ms @ {int(n):,} series",
                "measured": fmt(s, " ms"),
                "target": "—",
                "met": None,
            }
        )
    if r.get("otlp_export_ms") is None:
        rows.append(
            {
                "figure": "otlp_export_ms",
                "measured": f"not measured: {r.get('otlp_export_reason')}",
                "target": "—",
                "met": None,
            }
        )
    acc = r.get("accuracy") or {}
    for stage, row in (acc.get("stages") or {}).items():
        unacc = (acc.get("identity_unaccounted_total") or {}).get(stage)
        rows.append(
            {
                "figure": f"accuracy {stage}: samples ÷ starts; identity",
                "measured": f"{fmt(row.get('samples_per_start'), '', 4)}; unaccounted {unacc}",
                "target": "identity holds (0 unaccounted)",
                "met": None if unacc is None else unacc == 0,
            }
        )
    if acc:
        rows.append(
            {
                "figure": "accuracy: backlog starts ÷ datagrams received by the test's socket",
                "measured": fmt(acc.get("backlog_starts_per_received"), "", 4),
                "target": "—",
                "met": None,
            }
        )
    base = r.get("per_event_baseline") or {}
    if base:
        lost = base.get("lost_share")
        lost_pct = {k: v * 100 for k, v in lost.items() if k != "rounds"} if lost else None
        rows.append(
            {
                "figure": "per_event_baseline (ring buffer → Python → Histogram.record)",
                "measured": f"{fmt(base.get('events_per_s'), ' events/s', 0)} "
                f"at {fmt(base.get('load_pps'), ' pkt/s', 0)}; lost {fmt(lost_pct, ' %')}",
                "target": "— (contrast)",
                "met": None,
            }
        )
    return rows


def markdown(r: dict) -> str:
    m = r["meta"]
    lines = [
        f"Measured {m['date']} on Linux {m['kernel']}, {m['nproc']} CPUs ({m['cpu_model']}), "
        f"load average {m['loadavg_start']} at start (a shared, noisy machine); "
        f"{'QUICK smoke run' if m['quick'] else 'full run'}, median (min–max) of {m['rounds']} rounds, "
        f"{m['total_s']:.0f} s. Produced by `make bench`; raw figures in `bench/results/{m['name']}.json`.",
        "",
        "| figure | measured | target | met |",
        "| --- | --- | --- | --- |",
    ]
    for row in r["targets"]:
        lines.append(f"| {row['figure']} | {row['measured']} | {row['target']} | {_ok(row['met'])} |")
    b = r.get("hook_cost_breakdown") or {}
    above = b.get("ns_above_floor") or {}
    if above:
        hooks = list(next(iter(above.values())))
        lines += [
            "",
            "Where the time goes: ns above the floor per event (median), the agent's program and copies "
            "of it with one piece removed, each measured alone under the same load (`hook_cost_breakdown`).",
            "",
            "| variant | " + " | ".join(h.split(":")[1] for h in hooks) + " |",
            "| --- |" + " ---: |" * len(hooks),
        ]
        for name, row in above.items():
            cells = " | ".join("—" if row[h] is None else f"{row[h]:.0f}" for h in hooks)
            lines.append(f"| {name} | {cells} |")
        floor = (b.get("ns_per_event") or {}).get("floor") or {}
        if floor:
            lines.append(
                "| (floor itself, ns) | "
                + " | ".join("—" if floor[h] is None else f"{floor[h]:.0f}" for h in hooks)
                + " |"
            )
    lines += _slow_lines(r.get("slow_records") or {})
    if r.get("errors"):
        lines += ["", "Parts that failed: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    return "\n".join(lines) + "\n"


def _slow_lines(slow: dict) -> list[str]:
    """Slow-packet records: hook cost with a threshold no sample reaches, agent CPU in a flood."""
    cost, flood = slow.get("hook_cost") or {}, slow.get("flood") or {}
    if not cost and not flood:
        return []
    lines = [
        "",
        "Slow-packet records (`slow_records`): ns per run of each hook without records and with "
        "`--slow-threshold 3600` (compiled in, no sample over it), both attached to the same events; "
        "then the agent's CPU under the saturating load with every sample slow (1 µs threshold).",
        "",
        "| hook | off ns | on ns | on ÷ off |",
        "| --- | ---: | ---: | ---: |",
    ]
    for hook, row in cost.items():
        lines.append(
            f"| {hook} | {fmt(row.get('off_ns'), '', 0)} | {fmt(row.get('on_ns'), '', 0)} "
            f"| {fmt(row.get('ratio'), '', 3)} |"
        )
    if flood:
        lines += ["", "| records | agent CPU % | pps | records written | lost |", "| --- |" + " ---: |" * 4]
        for name, row in flood.items():
            lines.append(
                f"| {name} | {row['cpu_percent']} | {row['pps']} | {row['records']:.0f} | {row['lost']:.0f} |"
            )
    return lines
