"""The real agent process: start-up time, memory, and CPU idle versus under load.

Started as users start it (``python -m otel_netlat.commands.cli run``, default stages, no filter),
once per round: so each round has its own start-up and memory peak (BCC's compile), then
an idle window, a window under the saturating load and one at a fixed lower rate: the
agent's CPU should not follow the packet rate. CPU is the on-CPU time of all the agent's
threads (schedstat, ns) over each window; user+sys from /proc/PID/stat (10 ms ticks) is
kept beside it as a cross-check.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from bench.kernel import PACED_PPS
from bench.stats import cpu_ns, cpu_seconds, llvm_text_mb, memory_mb, summary
from bench.traffic import REPO, Traffic
from tests.support.agent import free_port

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _ready(url: str) -> bool:
    try:
        with _http.open(url, timeout=2) as r:
            return b"netlat_agent_probes" in r.read()
    except OSError:
        return False


class _Window:
    """CPU of one process over a window: percent of one core, both ways."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0, self.ns0, self.stat0 = time.monotonic(), cpu_ns(pid), cpu_seconds(pid)

    def close(self) -> tuple[float, float, float]:
        """(percent from schedstat, percent from /proc/PID/stat, CPU seconds from schedstat)."""
        wall = time.monotonic() - self.t0
        cpu = (cpu_ns(self.pid) - self.ns0) / 1e9
        return cpu / wall * 100, (cpu_seconds(self.pid) - self.stat0) / wall * 100, cpu


def one_round(traffic: Traffic, interval: float, window_s: float, log: Path) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    cmd = [
        sys.executable,
        "-m",
        "otel_netlat.commands.cli",
        "run",
        "--listen",
        f"127.0.0.1:{port}",
        "--interval",
        str(interval),
    ]
    with open(log, "a") as logf:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT)
        try:
            startup = None
            while time.monotonic() - t0 < 15 and proc.poll() is None:
                if _ready(url):
                    startup = time.monotonic() - t0
                    break
                time.sleep(0.02)
            if startup is None:
                raise RuntimeError(f"agent not ready in 15 s (exit {proc.poll()}); see {log}")
            peak_startup = memory_mb(proc.pid)["VmHWM"]
            time.sleep(0.3)
            w = _Window(proc.pid)
            time.sleep(window_s)
            idle, idle_stat, _ = w.close()
            w = _Window(proc.pid)
            load = traffic.run(window_s)
            loaded, loaded_stat, loaded_cpu = w.close()
            w = _Window(proc.pid)
            paced_load = traffic.run(window_s, pps=PACED_PPS)
            paced, _, _ = w.close()
            mem = memory_mb(proc.pid)
            llvm = llvm_text_mb(proc.pid)
            scraped = _ready(url)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return {
        "startup_s": startup,
        "cpu_idle": idle,
        "cpu_loaded": loaded,
        "cpu_paced": paced,
        "cpu_idle_stat": idle_stat,
        "cpu_loaded_stat": loaded_stat,
        "cpu_per_mpkt": loaded_cpu / (load.received / 1e6) if load.received else None,
        "load_pps": load.rate,
        "paced_pps": paced_load.rate,
        "rss": mem["VmRSS"],
        "rss_anon": mem.get("RssAnon"),
        "rss_file": mem.get("RssFile"),
        "rss_llvm_text": llvm,
        "peak_startup": peak_startup,
        "peak": mem["VmHWM"],
        "served_after_load": scraped,
    }


def agent(traffic: Traffic, rounds: int, interval: float, window_s: float, log: Path) -> dict:
    runs = [one_round(traffic, interval, window_s, log) for _ in range(rounds)]
    col = lambda k: [r[k] for r in runs]  # noqa: E731
    return {
        "agent_cpu_percent": {
            "loaded": summary(col("cpu_loaded"), 2),
            "paced": summary(col("cpu_paced"), 2),
            "idle": summary(col("cpu_idle"), 2),
        },
        "agent_cpu_percent_proc_stat": {
            "loaded": summary(col("cpu_loaded_stat"), 2),
            "idle": summary(col("cpu_idle_stat"), 2),
        },
        "agent_cpu_per_mpkt_s": summary(col("cpu_per_mpkt"), 4),
        "agent_load_pps": summary(col("load_pps"), 0),
        "agent_cpu_paced_pps": summary(col("paced_pps"), 0),
        "agent_rss_mb": {
            "steady": summary(col("rss"), 1),
            "steady_anon": summary(col("rss_anon"), 1),
            "steady_file": summary(col("rss_file"), 1),
            "steady_llvm_text": summary(col("rss_llvm_text"), 1),
            "peak_startup": summary(col("peak_startup"), 1),
            "peak": summary(col("peak"), 1),
        },
        "startup_s": summary(col("startup_s"), 3),
        "agent_interval_s": interval,
        "agent_served_after_load": all(col("served_after_load")),
    }
