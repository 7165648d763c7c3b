"""The softirq stage on this kernel: NET_RX and NET_TX wait and runtime, NAPI squeezes, and
the wait on a CPU that starves its softirqs, against the same CPU idle.

Ground truths:

* UDP in lockstep over veth: the sender's ``netif_rx`` raises NET_RX and the softirq runs
  when the transmit path re-enables bottom halves, before ``sendto`` returns; the next
  datagram is sent only once this one was read. So every datagram is a NET_RX run of its own:
  at least N waits and N runs.
* A tbf qdisc shaped to one packet per burst: after the first, packets leave when tbf's
  watchdog reschedules the queue, which raises NET_TX: one NET_TX run per packet.
* Starvation. Softirqs raised by an interrupt run when it returns, whatever task the CPU is
  running: a busy SCHED_FIFO thread alone does not delay them. It does once the kernel hands
  softirq work to ksoftirqd (a run that exceeded its 2 ms / 10 restart budget), because the
  FIFO thread never lets ksoftirqd run: the pending softirq then waits for the next interrupt
  that returns to it, the timer tick (4 ms at HZ=250). Kernels that also hold softirqs back
  at interrupt exit while ksoftirqd is pending (the 6.1 guest) wait for ksoftirqd itself,
  which only RT throttling lets run: hundreds of milliseconds. The flood is steered (RPS) to the
  starved CPU, and each packet crosses 2000 nftables rules there so that its softirq work
  overruns the budget; the same flood on the same CPU without the FIFO thread is the
  baseline. This machine's other tasks compete with ksoftirqd there too (fairly), so the
  baseline has some long waits of its own: the test compares shares and means, by a margin.

The softirq hooks are not filtered by namespace: other traffic on the machine only adds
samples, so counts are checked as lower bounds, and durations against the test's wall time.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from otel_netlat.collect.per_cpu import CPU
from otel_netlat.collect.snapshot import HistogramSeries, Snapshot
from otel_netlat.commands.watch import quantile
from tests.support.kernel import softirq
from tests.support.netns import VethPair, sh, socket_in, udp_burst, udp_lockstep

N = 300
FLOOD = 20_000
NFT_RULES = 2000
#: Waits longer than this (a bound of the default buckets) are rare on an idle CPU; a starved
#: CPU's pending softirqs wait for the tick: up to 4 ms at HZ=250, 1 ms at HZ=1000.
TICK_WAIT_S = 1.024e-3
HOG = (
    "import os\n"
    "os.sched_setaffinity(0, {%d})\n"
    "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))\n"
    "print('spinning', flush=True)\n"
    "while True:\n"
    "    pass\n"
)


def minus(after: HistogramSeries, before: HistogramSeries) -> HistogramSeries:
    counts = tuple(a - b for a, b in zip(after.bucket_counts, before.bucket_counts, strict=True))
    return HistogramSeries((), counts, after.sum_ns - before.sum_ns, after.count - before.count)


def assert_within(h: HistogramSeries, bounds: tuple[float, ...], wall_s: float) -> None:
    """No sample can be longer than the time the program has been loaded: the highest
    non-empty bucket starts below it, and the sum is at most count × wall time."""
    top = max(i for i, c in enumerate(h.bucket_counts) if c)
    assert top == 0 or bounds[top - 1] < wall_s, (top, bounds[top - 1], wall_s)
    assert h.sum_ns <= h.count * wall_s * 1e9


def test_net_rx_wait_and_runtime_per_datagram(load_agent_program, veth_pair):
    t0 = time.monotonic()
    loaded = load_agent_program(netns=veth_pair.netns_inodes, softirq=True)
    before = loaded.reader.read()
    assert udp_lockstep(veth_pair, N) == N
    after = loaded.reader.read()
    wall = time.monotonic() - t0
    assert {dict(s.attributes)["netlat.softirq.vector"] for s in after.softirq} == {"net_rx", "net_tx"}
    for phase in ("wait", "runtime"):
        total = softirq(after, "net_rx", phase)
        got = minus(total, softirq(before, "net_rx", phase))
        assert got.count >= N, (phase, got.count)
        assert_within(total, after.bounds_s, wall)
    assert len(after.napi_squeezed) == 1


def test_net_tx_runs_a_shaped_queue(load_agent_program, veth_pair):
    veth_pair.add_tbf(veth_pair.a, veth_pair.dev_a, rate="10mbit")
    t0 = time.monotonic()
    loaded = load_agent_program(netns=veth_pair.netns_inodes, softirq=True)
    before = loaded.reader.read()
    n = 50
    assert udp_burst(veth_pair, n, size=1000) == n
    after = loaded.reader.read()
    wall = time.monotonic() - t0
    for phase in ("wait", "runtime"):
        total = softirq(after, "net_tx", phase)
        got = minus(total, softirq(before, "net_tx", phase))
        # One packet per NET_TX run; a few may leave from the sender's own qdisc run.
        assert got.count >= n // 2, (phase, got.count)
        assert_within(total, after.bounds_s, wall)


# ---- starvation: the ground truth ---------------------------------------------------------


def slow_path(pair: VethPair, rules: int = NFT_RULES) -> None:
    """``rules`` nftables rules that match nothing, at prerouting in the receiving namespace."""
    body = "".join(f"  ip daddr 192.0.2.{i % 250 + 1} udp dport {i + 1} drop\n" for i in range(rules))
    table = (
        "table ip netlat_slow {\n chain c {\n  type filter hook prerouting priority 0;\n" + body + " }\n}\n"
    )
    sh("ip", "netns", "exec", pair.b, "nft", "-f", "-", input=table)


def flood(pair: VethPair, n: int) -> int:
    """``n`` small datagrams a → b as fast as one thread sends them, read along the way."""
    rx = socket_in(pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    tx = socket_in(pair.a, socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        rx.bind((pair.b4, 0))
        rx.setblocking(False)
        got = 0
        for i in range(n):
            tx.sendto(b"f" * 64, rx.getsockname())
            while i % 64 == 0:
                try:
                    rx.recv(2048)
                    got += 1
                except BlockingIOError:
                    break
        return got


def waits_on(loaded, pair: VethPair, cpu: int) -> tuple[HistogramSeries, int]:
    """NET_RX waits on ``cpu`` and its NAPI polls squeezed, during one flood."""

    def squeezed(snap: Snapshot) -> int:
        return sum(p.value for p in snap.napi_squeezed if dict(p.attributes).get(CPU) == str(cpu))

    before = loaded.reader.read()
    flood(pair, FLOOD)
    after = loaded.reader.read()
    waits = minus(softirq(after, "net_rx", "wait", cpu), softirq(before, "net_rx", "wait", cpu))
    return waits, squeezed(after) - squeezed(before)


def summary(h: HistogramSeries, bounds: tuple[float, ...]) -> dict[str, float]:
    over = sum(c for i, c in enumerate(h.bucket_counts) if i and bounds[i - 1] >= TICK_WAIT_S)
    return {
        "waits": h.count,
        "mean_us": h.sum_ns / max(h.count, 1) / 1e3,
        "p50_us": quantile(bounds, h.bucket_counts, 0.5) * 1e6,
        "p99_us": quantile(bounds, h.bucket_counts, 0.99) * 1e6,
        "over_1ms": over,
        "over_1ms_share": over / max(h.count, 1),
    }


@pytest.fixture
def pinned_sender():
    """This thread (sender and reader of the flood) on the first CPU it may use; RPS takes the
    packets to the second, the one starved."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.fail("the starvation test needs two CPUs: a sender's and a starved receiver's")
    mask = os.sched_getaffinity(0)
    sender, starved = sorted(mask)[:2]
    os.sched_setaffinity(0, {sender})
    yield sender, starved
    os.sched_setaffinity(0, mask)


def test_starved_cpu_delays_net_rx(
    load_agent_program, veth_pair, pinned_sender, start_process, record_property
):
    _, starved = pinned_sender
    veth_pair.set_rps(veth_pair.b, veth_pair.dev_b, format(1 << starved, "x"))
    slow_path(veth_pair)
    loaded = load_agent_program(netns=veth_pair.netns_inodes, softirq=True, cpu_labels=True)
    bounds = loaded.reader.bounds_s
    idle, idle_squeezed = waits_on(loaded, veth_pair, starved)
    hog = start_process([sys.executable, "-c", HOG % starved], name="fifo-hog")
    hog.wait_for_line("spinning", timeout=30)
    try:
        busy, busy_squeezed = waits_on(loaded, veth_pair, starved)
    finally:
        hog.stop(sig=signal.SIGKILL)
    idle_s, busy_s = summary(idle, bounds), summary(busy, bounds)
    record_property("softirq_wait_idle", idle_s)
    record_property("softirq_wait_starved", busy_s)
    print(f"\nNET_RX wait on CPU {starved}: idle {idle_s}\n  starved by SCHED_FIFO: {busy_s}")
    # The flood outruns one backlog poll (64 packets) on the receiving CPU, idle or not.
    assert idle_squeezed > 0 and busy_squeezed > 0, (idle_squeezed, busy_squeezed)
    assert idle.count > 0 and busy.count > 0
    # Starved: softirq work handed to ksoftirqd waits for the tick, many times per flood;
    # idle, ksoftirqd runs when woken (other tenants of the machine may delay it a little).
    assert busy_s["over_1ms"] >= 10, (idle_s, busy_s)
    assert busy_s["over_1ms_share"] >= 3 * idle_s["over_1ms_share"], (idle_s, busy_s)
    assert busy_s["mean_us"] >= 3 * idle_s["mean_us"], (idle_s, busy_s)
