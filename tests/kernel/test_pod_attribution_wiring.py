"""Pod attribution as the agent wires it: kernel keys by exact address, then attribute()."""

from __future__ import annotations

import pytest

from otel_netlat.config import Config
from otel_netlat.k8s.attribution import attribute
from otel_netlat.program.plan import StartupError, pod_attribution_wanted
from tests.support.kernel import value_of
from tests.support.netns import udp_lockstep


class DictIndex:
    def __init__(self, pods: dict[str, tuple[str, str]]) -> None:
        self.pods = pods

    def lookup(self, ip: str):
        return self.pods.get(ip)


def test_off_outside_a_cluster(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert pod_attribution_wanted(Config(pod_attribution=True)) is False
    assert pod_attribution_wanted(Config()) is False


def test_needs_node_name_and_full_prefixes(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("NODE_NAME", raising=False)
    with pytest.raises(StartupError, match="NODE_NAME"):
        pod_attribution_wanted(Config(pod_attribution=True))
    monkeypatch.setenv("NODE_NAME", "n1")
    with pytest.raises(StartupError, match="full-length"):
        pod_attribution_wanted(Config(pod_attribution=True, address_labels=True))
    assert pod_attribution_wanted(Config(pod_attribution=True)) is True


def test_kernel_series_attributed_to_pods(veth_pair, load_agent_program):
    """Receive stages belong to the receiving pod, transmit stages to the sending one."""
    loaded = load_agent_program(
        netns=veth_pair.netns_inodes, addr_labels=True, ipv4_prefix=32, ipv6_prefix=128
    )
    udp_lockstep(veth_pair, 200)
    index = DictIndex({veth_pair.b4: ("shop", "server-0"), veth_pair.a4: ("shop", "client-0")})
    snap = attribute(loaded.read(), index, keep_addresses=False)
    udp = {"network_transport": "udp", "network_type": "ipv4"}
    assert value_of(snap.packets, netlat_stage="backlog", k8s_pod_name="server-0", **udp) == 200
    assert value_of(snap.packets, netlat_stage="qdisc", k8s_pod_name="client-0", **udp) == 200
    assert all("source.address" not in dict(p.attributes) for p in snap.packets)
    series = [
        s
        for s in snap.latency
        if dict(s.attributes).get("k8s.pod.name") == "server-0"
        and dict(s.attributes)["netlat.stage"] == "stack"
    ]
    assert sum(s.count for s in series) == 200
