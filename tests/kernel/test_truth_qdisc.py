"""Ground truth for the ``qdisc`` stage: tbf at a known rate gives each packet a wait the
test computes (bytes ahead of it ÷ rate), and a noqueue device gives no sample at all."""

from __future__ import annotations

import socket
import time

from tests.support.kernel import assert_identity, value_of
from tests.support.netns import VethPair, socket_in, tcp_transfer
from tests.support.truth import assert_cdf_close, assert_truth, edges_around, measure, truth_bounds

RATE_BPS = 1_000_000 // 8  # tbf rate 1mbit, in bytes per second
BURST = 1600  # tbf burst (bytes): the bucket is full when the burst starts
PAYLOAD = 1000
WIRE = PAYLOAD + 8 + 20 + 14  # UDP + IPv4 + Ethernet headers: what tbf charges per packet


def shaped_burst(pair: VethPair, n: int) -> list[float]:
    """``n`` datagrams into tbf at once; each one's computed wait in the qdisc.

    Packet i leaves when the bucket has earned the bytes of packets 0..i beyond the initial
    burst: at t0 + max(0, (i + 1) * WIRE - BURST) / rate; it entered at its own send time.
    """
    rx = socket_in(pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.settimeout(5.0)
    sent = []
    with rx, tx:
        rx.bind((pair.b4, 0))
        addr = rx.getsockname()
        for _ in range(n):
            sent.append(time.monotonic())
            tx.sendto(b"q" * PAYLOAD, addr)
        for _ in range(n):
            rx.recv(2048)
    t0 = sent[0]
    return [t0 + max(0, (i + 1) * WIRE - BURST) / RATE_BPS - t for i, t in enumerate(sent)]


def test_tbf_wait_matches_the_computed_delay(veth_pair, load_agent_program):
    veth_pair.add_tbf(veth_pair.a, veth_pair.dev_a, "1mbit")
    n = 100
    loaded = load_agent_program(netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.01, 0.9))
    expected = shaped_burst(veth_pair, n)
    snap = loaded.read()
    window = edges_around(snap.bounds_s, 0.0, max(expected) * 1.1)
    truth = measure(snap, expected, window, netlat_stage="qdisc", network_transport="udp")
    print(truth.row("qdisc tbf"))
    assert truth.samples == n
    assert_truth(truth, "qdisc", n)
    # Stronger than a median: the whole distribution, packet waits spread over 0-0.8 s.
    assert_cdf_close(snap, expected, 0.05, netlat_stage="qdisc", network_transport="udp")
    assert_identity(snap, "qdisc")


def test_noqueue_gives_no_sample(veth_pair, load_agent_program):
    """veth's default noqueue: nothing waits, so no sample; every packet counted as skipped."""
    veth_pair.set_noqueue(veth_pair.a, veth_pair.dev_a)
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    n = 200
    rx = socket_in(veth_pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket_in(veth_pair.a, socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((veth_pair.b4, 0))
        rx.settimeout(5.0)
        for _ in range(n):
            tx.sendto(b"n" * 64, rx.getsockname())
            rx.recv(2048)
    snap = loaded.read()
    assert value_of(snap.packets, netlat_stage="qdisc", network_transport="udp") == 0
    assert value_of(snap.skipped, netlat_stage="qdisc", netlat_skip_reason="noqueue") >= n
    assert_identity(snap, "qdisc")


def test_gso_packets_split_by_tbf_are_counted_segmented(veth_pair, load_agent_program):
    """A TCP stream with TSO into a tbf whose burst is smaller than its GSO packets: tbf splits
    each in software and frees it. Those are `segmented` (their segments are new skbs), never
    `no_socket`, and every start is accounted."""
    veth_pair.add_tbf(veth_pair.a, veth_pair.dev_a, "20mbit")
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    assert tcp_transfer(veth_pair, 300_000) == 300_000
    snap = loaded.read()
    terms = assert_identity(snap, "qdisc")
    assert terms["segmented"] > 0, terms
    assert terms["no_socket"] == 0, terms
