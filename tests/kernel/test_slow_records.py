"""Slow-packet records (--slow-threshold): the kernel names exactly the slow flow, and a flood
is rate-limited with every record it could not write counted.

A delayed flow (a reader that sleeps D before reading) runs beside a fast one (read at
once). Every record must be the delayed flow's: its 5-tuple, the socket stage, a latency
of about D. Under a flood where every sample is slow, records + losses equal the samples
over the threshold exactly (the threshold is a bucket bound, so the histogram counts them).
"""

from __future__ import annotations

import os
import socket
import time

from otel_netlat.collect.slow import SlowReader
from otel_netlat.collect.snapshot import Snapshot
from otel_netlat.config.settings import DEFAULT_BOUNDS_NS
from tests.support.kernel import hist_of
from tests.support.netns import VethPair, tcp_connection, udp_lockstep, udp_read_after
from tests.support.wait import poll_until

D = 0.3
#: 65.536 ms, a bucket bound (2^16 µs): over it, the delayed flow's every datagram, none of the
#: fast flow's; the histogram counts exactly the samples over it.
THRESHOLD_NS = 65_536_000
N = 10


def _slow_everywhere(stages, ns: int) -> tuple[tuple[int, int], ...]:
    return tuple((s.id, ns) for s in stages)


def _delayed_tcp(pair: VethPair) -> tuple[tuple[str, int], tuple[str, int]]:
    """N segments a → b on one connection, read after D. Returns (client, server)."""
    with tcp_connection(pair) as (client, conn):
        for _ in range(N):
            client.send(b"y" * 100)
            time.sleep(0.005)  # separate segments (no coalescing in the sender)
        time.sleep(D)
        got = 0
        conn.settimeout(5)
        while got < N * 100:
            got += len(conn.recv(65536))
        return client.getsockname(), conn.getsockname()


def test_records_name_exactly_the_delayed_flow(veth_pair, load_agent_program, default_stages):
    loaded = load_agent_program(
        netns=veth_pair.netns_inodes, slow_ns=_slow_everywhere(default_stages, THRESHOLD_NS)
    )
    slow = SlowReader(loaded.program)
    records = []
    slow.listen(records.append)
    try:
        udp_src, udp_dst = udp_read_after(veth_pair, N, D)
        assert udp_lockstep(veth_pair, 200, socket.AF_INET6) == 200  # the fast flow
        tcp_src, tcp_dst = _delayed_tcp(veth_pair)
        over = DEFAULT_BOUNDS_NS.index(THRESHOLD_NS) + 1

        def all_drained() -> Snapshot | None:
            """The histograms once every slow sample in them has its record (and one TCP)."""
            snap = loaded.reader.read()
            slow_samples = sum(sum(x.bucket_counts[over:]) for x in snap.latency)
            return snap if len(records) == slow_samples and len(records) > N else None

        snap = poll_until(all_drained, 10, "a record for every slow sample", detail=lambda: repr(records))
        lost = {dict(p.attributes)["netlat.slow.lost_reason"]: p.value for p in slow.lost()}
    finally:
        slow.close()
    assert lost == {"rate_limited": 0, "ring_full": 0}
    by_flow: dict[tuple, list[float]] = {}
    for r in records:
        flow = (r.stage, r.network_type, r.transport, r.source_address, r.source_port)
        flow += (r.destination_address, r.destination_port)
        by_flow.setdefault(flow, []).append(r.latency_s)
        assert r.netns == veth_pair.netns_inodes[1], r  # received in namespace b
        assert 0 <= r.cpu < os.cpu_count(), r
    udp = ("socket", "ipv4", "udp", *udp_src, *udp_dst)
    tcp = ("socket", "ipv4", "tcp", *tcp_src, *tcp_dst)
    assert set(by_flow) == {udp, tcp}, by_flow.keys()  # the fast IPv6 flow: no record
    # One record per slow sample, as the histogram counts them: each UDP datagram; each TCP
    # queued skb (segments TCP merges into the queue's tail skb end as one).
    for flow, transport in ((udp, "udp"), (tcp, "tcp")):
        buckets, _, _ = hist_of(snap, netlat_stage="socket", network_transport=transport)
        assert len(by_flow[flow]) == sum(buckets[over:]), (transport, buckets)
    assert len(by_flow[udp]) == N
    for latency in by_flow[udp] + by_flow[tcp]:
        assert D * 0.95 <= latency <= D + 0.25, by_flow


def test_flood_is_rate_limited_and_every_loss_counted(veth_pair, load_agent_program, default_stages):
    rate = 20
    loaded = load_agent_program(
        netns=veth_pair.netns_inodes, slow_ns=_slow_everywhere(default_stages, 1000), slow_rate=rate
    )
    slow = SlowReader(loaded.program)
    try:
        t0 = time.monotonic()
        assert udp_lockstep(veth_pair, 3000) == 3000  # thousands of samples, nearly all > 1 µs
        elapsed = time.monotonic() - t0

        def over_threshold() -> int:
            # Bucket 0 holds (0, 1 µs]: the samples at or under the threshold.
            return sum(s.count - s.bucket_counts[0] for s in loaded.reader.read().latency)

        def lost() -> dict[str, int]:
            return {dict(p.attributes)["netlat.slow.lost_reason"]: p.value for p in slow.lost()}

        def accounted() -> tuple[int, dict] | None:
            total = over_threshold()
            gone = lost()
            return (total, gone) if slow.received + sum(gone.values()) == total else None

        total, gone = poll_until(accounted, 10, "records + losses to equal the slow samples")
    finally:
        slow.close()
    cpus = os.cpu_count() or 1
    # A second's burst per CPU, then the rate (the flood lasted `elapsed` s).
    assert slow.received <= cpus * rate * (elapsed + 1) + cpus, (slow.received, elapsed)
    assert gone["rate_limited"] > 0 and gone["ring_full"] == 0, gone
    assert total > 5000, total  # the flood really was slow everywhere: each datagram ≥ 2 samples
