"""Ground truth for ``forward`` and re-entry: a node-shaped topology, each hop measured once.

On a Kubernetes node every pod packet is received by the node, routed or bridged, sent on a
veth and received again in the pod, with the same skb: ``netif_receive_skb`` fires twice.
The node's hop is ``forward``; the pod's receive is ``stack``; nothing is ``overwritten``.
"""

from __future__ import annotations

from tests.support.kernel import assert_identity, hist_of, value_of
from tests.support.topology import Node, nft_forward_rules, udp_lockstep_between

N = 500
UDP = {"network_type": "ipv4", "network_transport": "udp"}


def _entries(snap, stage: str) -> dict[str, int]:
    return {
        dict(p.attributes)["netlat.outcome"]: p.value
        for p in snap.entries
        if dict(p.attributes)["netlat.stage"] == stage
    }


def test_pod_to_pod_each_hop_once(node_topology: Node, load_agent_program):
    node = node_topology
    loaded = load_agent_program(netns=node.netns_inodes)
    assert udp_lockstep_between(node.pod1, node.pod2, node.ip2, N) == N
    snap = loaded.read()
    # The node's hop, routed or bridged between two ports, is forward.
    assert hist_of(snap, netlat_stage="forward", **UDP)[1] == N
    stack = _entries(snap, "stack")
    # The pod's own receive: one stack sample per datagram, and the node's hop forwarded.
    assert hist_of(snap, netlat_stage="stack", **UDP)[1] >= 0.99 * N
    assert stack["forwarded"] >= N and stack["overwritten"] == 0, stack
    for stage in ("stack", "forward"):
        assert_identity(snap, stage)


def test_pod_to_node_is_one_stack_sample(node_topology: Node, load_agent_program):
    """Bridged to the node's own address: received on the port, then on br0 — one start."""
    node = node_topology
    loaded = load_agent_program(netns=node.netns_inodes)
    assert udp_lockstep_between(node.pod1, node.node, node.node_ip, N) == N
    snap = loaded.read()
    assert hist_of(snap, netlat_stage="forward", **UDP)[1] == 0
    assert value_of(snap.packets, netlat_stage="stack", **UDP) == N
    assert hist_of(snap, netlat_stage="stack", **UDP)[1] >= 0.99 * N
    assert _entries(snap, "stack")["overwritten"] == 0
    assert_identity(snap, "stack")


def _forward_mean(loaded, node: Node, n: int) -> float:
    before = hist_of(loaded.read(0), netlat_stage="forward", **UDP)
    assert udp_lockstep_between(node.pod1, node.pod2, node.ip2, n) == n
    after = hist_of(loaded.read(), netlat_stage="forward", **UDP)
    count, total = after[1] - before[1], after[2] - before[2]
    assert count == n
    return total / count


def test_forward_rules_make_forward_slower(routed_node: Node, load_agent_program):
    """1,000 netfilter rules in the node's forward chain, walked by every packet: forward grows."""
    loaded = load_agent_program(netns=routed_node.netns_inodes)
    bare = _forward_mean(loaded, routed_node, 300)
    nft_forward_rules(routed_node, 1000)
    ruled = _forward_mean(loaded, routed_node, 300)
    print(f"forward mean: {bare / 1e3:.1f} us without rules, {ruled / 1e3:.1f} us with 1,000")
    assert ruled > 2 * bare, (bare, ruled)
