"""``tx_ring`` on the host: veth is a virtual device (no parent on a bus), so every transmit
is counted as skipped (``virtual_device``), exactly, and gives no start and no sample. The
real-driver measurement runs in the qemu guests (tests/vm/test_real_driver.py)."""

from __future__ import annotations

from otel_netlat.stages.table import TX_RING
from tests.support.kernel import assert_identity, value_of
from tests.support.netns import udp_lockstep

N = 300


def test_virtual_device_transmits_are_skipped_exactly(veth_pair, load_agent_program, default_stages):
    loaded = load_agent_program(netns=veth_pair.netns_inodes, stages=(*default_stages, TX_RING))
    assert udp_lockstep(veth_pair, N) == N
    snap = loaded.read()
    # Every transmit on the pair's devices is one skip: the qdisc stage (a pfifo queue on both
    # ends) saw the same transmits, N of them the test's datagrams, plus whatever IPv6 the
    # fresh devices sent meanwhile (router solicitations, MLD reports).
    qdisc = value_of(snap.packets, netlat_stage="qdisc") + value_of(
        snap.skipped, netlat_stage="qdisc", netlat_skip_reason="non_ip"
    )
    assert value_of(snap.packets, netlat_stage="qdisc", network_transport="udp") == N
    assert value_of(snap.skipped, netlat_stage="tx_ring", netlat_skip_reason="virtual_device") == qdisc
    assert value_of(snap.packets, netlat_stage="tx_ring") == 0
    assert_identity(snap, "tx_ring")
