"""Ground truth for ``tcp_backlog``: segments that wait while the application holds the lock.

The reader's copy faults on a userfaultfd page and keeps its socket locked for a known time
(tests/support/uffd.py). Segments sent meanwhile go to the socket's backlog and are
processed when the lock is let go: each one's wait is, by the test's clock, from its send to
that release. They must be ``tcp_backlog`` samples of that size, and none of it ``stack``.
"""

from __future__ import annotations

import socket
import time

from otel_netlat.commands.watch import quantile
from tests.support.kernel import hist_of, value_of
from tests.support.netns import tcp_connection
from tests.support.truth import P50_TOLERANCE, edges_around, measure, truth_bounds
from tests.support.uffd import PAGE, socket_lock_held

HOLD = 0.3  # how long the reader keeps its socket locked
#: Segments sent during the hold. Segments in the backlog are not acknowledged until it is
#: processed, so the sender stops at its congestion window (10 segments at first, 3 of them
#: the write that reaches the trap): 6 more all reach the backlog.
N = 6
#: Alternate DSCP values: tcp_add_backlog merges a segment into the backlog's last skb when
#: their headers agree, and a merged segment is that skb's (one sample, from the first
#: arrival). Different TOS bytes keep every segment its own skb, so each wait is seen.
TOS = (0x20, 0x40)
#: Short backlog waits that are not the injected hold (see the test).
SHORT = 0.05


def test_segments_behind_a_held_socket_lock(veth_pair, load_agent_program):
    loaded = load_agent_program(netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.1, 0.5))
    sent = []
    with tcp_connection(veth_pair) as (cli, conn):
        with socket_lock_held(conn, HOLD, first=1000) as hold:
            cli.send(b"a" * (PAGE + 100))  # reaches the trapped page: the copy faults
            assert hold.held.wait(5), "the reader's copy never faulted"
            for i in range(N):
                cli.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, TOS[i % 2])
                sent.append(time.monotonic())
                cli.send(b"b" * 200)
                time.sleep(0.02)  # spread the arrivals over the hold: waits from HOLD down
        assert hold.received == PAGE + 1000
        rest = PAGE + 100 + N * 200 - hold.received
        while rest > 0:
            rest -= len(conn.recv(65536))
    snap = loaded.read()
    expected = [hold.released_at - t for t in sent]
    window = edges_around(snap.bounds_s, min(expected) * 0.9, max(expected) * 1.1)
    truth = measure(snap, expected, window, netlat_stage="tcp_backlog", network_transport="tcp")
    print(truth.row("tcp_backlog"))
    # Besides the held segments, the reader's own copy holds the lock for moments (ms under
    # qemu's software CPU): a segment arriving then is a real, short backlog wait.
    held = _count(snap, window[0], window[1])
    short = _count(snap, 0.0, SHORT)
    assert held == N, f"{truth.row('tcp_backlog')}: {held} of {N} held segments in the window"
    assert held + short == truth.samples, f"{truth.row('tcp_backlog')}: samples outside both"
    p50 = quantile(snap.bounds_s, _in(snap, window), 0.5)  # of the held segments' samples
    assert abs(p50 - truth.expected_p50_s) <= P50_TOLERANCE * truth.expected_p50_s, (p50, truth.row(""))
    buckets, _, _ = hist_of(snap, netlat_stage="stack", network_transport="tcp")
    slow = sum(c for i, c in enumerate(buckets) if i and snap.bounds_s[i - 1] >= 0.05)
    assert slow == 0, "a segment's backlog wait was counted as stack time"
    assert value_of(snap.entries, netlat_stage="stack", netlat_outcome="backlogged") == truth.samples


def _in(snap, window: tuple[float, float]) -> tuple[int, ...]:
    """tcp_backlog's bucket counts, those of buckets outside ``window`` zeroed."""
    buckets, _, _ = hist_of(snap, netlat_stage="tcp_backlog", network_transport="tcp")
    edges = (0.0, *snap.bounds_s, float("inf"))
    lo, hi = window
    return tuple(
        c if edges[i] >= lo - 1e-12 and edges[i + 1] <= hi + 1e-12 else 0 for i, c in enumerate(buckets)
    )


def _count(snap, lo_s: float, hi_s: float) -> int:
    return sum(_in(snap, (lo_s, hi_s)))
