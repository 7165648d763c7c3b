"""The agent as a real process: ``otel-netlat run`` started, scraped and stopped by tests."""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import REPO, LoggedProcess, http_get

AGENT = [sys.executable, "-m", "otel_netlat.commands.cli"]
COLLECTIONS = "netlat_agent_collection_duration_seconds_count"


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


class AgentProcess(LoggedProcess):
    """One ``otel-netlat run`` subprocess listening on 127.0.0.1:<port>.

    ``wrapper`` goes before the command (``setpriv ... --``): it must exec the agent, so that
    signals reach it and ``pid`` is the agent's.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None,
        log_path: Path,
        wrapper: Sequence[str] = (),
    ) -> None:
        self.port = free_port()
        full_env = {**os.environ, **(env or {})}
        full_env.setdefault("PYTHONPATH", str(REPO))
        argv = [*wrapper, *AGENT, "run", "--listen", f"127.0.0.1:{self.port}", *args]
        super().__init__(argv, log_path, env=full_env, name="agent")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def scrape(self) -> str:
        return http_get(self.url).decode()

    def metrics(self) -> dict[tuple[str, frozenset], float]:
        return parse_metrics(self.scrape())

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Until /healthz answers 200: every program attached and the first snapshot taken.

        Returns the seconds waited. /metrics then holds kernel data (checked here).
        """
        t0 = time.monotonic()
        self.wait_for_http(self.health_url, timeout)
        assert "netlat_agent_probes" in self.scrape(), f"ready without kernel data:\n{self.output()}"
        return time.monotonic() - t0

    def collections(self) -> float:
        """How many times the agent has read the kernel maps so far."""
        return total(self.metrics(), COLLECTIONS)

    def wait_for_collections(self, n: int = 2, timeout: float = 30.0) -> None:
        """Until the agent has read the kernel maps ``n`` more times.

        With n=2 one whole read started after this call: the snapshot served then holds
        every packet the test's traffic (sent and received before the call) produced.
        """
        want = self.collections() + n
        self.wait_until(lambda: self.collections() >= want, timeout, f"{n} more collections")


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
