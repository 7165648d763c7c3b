"""``make bench``: run every part, write ``bench/results/<name>.json`` and ``<name>.md``.

Parts run one after another on one pair of namespaces; each is independent, so one that
fails is recorded (its keys stay in the JSON as null, the reason under ``errors``) and the
others still run. The namespaces are removed and BPF statistics released whatever happens.
``--quick`` is a smoke run (< 60 s) that writes ``quick.*`` and leaves ``latest.*`` alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

#: Keys the JSON always has (null when their part could not run).
REQUIRED = (
    "ns_per_event",
    "ns_per_event_floor",
    "throughput_ratio",
    "throughput_ratio_floor",
    "tcp_stream_ratio",
    "rr_added_us",
    "kernel_ns_per_packet",
    "agent_cpu_percent",
    "agent_cpu_per_mpkt_s",
    "agent_rss_mb",
    "startup_s",
    "scrape_ms",
    "scrape_ms_stock",
    "otlp_export_ms",
    "accuracy",
    "per_event_baseline",
)


class Settings:
    """Durations and round counts: full (~5 min) or quick (< 60 s)."""

    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.rounds = 3 if quick else 7
        self.load_s = 0.6 if quick else 3.0
        self.throughput_rounds = 3 if quick else 10
        self.throughput_s = 0.6 if quick else 1.5
        self.accuracy_rounds = 3 if quick else 5
        self.accuracy_s = 0.6 if quick else 2.0
        self.agent_rounds = 3
        self.agent_window_s = 1.0 if quick else 4.0
        self.agent_interval_s = 1.0
        self.breakdown_rounds = 0 if quick else 5
        self.breakdown_s = 0.8
        self.stream_rounds = 2 if quick else 7
        self.stream_s = 0.5 if quick else 2.0
        self.rr_exchanges = 1000 if quick else 5000
        self.scrape_sizes = (1000, 10000)
        #: The stock path takes ~3 s per scrape at 10,000 series: full run only.
        self.stock_sizes = (1000,) if quick else (1000, 10000)
        self.scrape_rounds = 3


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "kernel": platform.release(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
    }


def _versions() -> dict:
    from importlib import metadata  # noqa: PLC0415

    out = {}
    for dist in ("opentelemetry-sdk", "opentelemetry-exporter-prometheus", "prometheus_client"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    dpkg = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "python3-bpfcc"], capture_output=True, text=True, check=False
    )
    out["bcc"] = dpkg.stdout.strip() or None
    return out


def run(settings: Settings, log) -> dict:
    from bench.agent import agent  # noqa: PLC0415
    from bench.baseline import per_event  # noqa: PLC0415
    from bench.breakdown import breakdown  # noqa: PLC0415
    from bench.export import otlp_export, scrape  # noqa: PLC0415
    from bench.kernel import accuracy, cost, default_plan, throughput  # noqa: PLC0415
    from bench.slow import slow_records  # noqa: PLC0415
    from bench.stream import rr, tcp_stream  # noqa: PLC0415
    from bench.traffic import Traffic  # noqa: PLC0415

    s = settings
    result: dict = {k: None for k in REQUIRED}
    errors: dict[str, str] = {}
    phases: dict[str, float] = {}
    workdir = Path(tempfile.mkdtemp(prefix="otel-netlat-bench-"))

    def part(name: str, fn, *args, key: str | None = None) -> None:
        log(f"{name} …")
        t0 = time.monotonic()
        try:
            out = fn(*args)
            if key:
                result[key] = out
            else:
                result.update(out)
        except Exception as e:  # one broken part must not cost the others
            errors[name] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        phases[name] = round(time.monotonic() - t0, 1)
        log(f"{name} done in {phases[name]} s")

    plan = default_plan()
    traffic = Traffic()
    try:
        part("cost", cost, traffic, plan, s.rounds, s.load_s, s.load_s)
        part("throughput", throughput, traffic, plan, s.throughput_rounds, s.throughput_s, not s.quick)
        part("accuracy", accuracy, traffic, plan, s.accuracy_rounds, s.accuracy_s, key="accuracy")
        part(
            "agent",
            agent,
            traffic,
            s.agent_rounds,
            s.agent_interval_s,
            s.agent_window_s,
            workdir / "agent.log",
        )
        part("per_event_baseline", per_event, traffic, plan, s.rounds, s.load_s, key="per_event_baseline")
        part(
            "slow_records",
            slow_records,
            traffic,
            plan,
            s.rounds,
            s.load_s,
            workdir / "slow-agent.log",
            key="slow_records",
        )
        if s.breakdown_rounds:
            part(
                "hook_cost_breakdown",
                breakdown,
                traffic,
                plan,
                s.breakdown_rounds,
                s.breakdown_s,
                key="hook_cost_breakdown",
            )
        else:
            result["hook_cost_breakdown"] = None  # full run only
    finally:
        traffic.close()
    part("tcp_stream", tcp_stream, plan, s.stream_rounds, s.stream_s)
    part("rr", rr, plan, s.stream_rounds, s.rr_exchanges)
    part("scrape", scrape, s.scrape_sizes, s.stock_sizes, s.scrape_rounds)
    part("otlp", otlp_export, s.scrape_sizes, s.scrape_rounds, workdir / "collector")
    result["errors"] = errors
    result["meta_phases_s"] = phases
    if errors:
        result["logs"] = str(workdir)  # the agent's and the Collector's logs, for the failures
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def _interrupted(*_: object) -> None:
    """SIGTERM unwinds like Ctrl-C: namespaces, load processes and agents are cleaned up."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.run", description="What otel-netlat costs (bench/README.md).")
    p.add_argument("--quick", action="store_true", help="smoke run under 60 s; writes results/quick.*")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for <name>.json and <name>.md")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (BPF programs, network namespaces)", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupted)
    settings = Settings(args.quick)
    name = "quick" if args.quick else "latest"
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **machine(),
        "quick": args.quick,
        "rounds": settings.rounds,
        "name": name,
        "versions": _versions(),
    }
    result = run(settings, log)
    meta["total_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    meta["phases_s"] = result.pop("meta_phases_s")
    from bench.report import markdown, targets  # noqa: PLC0415

    result = {"meta": meta, **result}
    result["targets"] = targets(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    md = markdown(result)
    (args.out / f"{name}.md").write_text(md)
    print(md)
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
