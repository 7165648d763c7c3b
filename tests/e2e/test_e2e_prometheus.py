"""End to end: ``otel-netlat run`` as a process, real packets, a real Prometheus scraping :2112."""

from __future__ import annotations

import math
import socket

import pytest

from otel_netlat.commands.watch import quantile
from tests.support.agent import total
from tests.support.netns import udp_lockstep, udp_to_closed_port

N = 500


def _buckets(metrics, stage: str) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Per-bucket (not cumulative) counts of one stage, summed over the other labels."""
    cumulative: dict[float, float] = {}
    for (name, labels), value in metrics.items():
        d = dict(labels)
        if name == "netlat_packet_latency_seconds_bucket" and d.get("netlat_stage") == stage:
            le = float(d["le"])
            cumulative[le] = cumulative.get(le, 0) + value
    les = sorted(cumulative)
    counts, prev = [], 0.0
    for le in les:
        counts.append(int(cumulative[le] - prev))
        prev = cumulative[le]
    return tuple(le for le in les if not math.isinf(le)), tuple(counts)


def test_agent_metrics_reach_prometheus(veth_pair, start_agent, start_prometheus):
    agent = start_agent("--netns", veth_pair.a, "--netns", veth_pair.b, "--interval", "0.5")
    assert udp_lockstep(veth_pair, N) == N
    assert udp_lockstep(veth_pair, N, socket.AF_INET6) == N
    udp_to_closed_port(veth_pair, 30)
    agent.wait_for_collections(2)  # one whole read after the traffic: the snapshot holds all of it

    m = agent.metrics()
    for stage in ("backlog", "stack", "socket", "qdisc"):
        assert total(m, "netlat_packet_latency_seconds_count", netlat_stage=stage) > 0, stage
        assert any(
            n == "netlat_packet_latency_seconds_bucket" and ("netlat_stage", stage) in ls for n, ls in m
        ), stage
    assert total(m, "netlat_packets_total", netlat_stage="backlog", network_transport="udp") == 2 * N + 30
    assert total(m, "netlat_packets_total", netlat_stage="qdisc", network_transport="udp") == 2 * N + 30
    assert (
        total(m, "netlat_packet_latency_seconds_count", netlat_stage="socket", network_transport="udp")
        == 2 * N
    )
    assert (
        total(m, "netlat_packet_drops_total", netlat_drop_reason="NO_SOCKET", network_transport="udp") == 30
    )
    # The identity, as exported: the outcome terms add up to the starts, per stage.
    for stage in ("backlog", "stack", "socket", "qdisc"):
        assert total(m, "netlat_agent_entries", netlat_stage=stage) == total(
            m, "netlat_packets_total", netlat_stage=stage
        ), stage

    prom = start_prometheus([f"127.0.0.1:{agent.port}"])
    expr = 'sum by (netlat_stage) (netlat_packets_total{network_transport="udp"})'
    want = {
        stage: total(m, "netlat_packets_total", netlat_stage=stage, network_transport="udp")
        for stage in ("backlog", "stack", "socket", "qdisc")
    }
    result = prom.wait_for(
        expr, lambda r: {x["metric"]["netlat_stage"]: float(x["value"][1]) for x in r} == want
    )
    assert {x["metric"]["netlat_stage"]: float(x["value"][1]) for x in result} == want

    # The same scrape's p99, computed by Prometheus and from the agent's own buckets.
    bounds, counts = _buckets(agent.metrics(), "stack")
    mine = quantile(bounds, counts, 0.99)
    q = prom.query(
        'histogram_quantile(0.99, sum by (le) (netlat_packet_latency_seconds_bucket{netlat_stage="stack"}))'
    )
    assert len(q) == 1
    assert float(q[0]["value"][1]) == pytest.approx(mine, rel=1e-9)
    rc, seconds = agent.stop()
    assert rc == 0 and seconds < 5
