"""Pods as addresses: a namespace where all of 10.77.0.0/16 is local, and the agent's page.

``ip route add local 10.77.0.0/16 dev lo`` makes every pod address local to one test
namespace, so one UDP socket receives datagrams to any pod IP and each passes the receive
stages for real. Shared by the series-expiry churn test and the memory-limit test.
"""

from __future__ import annotations

import gzip
import re
import secrets
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.netns import sh
from tests.support.process import LOOPBACK


def pod_ip(i: int) -> str:
    return f"10.77.{i // 250}.{i % 250 + 1}"


SAMPLE = re.compile(r"^(netlat_packets_total|netlat_agent_series_\w+)\{(.*?)\} (\S+)$", re.M)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="([^"]*)"')


@dataclass
class Page:
    """What the test reads from /metrics (regular expressions: prometheus_client's parser
    takes seconds on a page this size; the format itself is checked in test_telemetry)."""

    collections: float = 0
    live: dict[str, float] = field(default_factory=dict)  # netlat_agent_series_live by stage
    expired: dict[str, float] = field(default_factory=dict)
    folded: float = 0
    overflow: bool = False
    pods: dict[str, dict[str, float]] = field(default_factory=dict)  # stage → pod → packets

    @property
    def live_flows(self) -> float:
        """Entries in use in the address-labelled histogram map (every stage but drops)."""
        return sum(v for stage, v in self.live.items() if stage != "drops")


def scrape(url: str) -> str:
    """/metrics as Prometheus fetches it: gzipped (the agent keeps only the gzipped page)."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with LOOPBACK.open(request, timeout=60) as response:
        body = response.read()
        return (
            gzip.decompress(body) if response.headers.get("Content-Encoding") == "gzip" else body
        ).decode()


def read_page(text: str) -> Page:
    page = Page()
    for name, labels, value in SAMPLE.findall(text):
        ls = dict(LABEL.findall(labels))
        v = float(value)
        if ls.get("otel_metric_overflow") == "true":
            page.overflow = True
        elif name == "netlat_agent_series_live":
            page.live[ls["netlat_stage"]] = v
        elif name == "netlat_agent_series_expired_total":
            page.expired[ls["netlat_stage"]] = v
        elif name == "netlat_agent_series_folded_total":
            page.folded += v
        elif name == "netlat_packets_total" and "k8s_pod_name" in ls:
            page.pods.setdefault(ls["netlat_stage"], {})[ls["k8s_pod_name"]] = v
    count = re.search(r"^netlat_agent_collection_duration_seconds_count (\S+)$", text, re.M)
    page.collections = float(count.group(1)) if count else 0
    return page


@pytest.fixture
def pod_netns(require_root) -> Iterator[str]:
    """A namespace where every address of 10.77.0.0/16 is local, removed afterwards."""
    ns = f"nl-ttl-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "local", "10.77.0.0/16", "dev", "lo")
        yield ns
    finally:
        sh("ip", "netns", "del", ns, check=False)
