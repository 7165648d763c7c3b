"""The real-driver path, in the qemu guests: two virtio-net NICs joined only to each other
(tests/support/nics.py), each in a namespace of its own. Packets cross NAPI, GRO, the
device's interrupts and TX completion, which veth never shows.

Counts are exact: every datagram is one ``stack``, ``socket``, ``qdisc`` and ``tx_ring``
sample (``tx_ring``: from the driver being handed the skb until virtio-net frees it on the
device's completion), none reaches ``backlog`` (NAPI without RPS bypasses it), each takes
GRO's list path (counted for ``ip_rcv``, which it bypasses) and raises NET_RX. Each stage's
terms are printed for the record.
"""

from __future__ import annotations

from otel_netlat.commands.watch import quantile
from otel_netlat.stages.table import DIRECT_STAGES, TX_RING
from tests.support.kernel import assert_identity, hist_of, softirq, value_of
from tests.support.netns import udp_lockstep

N = 200
#: The stages a datagram between two hosts passes, and the NIC's transmit ring.
STAGES = (*(s.name for s in DIRECT_STAGES), TX_RING.name)
#: The stages a datagram can miss when a reader takes it before its notification (below).
READER_RACE = ("stack", "socket")
#: No sample can be longer than the test itself (seconds, generous for qemu's software CPU).
WALL_S = 60.0


def test_virtio_path_counts_each_datagram_once_per_stage(nic_pair, load_agent_program, default_stages):
    nic_pair.quiet_ipv4()
    loaded = load_agent_program(netns=nic_pair.netns_inodes, stages=(*default_stages, TX_RING), softirq=True)
    before = loaded.reader.read()
    assert udp_lockstep(nic_pair, N) == N
    snap = loaded.read()
    udp = {"network_transport": "udp", "network_type": "ipv4"}
    for stage in STAGES:
        terms = assert_identity(snap, stage)
        buckets, count, _ = hist_of(snap, netlat_stage=stage, **udp)
        p50 = quantile(snap.bounds_s, buckets, 0.5) * 1e6 if count else 0.0
        print(f"virtio-net {stage}: udp samples {count}, p50 {p50:.1f} us; terms {terms}")
    assert value_of(snap.packets, netlat_stage="backlog") == 0  # NAPI, no RPS: no CPU backlog
    for stage in (s for s in STAGES if s != "backlog" and s not in READER_RACE):
        assert hist_of(snap, netlat_stage=stage, **udp)[1] == N, stage
    # A reader already in recvmsg can take a datagram between its queueing and the socket's
    # notification (qemu's software vCPUs widen that window: seen once, on 6.1): that
    # datagram's stack start is then counted no_socket and it starts no socket wait.
    stack = hist_of(snap, netlat_stage="stack", **udp)[1]
    assert N - 1 <= stack <= N and hist_of(snap, netlat_stage="socket", **udp)[1] == stack
    assert value_of(snap.entries, netlat_stage="stack", netlat_outcome="no_socket") >= N - stack
    # GRO: virtio-net hands every packet to napi_gro_receive, whose batches reach IP through
    # ip_list_rcv: the ip_rcv stage (fentry in the guests) sees none, and counts each one.
    assert "ip_rcv" in {s.name for s in default_stages}
    assert value_of(snap.packets, netlat_stage="ip_rcv", **udp) == 0
    assert value_of(snap.skipped, netlat_stage="ip_rcv", netlat_skip_reason="list_path") == N
    # Interrupts: the device's interrupts raise NET_RX, whose runs poll the NAPI instances.
    # Not one raise per datagram: a raise while NET_RX is pending or running (a transmit
    # completion, the next datagram) is the same wait, so at least half of N.
    for phase in ("wait", "runtime"):
        got = softirq(snap, "net_rx", phase).count - softirq(before, "net_rx", phase).count
        print(f"virtio-net softirq net_rx {phase}: {got} for {N} datagrams")
        assert got >= N // 2, (phase, got)
    for series in snap.latency:
        top = max((i for i, c in enumerate(series.bucket_counts) if c), default=0)
        assert top == 0 or snap.bounds_s[top - 1] < WALL_S, dict(series.attributes)
