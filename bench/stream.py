"""Two workloads saturating small UDP does not show: a bulk TCP stream, and a ping-pong.

* ``tcp_stream_ratio``: bytes per second of one bulk TCP stream a → b over veth with GRO
  on the receiving end (NAPI, GRO, large segments: the path most pod traffic takes), with
  the agent's program attached ÷ without.
* ``rr_added_us``: what the agent adds to the round trip of a 64-byte UDP ping-pong between
  the namespaces, median and p99 of the per-round differences (agent − without).

Each also runs with the floor (a counting-only program on the same hooks): ``*_floor``.

Both run on a pair of namespaces of their own, in rounds that alternate which arm goes
first, and report the median of the per-round figures with their spread (``summary``).
Sender, receiver and echo are threads of this process: each blocks in its socket call with
the GIL released, so Python adds the same constant to every arm.
"""

from __future__ import annotations

import os
import socket
import statistics
import threading
import time
from collections.abc import Callable

from bench.bpfstats import load_floor
from bench.kernel import tracepoints
from bench.stats import summary
from otel_netlat.program.build import load_program
from otel_netlat.program.plan import Plan
from tests.support.netns import make_veth_pair, remove_veth_pair, socket_in

CHUNK = 1 << 20  # bytes per send/recv call of the stream
RR_SIZE = 64
RR_WARMUP = 200  # exchanges before timing starts: caches and neighbour entries warm


ARMS = ("without", "agent", "floor")


def _attach(plan: Plan, arm: str) -> Callable[[], None] | None:
    """Attach an arm's program; returns how to detach it (None: nothing attached)."""
    if arm == "agent":
        return load_program(plan.spec, plan.info).detach
    if arm == "floor":  # counting only, on the agent's hooks, attached as the agent attaches
        return load_floor(tracepoints(plan), plan.info, raw=True).cleanup
    return None


def _arms(plan: Plan, rounds: int, run: Callable[[], object]) -> list[dict[str, object]]:
    """``rounds`` × {without, agent, floor}: ``run()`` once per arm, the order rotating."""
    out = []
    for i in range(rounds):
        got: dict[str, object] = {}
        for arm in ARMS[i % len(ARMS) :] + ARMS[: i % len(ARMS)]:
            detach = _attach(plan, arm)
            try:
                got[arm] = run()
            finally:
                if detach:
                    detach()
        out.append(got)
    return out


def _stream_once(pair, seconds: float) -> float:
    """Bytes per second one TCP connection a → b carries for ``seconds``."""
    listener = socket_in(pair.b, socket.AF_INET, socket.SOCK_STREAM)
    client = socket_in(pair.a, socket.AF_INET, socket.SOCK_STREAM)
    with listener, client:
        listener.bind((pair.b4, 0))
        listener.listen(1)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        received = [0]

        def drain() -> None:
            buf = bytearray(CHUNK)
            with server:
                while n := server.recv_into(buf):
                    received[0] += n

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        payload = b"s" * CHUNK
        client.sendall(payload)  # slow start done before the window
        t0, start = time.monotonic(), received[0]
        while time.monotonic() - t0 < seconds:
            client.sendall(payload)
        got, elapsed = received[0] - start, time.monotonic() - t0
        client.shutdown(socket.SHUT_WR)
        reader.join(10)
    return got / elapsed


def tcp_stream(plan: Plan, rounds: int, seconds: float) -> dict:
    """``tcp_stream_ratio``: a bulk TCP stream's bytes/s with the agent ÷ without."""
    pair = make_veth_pair()
    try:
        pair.set_gro(pair.b, pair.dev_b, True)
        results = _arms(plan, rounds, lambda: _stream_once(pair, seconds))
    finally:
        remove_veth_pair(pair)
    ratios = [r["agent"] / r["without"] for r in results]
    return {
        "tcp_stream_ratio": summary(ratios, 3),
        "tcp_stream_ratio_floor": summary([r["floor"] / r["without"] for r in results], 3),
        "tcp_stream_mbit_s_without": summary([r["without"] * 8 / 1e6 for r in results], 0),
        "tcp_stream_mbit_s_with": summary([r["agent"] * 8 / 1e6 for r in results], 0),
    }


def _rr_once(pair, exchanges: int) -> tuple[float, float]:
    """Median and p99 round trip (µs) of ``exchanges`` 64-byte UDP ping-pongs a ↔ b.

    Client and echo run pinned to one CPU: every hop (send, softirq, wake-up) happens there,
    so a round trip is the path's own work and not the cross-CPU wake-ups (IPIs) whose cost
    varies from round to round on a shared virtual machine.
    """
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(saved)})
    try:
        return _rr_pinned(pair, exchanges)
    finally:
        os.sched_setaffinity(0, saved)


def _rr_pinned(pair, exchanges: int) -> tuple[float, float]:
    echo = socket_in(pair.b, socket.AF_INET, socket.SOCK_DGRAM)
    client = socket_in(pair.a, socket.AF_INET, socket.SOCK_DGRAM)
    with echo, client:
        echo.bind((pair.b4, 0))
        echo.settimeout(5.0)
        client.settimeout(5.0)
        client.connect(echo.getsockname())
        total = RR_WARMUP + exchanges

        def serve() -> None:
            for _ in range(total):
                data, peer = echo.recvfrom(RR_SIZE)
                echo.sendto(data, peer)

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        payload = b"r" * RR_SIZE
        rtts = []
        clock = time.perf_counter_ns
        for i in range(total):
            t0 = clock()
            client.send(payload)
            client.recv(RR_SIZE)
            if i >= RR_WARMUP:
                rtts.append(clock() - t0)
        server.join(5)
    rtts.sort()
    return statistics.median(rtts) / 1e3, rtts[int(len(rtts) * 0.99)] / 1e3


def rr(plan: Plan, rounds: int, exchanges: int) -> dict:
    """``rr_added_us``: the agent's addition to a UDP ping-pong's round trip, p50 and p99."""
    pair = make_veth_pair()
    try:
        results = _arms(plan, rounds, lambda: _rr_once(pair, exchanges))
    finally:
        remove_veth_pair(pair)
    return {
        "rr_added_us": {
            "p50": summary([r["agent"][0] - r["without"][0] for r in results], 2),
            "p99": summary([r["agent"][1] - r["without"][1] for r in results], 2),
        },
        "rr_added_us_floor": {
            "p50": summary([r["floor"][0] - r["without"][0] for r in results], 2),
            "p99": summary([r["floor"][1] - r["without"][1] for r in results], 2),
        },
        "rr_us_without": {
            "p50": summary([r["without"][0] for r in results], 2),
            "p99": summary([r["without"][1] for r in results], 2),
        },
    }
