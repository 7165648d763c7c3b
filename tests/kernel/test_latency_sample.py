"""--latency-sample N: one stage start in N is timed, chosen at random; every packet counted.

The untimed starts are written all the same (no clock read) and end as ``unsampled``, so the
accounting identity and the packet counts stay exact; a packet handed on from stage to stage
(backlog → stack → socket) is timed in all of them or in none; and the timed ones still
carry the true delay.
"""

from __future__ import annotations

import math

from otel_netlat.stages.table import DIRECT_STAGES
from tests.support.kernel import assert_identity, hist_of, value_of
from tests.support.netns import udp_burst_then_read, udp_lockstep
from tests.support.truth import assert_truth, edges_around, measure, truth_bounds

EVERY = 4
D = 0.3  # the reader's delay, as in test_truth_socket
UDP = {"netlat_stage": "socket", "network_transport": "udp"}


def test_counts_stay_exact_and_one_in_n_is_timed(veth_pair, load_agent_program):
    veth_pair.quiet_ipv4()  # only the test's datagrams: exact counts
    loaded = load_agent_program(netns=veth_pair.netns_inodes, latency_sample=EVERY)
    n = 2000
    assert udp_lockstep(veth_pair, n) == n
    snap = loaded.read()
    assert [p.value for p in snap.sample_every] == [EVERY]
    udp = {"network_transport": "udp"}
    # The stages a datagram between two namespaces passes here (backlog, stack, socket, qdisc).
    stages = [s.name for s in DIRECT_STAGES if value_of(snap.packets, netlat_stage=s.name, **udp)]
    assert len(stages) >= 3, stages
    timed = {}
    for stage in stages:
        terms = assert_identity(snap, stage)
        assert value_of(snap.packets, netlat_stage=stage, **udp) == n, stage
        timed[stage] = hist_of(snap, netlat_stage=stage, **udp)[1]
        # Every datagram's start ended timed or untimed (a stray packet may add to either).
        assert n <= terms["sample"] + terms["unsampled"] <= value_of(snap.packets, netlat_stage=stage), terms
    print(f"latency sample 1 in {EVERY}: {n} datagrams, timed {timed}")
    # Binomial(n, 1/N): within 6 standard deviations of n/N (a false failure ~1 in 10^9).
    sd = math.sqrt(n * (1 / EVERY) * (1 - 1 / EVERY))
    assert all(abs(t - n / EVERY) <= 6 * sd for t in timed.values()), timed
    # One decision per packet at its first receive stage: the stages it is handed on to
    # (backlog → stack → socket) inherit it. Transmit (qdisc) decides on its own.
    received = {timed[s.name] for s in DIRECT_STAGES if s.name in timed and s.direction == "receive"}
    assert len(received) == 1, timed


def test_timed_packets_carry_the_true_delay(veth_pair, load_agent_program):
    """The reader 0.3 s late (test_truth_socket's burst): the sampled quarter waits as long."""
    loaded = load_agent_program(
        netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.1, 0.6), latency_sample=EVERY
    )
    n = 600
    waits = udp_burst_then_read(veth_pair, n, D)
    snap = loaded.read()
    window = edges_around(snap.bounds_s, min(waits) * 0.9, max(waits))
    truth = measure(snap, waits, window, **UDP)
    print(truth.row(f"socket udp burst, 1 in {EVERY} timed"))
    assert_truth(truth, "socket", n // EVERY // 2)
    assert truth.samples <= n // 2  # about a quarter, not all
