"""The stages, measured for real: the agent's BPF program in the running kernel, real packets
between two namespaces, exact counts wherever the kernel makes them exact."""

from __future__ import annotations

import socket
import time

import pytest

from otel_netlat.commands.watch import quantile
from tests.support.kernel import assert_identity, assert_qdisc_samples, hist_of, value_of
from tests.support.netns import (
    icmp_echo,
    sh,
    tcp_transfer,
    udp_burst,
    udp_lockstep,
    udp_recvmmsg_paced,
    udp_to_closed_port,
)

N = 1000
STAGES = ("backlog", "stack", "socket", "qdisc")


@pytest.mark.parametrize("family,net_type", [(socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6")])
def test_udp_lockstep_counts_every_stage(veth_pair, load_agent_program, family, net_type):
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    assert udp_lockstep(veth_pair, N, family) == N
    snap = loaded.read()
    udp = {"network_type": net_type, "network_transport": "udp"}

    # Exact: every datagram is queued to the receiver's backlog once (veth without GRO)
    # and passes the sender's qdisc layer once.
    for stage in ("backlog", "qdisc"):
        assert value_of(snap.packets, netlat_stage=stage, **udp) == N, stage
        assert hist_of(snap, netlat_stage=stage, **udp)[1] == N, stage
    # stack: matched through the socket's queue tail; a tail a reader drained first gives no sample.
    assert value_of(snap.packets, netlat_stage="stack", **udp) == N
    stack_samples = hist_of(snap, netlat_stage="stack", **udp)[1]
    unmatched = value_of(snap.unmatched, netlat_stage="stack")
    assert 0.99 * N <= stack_samples <= N
    assert stack_samples + unmatched == N
    # socket: a lockstep reader reads each datagram once: one sample per read.
    assert hist_of(snap, netlat_stage="socket", **udp)[1] == N
    for stage in STAGES:
        assert_identity(snap, stage)


def test_stack_with_gro_on_receiving_veth(veth_pair, load_agent_program):
    veth_pair.set_gro(veth_pair.b, veth_pair.dev_b, True)
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    assert udp_lockstep(veth_pair, N) == N
    snap = loaded.read()
    udp = {"network_type": "ipv4", "network_transport": "udp"}
    # With GRO, veth delivers through NAPI: nothing passes the backlog.
    assert value_of(snap.packets, netlat_stage="backlog", **udp) == 0
    assert value_of(snap.packets, netlat_stage="stack", **udp) == N
    samples = hist_of(snap, netlat_stage="stack", **udp)[1]
    assert 0.99 * N <= samples <= N
    assert samples + value_of(snap.unmatched, netlat_stage="stack") == N
    for stage in STAGES:
        assert_identity(snap, stage)


def test_backlog_measures_rps_steered_napi_packets(veth_pair, load_agent_program):
    """veth with GRO delivers through NAPI, without net:netif_rx: with RPS on its receive
    queue every packet still waits in a CPU backlog, and is measured there, exactly."""
    veth_pair.set_gro(veth_pair.b, veth_pair.dev_b, True)
    veth_pair.set_rps(veth_pair.b, veth_pair.dev_b, "3")
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    started = time.monotonic()
    assert udp_lockstep(veth_pair, N) == N
    wall = time.monotonic() - started
    snap = loaded.read()
    udp = {"network_type": "ipv4", "network_transport": "udp"}
    starts = value_of(snap.packets, netlat_stage="backlog", **udp)
    buckets, samples, _ = hist_of(snap, netlat_stage="backlog", **udp)
    assert (starts, samples) == (N, N), assert_identity(snap, "backlog")
    # No sample longer than the test: never a start paired with a later packet.
    assert not any(c for i, c in enumerate(buckets) if i and snap.bounds_s[i - 1] >= wall)
    assert hist_of(snap, netlat_stage="stack", **udp)[1] >= 0.99 * N
    # A TCP stream of MSS-sized segments (segmentation off at the sender): GRO merges them
    # into one it holds, and those end as coalesced, never pending or paired later.
    sh("ip", "netns", "exec", veth_pair.a, "ethtool", "-K", veth_pair.dev_a, "tso", "off", "gso", "off")
    assert tcp_transfer(veth_pair, 4 << 20) == 4 << 20
    snap = loaded.read()
    backlog = assert_identity(snap, "backlog")
    assert backlog["coalesced"] > 0 and backlog["pending"] == 0, backlog
    for stage in STAGES:
        assert_identity(snap, stage)


def _qdisc_median(loaded, veth_pair, n: int) -> float:
    before = loaded.read(0)
    assert udp_burst(veth_pair, n) == n  # all received: all left the qdisc
    after = loaded.read()
    assert_qdisc_samples(before, after, n, network_transport="udp")
    counts = tuple(
        a - b
        for a, b in zip(
            hist_of(after, netlat_stage="qdisc", network_transport="udp")[0],
            hist_of(before, netlat_stage="qdisc", network_transport="udp")[0],
            strict=True,
        )
    )
    return quantile(loaded.reader.bounds_s, counts, 0.5)


def test_tbf_moves_qdisc_median(veth_pair, load_agent_program):
    veth_pair.quiet_ipv4()  # only the test's datagrams in the queue its exact count reads
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    unshaped = _qdisc_median(loaded, veth_pair, 100)
    veth_pair.add_tbf(veth_pair.a, veth_pair.dev_a, "1mbit")
    shaped = _qdisc_median(loaded, veth_pair, 100)
    assert shaped >= 10 * unshaped, (unshaped, shaped)
    snap = loaded.read()
    assert_identity(snap, "qdisc")


def test_closed_port_drops_counted_exactly(veth_pair, load_agent_program):
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    udp_to_closed_port(veth_pair, 200)
    udp_to_closed_port(veth_pair, 50, socket.AF_INET6)
    snap = loaded.read()
    assert (
        value_of(snap.drops, netlat_drop_reason="NO_SOCKET", network_transport="udp", network_type="ipv4")
        == 200
    )
    assert (
        value_of(snap.drops, netlat_drop_reason="NO_SOCKET", network_transport="udp", network_type="ipv6")
        == 50
    )
    # The drop also ended the pending stack entries of those packets.
    terms = assert_identity(snap, "stack")
    assert terms["dropped"] >= 250


def test_icmp_echo_counts(veth_pair, load_agent_program):
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    m = 50
    assert icmp_echo(veth_pair, m) == m
    snap = loaded.read()
    icmp = {"network_type": "ipv4", "network_transport": "icmp"}
    # Requests a→b and replies b→a: each passes one backlog and one qdisc.
    assert value_of(snap.packets, netlat_stage="backlog", **icmp) == 2 * m
    assert value_of(snap.packets, netlat_stage="qdisc", **icmp) == 2 * m
    assert hist_of(snap, netlat_stage="qdisc", **icmp)[1] == 2 * m
    for stage in STAGES:
        assert_identity(snap, stage)


def test_tcp_transfer_is_measured(veth_pair, load_agent_program):
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    size = 4 << 20
    assert tcp_transfer(veth_pair, size) == size
    snap = loaded.read()
    tcp = {"network_transport": "tcp"}
    for stage in STAGES:
        assert value_of(snap.packets, netlat_stage=stage, **tcp) > 0, stage
        assert_identity(snap, stage)
    assert hist_of(snap, netlat_stage="socket", **tcp)[1] > 0
    assert hist_of(snap, netlat_stage="stack", **tcp)[1] > 0


def test_filter_excludes_other_namespaces(veth_pair, load_agent_program):
    """Filtered to another namespace, the test's traffic is skipped, not counted."""
    loaded = load_agent_program(netns=(veth_pair.netns_inodes[0],))  # only the sender side
    udp_lockstep(veth_pair, 100)
    snap = loaded.read()
    assert value_of(snap.packets, netlat_stage="backlog", network_transport="udp") == 0
    assert value_of(snap.packets, netlat_stage="qdisc", network_transport="udp") == 100
    assert value_of(snap.skipped, netlat_stage="backlog", netlat_skip_reason="filtered") >= 100


def test_interface_filter(veth_pair, load_agent_program):
    from otel_netlat.kernel.netns import ifindex_of

    ifindex = ifindex_of(veth_pair.dev_b, veth_pair.b)
    assert isinstance(ifindex, int), ifindex  # else: why it was not found
    loaded = load_agent_program(netns=veth_pair.netns_inodes, filter_ifindex=(ifindex,))
    udp_lockstep(veth_pair, 100)
    snap = loaded.read()
    assert value_of(snap.packets, netlat_stage="backlog", network_transport="udp") == 100
    # The sender's device has another index (or lives in another namespace): its qdisc is filtered out.
    assert value_of(
        snap.packets, netlat_stage="qdisc", network_transport="udp"
    ) == 0 or ifindex == ifindex_of(veth_pair.dev_a, veth_pair.a)


@pytest.mark.parametrize("family,net_type", [(socket.AF_INET, "ipv4"), (socket.AF_INET6, "ipv6")])
def test_socket_stage_ends_at_every_recvmmsg_datagram(veth_pair, load_agent_program, family, net_type):
    """recvmmsg reads its 2nd and later datagrams through sock_recvmsg_nosec: each read still
    ends the socket stage (no entry is left pending for a later read to close late)."""
    n = 60
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    assert udp_recvmmsg_paced(veth_pair, n, family) == n
    snap = loaded.read()
    udp = {"network_type": net_type, "network_transport": "udp"}
    assert value_of(snap.packets, netlat_stage="socket", **udp) == n
    terms = assert_identity(snap, "socket")
    # Paced 2 ms apart, each datagram is normally read before the next arrives; a late wake-up
    # of the reader makes a datagram join the pending one (coalesced), never a missed end.
    assert terms["sample"] + terms["coalesced"] == n, terms
    assert terms["sample"] >= 0.9 * n and terms["pending"] == 0, terms
