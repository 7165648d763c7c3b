"""``make soak``: the agent for a long stretch under the highest load reachable here.

What a node does to the agent over weeks, compressed into ``--minutes`` (30 by default):
saturating UDP between two namespaces (bench.traffic), address labels on, OTLP to a real
Collector that is stopped and started twice, a real Prometheus scraping :2112 every
second. Sampled every ``--sample`` seconds: the agent's RSS and CPU, its export-failure
counter and its log length. Passes when

- RSS grows < 5 % after warm-up (the first sixth of the run, at least two minutes), as
  the median of the last tenth of the samples against the first tenth (a render or an
  export holds a few MB for an instant: the peak is reported beside it);
- the accounting identity holds with 0 unaccounted once the load stops (per stage:
  ``netlat_packets_total`` = the sum of ``netlat_agent_entries`` over outcomes);
- export failures grow only while the Collector is down (and one export interval after);
- the log does not flood (a bounded number of lines per Collector outage);
- Prometheus scraped every second without a failed scrape.

Writes bench/results/soak.json; exits 1 when a criterion fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.stats import cpu_ns, memory_mb
from bench.traffic import REPO, Traffic
from tests.support.agent import AgentProcess, total
from tests.support.collector import CollectorProcess, build_collector
from tests.support.prom import PrometheusServer

RESULTS = REPO / "bench" / "results" / "soak.json"
OTLP_INTERVAL_S = 5.0
OUTAGE_S = 30.0
LOG_LINES_PER_OUTAGE = 6  # "Collector unreachable" once per minute at most, then "back"
CHUNK_S = 5.0


def identity(metrics: dict) -> dict[str, float]:
    """Per stage: packets counted minus the sum of their outcomes (0 when nothing is lost)."""
    stages = {dict(k[1]).get("netlat_stage") for k in metrics if k[0] == "netlat_packets_total"}
    return {
        s: total(metrics, "netlat_packets_total", netlat_stage=s)
        - total(metrics, "netlat_agent_entries", netlat_stage=s)
        for s in sorted(x for x in stages if x)
    }


def soak(minutes: float, sample_s: float, workdir: Path) -> dict:
    duration = minutes * 60
    warmup = max(120.0, duration / 6) if minutes >= 6 else duration / 3
    outages_at = (duration / 3, 2 * duration / 3)
    traffic = Traffic(max_life_s=duration + 600)
    collector = CollectorProcess(build_collector(), workdir / "collector").start()
    agent = AgentProcess(
        [
            "--netns",
            traffic.pair.a,
            "--netns",
            traffic.pair.b,
            "--address-labels",
            # Every series lives through the run: an address series that expires leaves
            # netlat_packets_total (README: use increase()), and the identity below is checked
            # on those totals. Expiry under churn has its own test (test_series_expiry.py).
            "--series-ttl",
            "604800",
            "--otlp-endpoint",
            collector.http_endpoint,
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-interval",
            str(OTLP_INTERVAL_S),
            "--interval",
            "1",
        ],
        None,
        workdir / "agent.log",
    )
    prom = None
    samples: list[dict] = []
    outages: list[tuple[float, float]] = []
    sent = received = 0
    try:
        agent.wait_ready()
        (workdir / "prom").mkdir()
        prom = PrometheusServer([f"127.0.0.1:{agent.port}"], workdir / "prom")
        t0 = time.monotonic()
        next_sample = 0.0
        pending = list(outages_at)
        down_since: float | None = None
        while (now := time.monotonic() - t0) < duration:
            if pending and now >= pending[0] and down_since is None:
                pending.pop(0)
                collector.stop()
                down_since = now
            elif down_since is not None and now - down_since >= OUTAGE_S:
                collector.start()
                outages.append((down_since, time.monotonic() - t0))
                down_since = None
            load = traffic.run(CHUNK_S)
            sent += load.sent
            received += load.received
            if now >= next_sample:
                next_sample = now + sample_s
                m = agent.metrics()
                samples.append(
                    {
                        "t": round(time.monotonic() - t0, 1),
                        "rss_mb": memory_mb(agent.pid)["VmRSS"],
                        "cpu_s": round(cpu_ns(agent.pid) / 1e9, 2),
                        "export_failures": total(m, "netlat_agent_export_failures_total"),
                        "series": total(m, "netlat_agent_series_live"),
                        "log_lines": len(agent.output(None).splitlines()),
                        "pps": round(load.rate),
                    }
                )
        if down_since is not None:
            collector.start()
            outages.append((down_since, time.monotonic() - t0))
        # The load is off: one whole read later the identity must hold exactly.
        time.sleep(0.5)
        agent.wait_for_collections(2)
        final = agent.metrics()
        scrapes = prom.query(f"count_over_time(up[{int(duration)}s])")
        scrape_failures = prom.query(f"count_over_time((up == 0)[{int(duration)}s:1s])")
        log = agent.output(None)
    finally:
        if prom is not None:
            prom.stop()
        agent.stop()
        collector.stop()
        traffic.close()
    return verdict(duration, warmup, samples, outages, final, scrapes, scrape_failures, log, sent, received)


def verdict(duration, warmup, samples, outages, final, scrapes, scrape_failures, log, sent, received) -> dict:
    after = [s for s in samples if s["t"] >= warmup] or samples[-1:]
    # The trend, not an instant: a render or an export holds ~10 MB for a moment (then the
    # heap is trimmed). Medians of the first and last tenth after warm-up; the peak is shown.
    tenth = max(1, len(after) // 10)
    base = statistics.median(s["rss_mb"] for s in after[:tenth])
    end = statistics.median(s["rss_mb"] for s in after[-tenth:])
    peak = max(s["rss_mb"] for s in after)
    growth = (end - base) / base
    unaccounted = identity(final)
    # A failure counted outside an outage (plus one export interval and a sample period)
    # is a failure the Collector did not cause.
    slack = OTLP_INTERVAL_S + 2 * (samples[1]["t"] - samples[0]["t"] if len(samples) > 1 else 10)
    stray = []
    for prev, cur in zip(samples, samples[1:], strict=False):
        if cur["export_failures"] > prev["export_failures"]:
            inside = any(a <= cur["t"] and prev["t"] <= b + slack for a, b in outages)
            if not inside:
                stray.append((prev["t"], cur["t"]))
    lines = len(log.splitlines())
    scrape_count = sum(float(r["value"][1]) for r in scrapes)
    failed_scrapes = sum(float(r["value"][1]) for r in scrape_failures)
    checks = {
        "rss_growth_after_warmup_below_5pct": growth < 0.05,
        "identity_unaccounted_zero": all(v == 0 for v in unaccounted.values()),
        "export_failures_only_during_outages": not stray and samples[-1]["export_failures"] > 0,
        "no_log_flood": lines <= 20 + LOG_LINES_PER_OUTAGE * len(outages),
        "prometheus_scraped_every_second": failed_scrapes == 0 and scrape_count >= 0.9 * duration,
        "no_traceback": "Traceback" not in log,
    }
    return {
        "minutes": round(duration / 60, 1),
        "passed": all(checks.values()),
        "checks": checks,
        "load": {
            "datagrams_sent": sent,
            "datagrams_received": received,
            "mean_pps": round(received / duration),
        },
        "rss_mb": {
            "after_warmup_median": base,
            "at_end_median": end,
            "growth": round(growth, 4),
            "peak_after_warmup": peak,
        },
        "agent_cpu_percent": round(cpu_percent(samples), 2),
        "identity_unaccounted": unaccounted,
        "collector_outages_s": [(round(a, 1), round(b, 1)) for a, b in outages],
        "export_failures": samples[-1]["export_failures"],
        "export_failures_outside_outages": stray,
        "log_lines": lines,
        "prometheus": {"scrapes": scrape_count, "failed_scrapes": failed_scrapes},
        "packets_total": {s: total(final, "netlat_packets_total", netlat_stage=s) for s in identity(final)},
        "samples": samples,
    }


def cpu_percent(samples: list[dict]) -> float:
    """The agent's CPU over the sampled stretch, in percent of one core."""
    first, last = samples[0], samples[-1]
    return (last["cpu_s"] - first["cpu_s"]) / max(1e-9, last["t"] - first["t"]) * 100


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="otel-netlat-soak-") as d:
        result = soak(args.minutes, args.sample, Path(d))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(brief, indent=1))
    print(f"soak {'passed' if result['passed'] else 'FAILED'}: {args.out}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
