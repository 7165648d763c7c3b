"""Series expiry under pod churn: 20,000 pods come and go through the real kernel maps.

The pods are addresses of one test namespace: ``ip route add local 10.77.0.0/16 dev lo``
makes every address of the /16 local (as a pod's address is local to its network
namespace), so one UDP socket bound to 0.0.0.0 receives a datagram sent to any of them,
and each datagram takes the real receive path — backlog, stack, socket — keyed by its
exact address in the kernel's address map. No veth, no raw packets, no per-pod set-up: a
pod costs one API event and one datagram.

The agent is the real run loop (``commands.run.Agent.run``, real flags, its own process,
whose RSS is measured); only the cluster is fake: its pod index follows
:class:`~tests.support.kube_api.FakeKubeAPI` through the real Kubernetes client
(``python -m tests.kernel.test_series_expiry API_URL FLAGS...`` starts it that way, since
the in-cluster configuration needs a service account).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from otel_netlat.collect.reader import SnapshotReader
from otel_netlat.config import add_arguments, load_config
from otel_netlat.export.expiry import SeriesBook
from otel_netlat.stages.table import DIRECT_STAGES
from tests.support.agent import free_port
from tests.support.kube_api import FakeKubeAPI, make_pod
from tests.support.netns import in_netns
from tests.support.pod_net import Page, pod_ip, read_page, scrape
from tests.support.process import REPO, LoggedProcess
from tests.support.wait import poll_until

NODE = "node-a"
NAMESPACE = "churn"
PODS = 20_000
WAVE = 1_000  # pods per wave: one kernel entry each per stage below (backlog, stack, socket)
#: A datagram delivered on this host: every receive stage of a packet the host does not forward.
STAGES = tuple(s.name for s in DIRECT_STAGES if s.direction == "receive")
MAX_SERIES = 4_096  # room for one wave and a bit: a wave fits only once the one before expired
TTL_S = 1
INTERVAL_S = 0.5
BUCKETS = "0.001,1"  # two bounds: a small page to scrape again and again (buckets are not on trial)
UDP_PORT = 5353
WARM_UP_WAVES = 4


# ---- the agent process ---------------------------------------------------------------------


def agent_main(argv: list[str]) -> int:
    """``otel-netlat run FLAGS``, its pod index pointed at the fake API server ``argv[0]``."""
    from kubernetes import client as k8s  # noqa: PLC0415

    from otel_netlat.commands.run import Agent  # noqa: PLC0415
    from otel_netlat.k8s.pods import PodIndex  # noqa: PLC0415
    from otel_netlat.program.plan import plan_for_this_kernel  # noqa: PLC0415

    api_url, *flags = argv
    parser = argparse.ArgumentParser()
    add_arguments(parser, "run")
    config = load_config(parser.parse_args(flags), os.environ)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s otel-netlat %(levelname)s %(message)s")
    agent = Agent(config, plan_for_this_kernel(config))
    agent.pods = PodIndex(k8s.ApiClient(k8s.Configuration(host=api_url)), os.environ["NODE_NAME"]).start()
    return agent.run()


class ChurnAgent(LoggedProcess):
    """The agent of :func:`agent_main` as a process, on a port of its own."""

    def __init__(self, api_url: str, netns: str, log_path: Path) -> None:
        self.port = free_port()
        flags = ["--pod-attribution", "--netns", netns, "--max-series", str(MAX_SERIES)]
        flags += [
            "--series-ttl",
            str(TTL_S),
            "--interval",
            str(INTERVAL_S),
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        argv = [sys.executable, "-m", "tests.kernel.test_series_expiry", api_url, *flags]
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "KUBERNETES_SERVICE_HOST": "10.0.0.1",
            "NODE_NAME": NODE,
        }
        super().__init__(argv, log_path, env=env, name="agent")
        self.pages = 0
        self.max_live = 0.0
        self.rss_seen: list[int] = []  # the agent's RSS at each scrape since the last take_rss()

    def page(self) -> Page:
        page = read_page(scrape(f"http://127.0.0.1:{self.port}/metrics"))
        self.rss_seen.append(self.rss())
        self.pages += 1
        self.max_live = max(self.max_live, page.live_flows)
        return page

    def page_when(self, ok, what: str, timeout: float = 60.0) -> Page:
        """Scrape until a page satisfies ``ok`` (the agent's next collections are the signal)."""

        def attempt() -> Page | None:
            page = self.page()
            return page if ok(page) else None

        return self.wait_until(attempt, timeout, what, every=0.25)

    def seen_until(self, names: set[str], what: str) -> dict[str, dict[str, float]]:
        """Scrape until every pod of ``names`` was seen on some page in every stage; what it showed.

        Pages, not one page: pods whose address the index learns a collection later show up
        a collection later, and may leave (expire) earlier than the last ones arrive.
        """
        seen: dict[str, dict[str, float]] = {s: {} for s in STAGES}

        def attempt() -> bool:
            page = self.page()
            assert page.folded == 0 and not page.overflow, f"{what}: folded into the overflow series"
            for stage in STAGES:
                for pod, value in page.pods.get(stage, {}).items():
                    if pod in names:
                        seen[stage].setdefault(pod, value)
            return all(len(seen[s]) == len(names) for s in STAGES)

        def missing() -> str:
            gone = {s: sorted(names - seen[s].keys()) for s in STAGES}
            return f"not seen: { {s: (len(g), g[:3]) for s, g in gone.items()} }; pages {self.pages}"

        self.wait_until(attempt, 60, what, every=0.1, detail=missing)
        return seen

    def take_rss(self) -> tuple[int, int]:
        """(lowest, highest) RSS seen since the last call: the resident base, and with transients."""
        seen, self.rss_seen = self.rss_seen, []
        return min(seen), max(seen)

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


# ---- the namespace and the cluster ---------------------------------------------------------


@dataclass
class Pods:
    """The fake cluster's pods and the datagrams that make them visible."""

    api: FakeKubeAPI
    tx: socket.socket
    rx: socket.socket

    def add(self, first: int, n: int) -> None:
        for i in range(first, first + n):
            self.api.add(make_pod(f"pod-{i}", pod_ip(i), namespace=NAMESPACE, node=NODE))

    def delete(self, first: int, n: int) -> None:
        for i in range(first, first + n):
            self.api.delete(make_pod(f"pod-{i}", pod_ip(i), namespace=NAMESPACE, node=NODE))
        # A real API server compacts its history; this one would keep every event otherwise.
        self.api.history.clear()
        self.api.compact()

    def send(self, first: int, n: int) -> None:
        """One datagram to each pod, each read before the next is sent (every stage ends)."""
        for i in range(first, first + n):
            self.tx.sendto(b"p", (pod_ip(i), UDP_PORT))
            self.rx.recv(64)


@pytest.fixture
def pods(pod_netns) -> Iterator[Pods]:
    with FakeKubeAPI(lambda pod: None) as api:  # make_pod's shape is validated in test_pods
        with in_netns(pod_netns):
            tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with tx, rx:
            rx.bind(("0.0.0.0", UDP_PORT))
            rx.settimeout(5.0)
            yield Pods(api, tx, rx)


@pytest.fixture
def churn_agent(pods, pod_netns, kernel_info, tmp_path) -> Iterator[ChurnAgent]:
    agent = ChurnAgent(pods.api.url, pod_netns, tmp_path / "agent.log")
    try:
        agent.wait_for_http(f"http://127.0.0.1:{agent.port}/healthz", 60)
        yield agent
    finally:
        agent.stop()


# ---- the tests -----------------------------------------------------------------------------


def test_twenty_thousand_pods_churn_through_a_bounded_map(churn_agent: ChurnAgent, pods: Pods) -> None:
    """Every new pod is attributed, the map never overflows, the agent's RSS stays flat."""
    agent, t0 = churn_agent, time.monotonic()
    room = MAX_SERIES - len(STAGES) * WAVE
    rss: list[tuple[int, int]] = []  # per wave after warm-up: (lowest, highest) RSS seen
    previous: set[str] = set()
    for wave, first in enumerate(range(0, PODS, WAVE)):
        # A wave fits only once the one before has expired, from the map and from /metrics.
        agent.page_when(
            lambda p, gone=previous: (
                p.live_flows <= room and not any(gone & p.pods.get(s, {}).keys() for s in STAGES)
            ),
            f"wave {wave - 1} to expire",
        )
        low_high = agent.take_rss()
        if wave > WARM_UP_WAVES:  # the wave before was the measured one
            rss.append(low_high)
        pods.add(first, WAVE)
        pods.send(first, WAVE)
        names = {f"pod-{i}" for i in range(first, first + WAVE)}
        seen = agent.seen_until(names, f"wave {wave}")
        for stage in STAGES:  # every new pod attributed, each packet counted once
            assert {n: seen[stage][n] for n in names} == dict.fromkeys(names, 1.0), stage
        pods.delete(first, WAVE)
        previous = names
    churn_s = time.monotonic() - t0

    page = agent.page_when(lambda p: p.live_flows == 0, "the last wave to expire")
    expired = sum(page.expired.get(s, 0) for s in STAGES)
    comeback = come_back(agent, pods)
    # RSS: a wave's lowest reading is what stays resident (its highest adds what a collection
    # or a render holds for a moment); the median over five waves smooths the allocator's
    # ups and downs. Flat: the last five waves hold what the first five after warm-up held.
    base = [low for low, _ in rss]
    warm, end = statistics.median(base[:5]), statistics.median(base[-5:])
    mib = ",".join(f"{r / 2**20:.1f}" for r in (warm, end, min(base), max(base), max(h for _, h in rss)))
    report = (
        f"pods={PODS} ttl={TTL_S}s interval={INTERVAL_S}s cap={MAX_SERIES} "
        f"max_live_entries={agent.max_live:.0f} expired_entries={expired:.0f} folded={page.folded:.0f} "
        f"rss_MiB(warm,end,min,max,peak)={mib} scrapes={agent.pages} collections={page.collections:.0f} "
        f"churn_s={churn_s:.1f} {comeback}"
    )
    print(report)
    assert agent.max_live <= MAX_SERIES, report
    assert expired == len(STAGES) * PODS, report
    assert abs(end - warm) <= 0.05 * warm, f"RSS not flat: {report}"
    assert "series cap reached" not in agent.output(None)


def come_back(agent: ChurnAgent, pods: Pods) -> str:
    """A pod long expired, with its address again: a new series, counted from zero."""
    pods.add(0, 1)
    pods.send(0, 1)
    page = agent.page_when(lambda p: all("pod-0" in p.pods.get(s, {}) for s in STAGES), "pod-0 back")
    assert {s: page.pods[s]["pod-0"] for s in STAGES} == dict.fromkeys(STAGES, 1.0)  # not 2
    return "comeback=pod-0:1"


def test_idle_entries_leave_the_kernel_map_with_their_counts(pod_netns, pods, load_agent_program) -> None:
    """An idle entry is deleted from the map; its last counts go on in its series until it expires."""
    loaded = load_agent_program(
        netns=(os.stat(f"/run/netns/{pod_netns}").st_ino,), addr_labels=True, ipv4_prefix=32, max_series=64
    )
    # The exporters' TTL longer than the kernel's, to see the carried counts in between.
    reader, book = SnapshotReader(loaded.program, series_ttl_s=TTL_S), SeriesBook(2 * TTL_S)
    table = loaded.program.bpf[b"hist_addr"]
    pods.send(0, 10)
    first = book.apply(reader.read())
    assert len(list(table.keys())) == 30 == sum(p.value for p in first.series)
    counted = {p.attributes: p.value for p in first.packets}
    assert sorted(counted.values()) == [1] * 30

    def read_until(ok, what: str):
        def attempt():
            raw = reader.read()
            snap = book.apply(raw)
            return (raw, snap) if ok(raw, snap) else None

        return poll_until(attempt, 10 * TTL_S, what, every=0.05)

    # Removed from the kernel with their last counts, which the exported series still show...
    raw, snap = read_until(lambda raw, snap: raw.retired.packets, "the entries to be removed")
    assert len(list(table.keys())) == 0 and not raw.packets
    assert {p.attributes: p.value for p in raw.retired.packets} == counted
    assert {p.attributes: p.value for p in snap.packets} == counted
    assert {dict(p.attributes)["netlat.stage"]: p.value for p in raw.expired if p.value} == dict.fromkeys(
        STAGES, 10
    )
    # ...until the series themselves expire, everywhere at once.
    read_until(lambda raw, snap: not snap.packets and not snap.latency, "the series to expire")
    assert len(book) == 0
    reader.close()


if __name__ == "__main__":
    sys.exit(agent_main(sys.argv[1:]))
