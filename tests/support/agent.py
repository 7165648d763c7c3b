"""The agent as a real process: ``otel-netlat run`` started, scraped and stopped by tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "otel_netlat.commands.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text → {(sample name, labels): value}."""
    out: dict[tuple[str, frozenset], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def total(metrics: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= ls)


class AgentProcess:
    """One ``otel-netlat run`` subprocess listening on 127.0.0.1:<port>."""

    def __init__(self, args: list[str], env: dict[str, str] | None, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")  # noqa: SIM115 — closed in stop()
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONPATH", str(REPO))
        self.proc = subprocess.Popen(
            [*AGENT, "run", "--listen", f"127.0.0.1:{self.port}", *args],
            cwd=REPO,
            env=full_env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as r:
            return r.read().decode()

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return parse_metrics(self.scrape())

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Wait for the first /metrics answer with kernel data; returns seconds waited."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}: {self.output()}")
            try:
                if "netlat_agent_probes" in self.scrape():
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"agent not ready after {timeout}s: {self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()[-3000:]

    def stop(self, timeout: float = 5.0) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds it took). Kills it if it hangs."""
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode, time.monotonic() - t0


@pytest.fixture
def start_agent(require_root, tmp_path) -> Iterator:
    """Factory: ``start_agent("--netns", ns, ..., env={...})`` → a ready AgentProcess."""
    started: list[AgentProcess] = []

    def start(*args: str, env: dict[str, str] | None = None, wait: bool = True) -> AgentProcess:
        agent = AgentProcess(list(args), env, tmp_path / f"agent-{len(started)}.log")
        started.append(agent)
        if wait:
            agent.wait_ready()
        return agent

    yield start
    for agent in started:
        agent.stop()
