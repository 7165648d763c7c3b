"""What slow-packet records cost (issue 14): nothing while no sample is slow, and an agent
CPU bounded by --slow-rate when every sample is.

1. ``hook_cost``: the default program and the same program with --slow-threshold 3600 s
   (every stage compiled with its check, no sample over it) attached together, so both see
   the same events; the kernel times each program's runs apart (bpf_stats). Per hook: ns
   per run of each, and their ratio, per round.
2. ``flood``: the agent process under the saturating load with a 1 µs threshold (every
   sample slow) at two --slow-rate values and without records: its CPU follows the rate
   limit, not the packet rate.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from bench.agent import _Window
from bench.bpfstats import bpf_stats
from bench.kernel import _per_event, measure
from bench.stats import summary
from bench.traffic import Traffic
from otel_netlat.program.build import load_program
from otel_netlat.program.plan import Plan
from tests.support.agent import AgentProcess

NEVER_NS = 3600 * 10**9


def hook_cost(traffic: Traffic, plan: Plan, rounds: int, seconds: float) -> dict:
    """ns per run of each hook, records off vs a threshold no sample reaches, same events."""
    spec = replace(plan.spec, slow_ns=tuple((s.id, NEVER_NS) for s in plan.spec.stages))
    with bpf_stats():
        off = load_program(plan.spec, plan.info)
        on = load_program(spec, plan.info)
        try:
            rows: dict[str, dict[str, list]] = {}
            for _ in range(rounds):
                d, _load = measure(traffic, {"off": off.bpf, "on": on.bpf}, seconds)
                a, b = _per_event(d["off"]), _per_event(d["on"])
                for hook in a:
                    row = rows.setdefault(hook, {"off_ns": [], "on_ns": [], "ratio": []})
                    row["off_ns"].append(a[hook])
                    row["on_ns"].append(b.get(hook))
                    row["ratio"].append(b[hook] / a[hook] if a[hook] and b.get(hook) else None)
        finally:
            on.detach()
            off.detach()
    return {h: {k: summary(v) for k, v in row.items()} for h, row in rows.items()}


def _agent_cpu(traffic: Traffic, args: list[str], seconds: float, log: Path) -> dict:
    """The agent's CPU (% of one core) over a saturating window, and what it recorded."""
    ns = ["--netns", traffic.pair.a, "--netns", traffic.pair.b]
    agent = AgentProcess([*ns, "--interval", "1", *args], None, log)
    try:
        agent.wait_ready()
        w = _Window(agent.pid)
        load = traffic.run(seconds)
        cpu, _, _ = w.close()
        m = agent.metrics()
    finally:
        agent.stop()
    records = sum(v for (name, _), v in m.items() if name == "netlat_agent_slow_records_total")
    lost = sum(v for (name, _), v in m.items() if name == "netlat_agent_slow_lost_total")
    return {"cpu_percent": round(cpu, 2), "pps": round(load.rate), "records": records, "lost": lost}


def flood(traffic: Traffic, seconds: float, log: Path) -> dict:
    """Agent CPU with every sample slow, at --slow-rate 10 and 1000, against records off."""
    every = ["--slow-threshold", "0.000001", "--slow-rate"]
    return {
        "off": _agent_cpu(traffic, [], seconds, log),
        "rate_10": _agent_cpu(traffic, [*every, "10"], seconds, log),
        "rate_1000": _agent_cpu(traffic, [*every, "1000"], seconds, log),
    }


def slow_records(traffic: Traffic, plan: Plan, rounds: int, seconds: float, log: Path) -> dict:
    return {"hook_cost": hook_cost(traffic, plan, rounds, seconds), "flood": flood(traffic, 2 * seconds, log)}
