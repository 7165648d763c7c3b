"""Opt-in per-prefix address labels, aggregated in the kernel key, under one series cap."""

from __future__ import annotations

import socket

from tests.support.kernel import assert_identity, value_of
from tests.support.netns import udp_lockstep, udp_to_closed_port


def _udp(points, stage: str):
    return [
        p
        for p in points
        if dict(p.attributes).get("netlat.stage") == stage
        and dict(p.attributes).get("network.transport") == "udp"
    ]


def test_prefix_labels(veth_pair, load_agent_program):
    loaded = load_agent_program(
        netns=veth_pair.netns_inodes, addr_labels=True, ipv4_prefix=24, ipv6_prefix=64
    )
    udp_lockstep(veth_pair, 200)
    udp_lockstep(veth_pair, 100, socket.AF_INET6)
    udp_to_closed_port(veth_pair, 10)
    snap = loaded.read()
    net4 = veth_pair.a4.rsplit(".", 1)[0] + ".0/24"
    backlog = {
        (dict(p.attributes)["source.address"], dict(p.attributes)["destination.address"]): p.value
        for p in _udp(snap.packets, "backlog")
    }
    assert backlog[(net4, net4)] == 210
    v6 = [k for k in backlog if ":" in k[0]]
    assert len(v6) == 1 and backlog[v6[0]] == 100 and v6[0][0].endswith("::/64")
    series = [
        s
        for s in snap.latency
        if dict(s.attributes).get("netlat.stage") == "qdisc"
        and dict(s.attributes).get("network.transport") == "udp"
    ]
    assert sum(s.count for s in series) == 310
    drops = [
        p
        for p in snap.drops
        if dict(p.attributes)["netlat.drop.reason"] == "NO_SOCKET"
        and dict(p.attributes)["network.transport"] == "udp"
    ]
    assert sum(p.value for p in drops) == 10
    assert all(dict(p.attributes)["destination.address"] == net4 for p in drops)
    for stage in ("backlog", "stack", "socket", "qdisc"):
        assert_identity(snap, stage)


def test_series_cap_folds_into_overflow(veth_pair, load_agent_program):
    """With room for 2 series, the rest folds into otel.metric.overflow=true: counted, not lost."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes, addr_labels=True, max_series=2)
    udp_lockstep(veth_pair, 100)
    udp_lockstep(veth_pair, 50, socket.AF_INET6)
    snap = loaded.read()
    keys = {p.attributes for p in snap.packets}
    overflow = [p for p in snap.packets if dict(p.attributes).get("otel.metric.overflow") == "true"]
    assert len(keys) <= 3  # two real series + the overflow series
    assert overflow, "nothing folded although more than two series were seen"
    # Every packet is somewhere: the starts of all stages add up across real + overflow series.
    total_starts = sum(p.value for p in snap.packets)
    assert total_starts >= 4 * 150  # backlog, stack, socket, qdisc each saw every datagram
    assert value_of(snap.folded) > 0
