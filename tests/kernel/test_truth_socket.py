"""Ground truth for the ``socket`` stage: each queued datagram's or segment's wait.

The test knows every wait: it stamps each datagram when it is sent and when its reader
gets it, and the reader sleeps a known time before it reads. The exported histogram must
agree with those waits (p50 within ±10 %, ≥ 99 % of samples in the window), with one
sample per datagram.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time

from tests.support.kernel import hist_of, value_of
from tests.support.netns import VethPair, socket_in, tcp_connection, udp_burst_then_read
from tests.support.truth import assert_cdf_close, assert_truth, edges_around, measure, truth_bounds

D = 0.3  # the reader's sleep before it reads: every datagram waits at least this long
N = 300
UDP = {"netlat_stage": "socket", "network_transport": "udp"}


SENDER = """
import socket, sys, time
dst, port, n, gap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start = time.monotonic()
for i in range(n):
    while time.monotonic() < start + i * gap:
        pass
    tx.sendto(int(time.monotonic_ns()).to_bytes(8, "big") + b"x" * 56, (dst, port))
"""


def udp_standing_queue(pair: VethPair, n: int, delay_s: float, gap_s: float = 0.001) -> list[float]:
    """A sender process paced at one datagram per ``gap_s``; the reader starts ``delay_s`` late,
    then reads at the same pace: a standing queue in which every datagram waits about
    ``delay_s``. Each datagram carries its send time (CLOCK_MONOTONIC, shared by processes):
    its wait is its read time minus that."""
    rx = socket_in(pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.bind((pair.b4, 0))
    rx.settimeout(5.0)
    waits = []
    args = [pair.b4, str(rx.getsockname()[1]), str(n), str(gap_s)]
    with rx, subprocess.Popen(["ip", "netns", "exec", pair.a, sys.executable, "-c", SENDER, *args]) as sender:
        first = rx.recv(2048)  # the sender is running: from here on, nothing reads for delay_s
        waits.append(time.monotonic_ns() / 1e9 - int.from_bytes(first[:8], "big") / 1e9)
        time.sleep(delay_s)  # the injected delay
        start = time.monotonic()
        for i in range(n - 1):
            while time.monotonic() < start + i * gap_s:
                pass
            data = rx.recv(2048)
            waits.append(time.monotonic_ns() / 1e9 - int.from_bytes(data[:8], "big") / 1e9)
        assert sender.wait(10) == 0
    return waits


def test_udp_burst_each_datagram_waits_the_readers_delay(veth_pair, load_agent_program):
    loaded = load_agent_program(netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.1, 0.6))
    waits = udp_burst_then_read(veth_pair, N, D)
    snap = loaded.read()
    window = edges_around(snap.bounds_s, min(waits) * 0.9, max(waits))
    truth = measure(snap, waits, window, **UDP)
    print(truth.row("socket udp burst"))
    # One sample per datagram (none coalesced), but for a start table slot two skbs may share.
    # In the stock kernels under qemu 1-3 % of datagrams lose their sample (counted, open in issue 11).
    assert_truth(truth, "socket", int(0.95 * N))


def test_udp_standing_queue(veth_pair, load_agent_program):
    """The issue's case: every datagram waits ≈ delay_s, though reads come once per ms."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.1, 0.6))
    n = 600
    waits = udp_standing_queue(veth_pair, n, D)
    snap = loaded.read()
    window = edges_around(snap.bounds_s, min(waits[1:]) * 0.9, max(waits) * 1.1)
    truth = measure(snap, waits, window, **UDP)
    print(truth.row("socket udp standing queue"))
    # Nearly every datagram has its sample (a read racing a notification can miss one, counted).
    assert_truth(truth, "socket", int(0.95 * n))
    assert_cdf_close(snap, waits, 0.05, **UDP)


def test_tcp_reader_sleeps(veth_pair, load_agent_program):
    """TCP data that waits D before its reader reads it in small pieces measures ≈ D."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.1, 0.6))
    segments, size = 50, 1000
    with tcp_connection(veth_pair) as (cli, conn):
        sent_at = time.monotonic()
        for _ in range(segments):
            cli.send(b"t" * size)
        time.sleep(D)
        got = 0
        while got < segments * size:
            got += len(conn.recv(300))  # partial reads: an skb is read in several pieces
        waited = time.monotonic() - sent_at
    snap = loaded.read()
    window = edges_around(snap.bounds_s, D * 0.9, waited)
    truth = measure(snap, [D], window, netlat_stage="socket", network_transport="tcp")
    print(truth.row("socket tcp"))
    assert_truth(truth, "socket", 1)
    # TCP merged most segments into the skb at the queue's tail and freed them untraced: each
    # still ends its stack stage, found by tcp:tcp_probe (the sender may merge a few writes).
    _, stack_samples, _ = hist_of(snap, netlat_stage="stack", network_transport="tcp")
    assert stack_samples >= segments * 0.9, stack_samples
    assert value_of(snap.unmatched, netlat_stage="stack") == 0


def test_listener_notifications_start_nothing(veth_pair, load_agent_program):
    """A listener's sk_data_ready (one per new connection) is about no queued data."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    srv = socket_in(veth_pair.b, socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((veth_pair.b4, 0))
    srv.listen(1024)
    n = 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4 * n), max(hard, 4 * n)))
    held: list[socket.socket] = []  # kept open: no FIN, so only the listener is notified
    try:
        with srv:
            for _ in range(n):
                cli = socket_in(veth_pair.a, socket.AF_INET, socket.SOCK_STREAM)
                cli.connect(srv.getsockname())
                held += [cli, srv.accept()[0]]
            snap = loaded.read()
    finally:
        for s in held:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    entries = {
        dict(p.attributes)["netlat.outcome"]: p.value
        for p in snap.entries
        if dict(p.attributes)["netlat.stage"] == "socket"
    }
    assert entries.get("coalesced", 0) == 0 and entries.get("pending", 0) == 0, entries
    assert value_of(snap.unmatched, netlat_stage="stack") == 0


FLOOD = """
import os, socket, sys
os.sched_setaffinity(0, {int(sys.argv[4])})
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(n):
    tx.sendto(b"p" * 64, (dst, port))
"""


def test_four_producers_into_one_socket(veth_pair, load_agent_program):
    """Several CPUs queue into one UDP socket at once (on 6.18 in batches, notified once per
    skb after unlocking): each datagram still ends its own stack stage and starts its own wait."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    rx = socket_in(veth_pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
    rx.bind((veth_pair.b4, 0))
    rx.settimeout(2.0)
    per, cpus = 2000, os.cpu_count() or 1
    args = [veth_pair.b4, str(rx.getsockname()[1]), str(per)]
    with rx:
        senders = [
            subprocess.Popen(
                ["ip", "netns", "exec", veth_pair.a, sys.executable, "-c", FLOOD, *args, str(i % cpus)]
            )
            for i in range(4)
        ]
        rx.settimeout(60.0)  # the senders start (slowly under qemu's software CPU)
        rx.recv(2048)
        got = 1
        rx.settimeout(2.0)
        try:
            while True:
                rx.recv(2048)
                got += 1
        except TimeoutError:
            pass
        assert all(s.wait(10) == 0 for s in senders)
    snap = loaded.read()
    stack = hist_of(snap, netlat_stage="stack", network_transport="udp")[1]
    sock = hist_of(snap, netlat_stage="socket", network_transport="udp")[1]
    print(f"4 producers: {got} datagrams read, stack samples {stack}, socket samples {sock}")
    assert got >= 0.9 * 4 * per
    assert stack / got >= 0.999, (got, stack)
    # A read racing a notification on another CPU can leave the cursor behind: that datagram
    # gets no sample (its entry is counted when its slot is reused), never a wrong one.
    assert sock / got >= 0.97, (got, sock)


def test_tcp_data_before_accept_waits_until_read(veth_pair, load_agent_program):
    """Data queued on a child socket before accept() (no struct socket yet) is measured with
    that wait, never counted overwritten."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes, bounds_ns=truth_bounds(0.1, 0.6))
    srv = socket_in(veth_pair.b, socket.AF_INET, socket.SOCK_STREAM)
    cli = socket_in(veth_pair.a, socket.AF_INET, socket.SOCK_STREAM)
    srv.bind((veth_pair.b4, 0))
    srv.listen(1)
    with srv, cli:
        cli.connect(srv.getsockname())
        sent_at = time.monotonic()
        cli.send(b"early" * 100)
        time.sleep(D)  # the injected delay: nobody accepts, nobody reads
        conn, _ = srv.accept()
        with conn:
            assert len(conn.recv(4096)) == 500
            waited = time.monotonic() - sent_at
    snap = loaded.read()
    window = edges_around(snap.bounds_s, D * 0.9, waited)
    truth = measure(snap, [D], window, netlat_stage="socket", network_transport="tcp")
    print(truth.row("socket tcp before accept"))
    assert truth.samples == 1
    assert_truth(truth, "socket", 1)
    outcomes = {
        dict(p.attributes)["netlat.outcome"]: p.value
        for p in snap.entries
        if dict(p.attributes)["netlat.stage"] == "socket"
    }
    assert outcomes["overwritten"] == 0, outcomes
