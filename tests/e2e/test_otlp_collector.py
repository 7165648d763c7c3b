"""The agent's OTLP push into the real Collector built from collector/ — including outages."""

from __future__ import annotations

import time

import pytest

from tests.support.agent import total
from tests.support.netns import udp_lockstep, udp_to_closed_port
from tests.support.wait import poll_until

LATENCY = "netlat.packet.latency"
PACKETS = "netlat.packets"


def _agent_args(pair, collector, protocol: str = "grpc", *extra: str) -> list[str]:
    endpoint = f"http://{collector.grpc_endpoint}" if protocol == "grpc" else collector.http_endpoint
    return [
        "--netns",
        pair.a,
        "--netns",
        pair.b,
        "--interval",
        "0.5",
        "--otlp-endpoint",
        endpoint,
        "--otlp-protocol",
        protocol,
        "--otlp-interval",
        "1",
        *extra,
    ]


def _settle(agent) -> None:
    """Traffic has stopped: wait until the agent's snapshot holds all of it.

    What the Collector received is then polled for (``wait_for_point``, ``wait_for``) until
    it matches the agent: exports run on their own clock.
    """
    agent.wait_for_collections(2)


def _agent_hist(metrics, **labels: str) -> tuple[list[float], list[float], float, float]:
    """(bounds, cumulative bucket counts, sum, count) of one series on the agent's /metrics."""
    buckets = sorted(
        (float(dict(ls)["le"]), v)
        for (n, ls), v in metrics.items()
        if n == "netlat_packet_latency_seconds_bucket" and set(labels.items()) <= ls
    )
    bounds = [le for le, _ in buckets if le != float("inf")]
    return (
        bounds,
        [v for _, v in buckets],
        total(metrics, "netlat_packet_latency_seconds_sum", **labels),
        total(metrics, "netlat_packet_latency_seconds_count", **labels),
    )


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_push_matches_agent_exactly(veth_pair, start_agent, collector_factory, protocol):
    collector = collector_factory(file_export=True)
    agent = start_agent(*_agent_args(veth_pair, collector, protocol), env={"NODE_NAME": "node-under-test"})
    assert udp_lockstep(veth_pair, 300) == 300
    udp_to_closed_port(veth_pair, 20)
    _settle(agent)
    m = agent.metrics()
    for stage in ("backlog", "stack", "socket", "qdisc"):
        attrs = {"netlat.stage": stage, "network.type": "ipv4", "network.transport": "udp"}
        labels = {k.replace(".", "_"): v for k, v in attrs.items()}
        point = collector.wait_for_point(
            LATENCY,
            attrs,
            predicate=lambda p, lb=labels: p.value == total(m, "netlat_packet_latency_seconds_count", **lb),
        )
        bounds, cumulative, sum_s, count = _agent_hist(m, **labels)
        raw = point.raw
        assert [float(b) for b in raw["explicitBounds"]] == bounds
        got_cumulative, acc = [], 0
        for c in raw["bucketCounts"]:
            acc += int(c)
            got_cumulative.append(acc)
        assert got_cumulative == cumulative, stage
        assert int(raw["count"]) == count
        assert float(raw["sum"]) == pytest.approx(sum_s, rel=1e-9)
        assert point.resource.get("k8s.node.name") == "node-under-test"
        packets = collector.latest_point(PACKETS, attrs)
        assert packets is not None and packets.value == total(m, "netlat_packets_total", **labels)
    drops = collector.wait_for_point(
        "netlat.packet.drops", {"netlat.drop.reason": "NO_SOCKET"}, predicate=lambda p: p.value >= 20
    )
    assert drops is not None and drops.value == 20
    # The Collector's own Prometheus exporter: same counts, node label from the resource.
    for stage in ("backlog", "qdisc"):
        value = collector.wait_for_prometheus(
            "netlat_packet_latency_seconds_count",
            netlat_stage=stage,
            network_transport="udp",
            network_type="ipv4",
            k8s_node_name="node-under-test",
        )
        assert value == total(
            m,
            "netlat_packet_latency_seconds_count",
            netlat_stage=stage,
            network_transport="udp",
            network_type="ipv4",
        )


def test_prometheus_via_collector_equals_agent(veth_pair, start_agent, collector_factory, start_prometheus):
    collector = collector_factory(file_export=False)
    agent = start_agent(*_agent_args(veth_pair, collector))
    assert udp_lockstep(veth_pair, 200) == 200
    _settle(agent)

    def agent_counts() -> dict[str, float]:
        # Re-read each time: a late IPv6 MLD report in the namespaces may still add a packet.
        m = agent.metrics()
        return {
            stage: total(m, "netlat_packet_latency_seconds_count", netlat_stage=stage)
            for stage in ("backlog", "stack", "socket", "qdisc")
        }

    prom = start_prometheus([f"127.0.0.1:{collector.ports.prometheus}"])
    expr = "sum by (netlat_stage) (netlat_packet_latency_seconds_count)"
    prom.wait_for(
        expr, lambda r: {x["metric"]["netlat_stage"]: float(x["value"][1]) for x in r} == agent_counts()
    )
    assert agent_counts()["socket"] == 200


def test_delta_temporality_sums_to_cumulative(veth_pair, start_agent, collector_factory):
    collector = collector_factory(file_export=True)
    agent = start_agent(
        *_agent_args(veth_pair, collector), env={"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}
    )
    attrs = {"netlat.stage": "backlog", "network.type": "ipv4", "network.transport": "udp"}

    def exported() -> list:
        return [
            p
            for p in _all_points(collector, LATENCY)
            if all(p.attributes.get(k) == v for k, v in attrs.items())
        ]

    def exported_count() -> int:
        return sum(p.value for p in exported())

    for burst in (100, 200, 300):
        udp_lockstep(veth_pair, 100)
        # Each burst reaches the Collector before the next is sent: deltas from several exports.
        poll_until(lambda n=burst: exported_count() >= n, 30, f"{burst} packets exported")
    _settle(agent)
    m = agent.metrics()
    count = total(
        m, "netlat_packet_latency_seconds_count", **{k.replace(".", "_"): v for k, v in attrs.items()}
    )
    poll_until(lambda: exported_count() == count, 15, "the deltas to add up to the agent's count")
    points = exported()
    assert points, "no delta points exported"
    assert all(
        p.raw.get("aggregationTemporality", None) in (None, 1, "AGGREGATION_TEMPORALITY_DELTA")
        for p in points
    )
    assert (
        sum(p.value for p in points)
        == total(
            m,
            "netlat_packet_latency_seconds_count",
            netlat_stage="backlog",
            network_transport="udp",
            network_type="ipv4",
        )
        == 300
    )


def _all_points(collector, name: str):
    from tests.support.collector import iter_points

    return [p for p in iter_points(collector.exported()) if p.name == name]


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_collector_outage(veth_pair, start_agent, collector_factory, record_property):
    collector = collector_factory(file_export=True)
    agent = start_agent(*_agent_args(veth_pair, collector))
    udp_lockstep(veth_pair, 100)
    backlog = {"netlat.stage": "backlog", "network.type": "ipv4", "network.transport": "udp"}
    collector.wait_for_point(LATENCY, backlog, predicate=lambda p: p.value >= 100)  # exporting normally
    rss_before = _rss_kb(agent.proc.pid)
    collector.stop()
    t0 = time.monotonic()
    sent = 100
    while time.monotonic() - t0 < 20:
        udp_lockstep(veth_pair, 50)
        sent += 50
        assert "netlat_packet_latency_seconds_bucket" in agent.scrape()  # :2112 keeps serving
        time.sleep(1)  # pacing: traffic every second through a 20 s outage
    rss_after = _rss_kb(agent.proc.pid)
    record_property("outage_rss_growth_kb", rss_after - rss_before)
    assert rss_after - rss_before < 10 * 1024, (rss_before, rss_after)
    m = agent.metrics()
    failures = total(m, "netlat_agent_export_failures_total")
    record_property("outage_export_failures", failures)
    assert failures > 0
    collector.restart()
    labels = {"netlat_stage": "backlog", "network_type": "ipv4", "network_transport": "udp"}
    want = total(m, "netlat_packet_latency_seconds_count", **labels)
    assert want == sent
    point = collector.wait_for_point(
        LATENCY,
        {k.replace("_", "."): v for k, v in labels.items()},
        timeout=20,
        predicate=lambda p: p.value == want,
    )
    assert point.value == want
    rc, seconds = agent.stop()
    assert rc == 0 and seconds < 5


def test_sigterm_with_collector_down_is_quick(veth_pair, start_agent, collector_factory):
    collector = collector_factory(file_export=False)
    agent = start_agent(*_agent_args(veth_pair, collector))
    collector.stop()
    udp_lockstep(veth_pair, 50)
    # Deliberate: no signal says "an export is retrying now"; 3 s at a 1 s export interval
    # leaves one inside its retry back-off, which SIGTERM must cut short.
    time.sleep(3)
    rc, seconds = agent.stop()
    assert rc == 0, agent.output()
    assert seconds < 5, seconds


def _synthetic(n: int):
    from otel_netlat.collect.snapshot import HistogramSeries, Snapshot, as_attributes

    bounds = tuple(1e-6 * 2**k for k in range(21))
    series = tuple(
        HistogramSeries(
            as_attributes(
                {
                    "netlat.stage": "stack",
                    "network.type": "ipv4",
                    "network.transport": "udp",
                    "network.io.direction": "receive",
                    "source.address": f"10.{i // 256}.{i % 256}.0/24",
                }
            ),
            tuple([1] * 22),
            22_000 + i,
            22,
        )
        for i in range(n)
    )
    return Snapshot(taken_at_ns=time.time_ns(), bounds_s=bounds, latency=series)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_ten_thousand_series_reach_default_collector(collector_factory, protocol):
    """10,000 histogram series through the agent's export path, into a Collector left at its
    default 4 MiB receive limit: the exporter must split, and nothing may be lost."""
    from otel_netlat.export import ExportSettings, Telemetry

    collector = collector_factory(file_export=True)
    snap = _synthetic(10_000)
    endpoint = f"http://{collector.grpc_endpoint}" if protocol == "grpc" else collector.http_endpoint
    telemetry = Telemetry(
        ExportSettings(
            listen_host="127.0.0.1",
            listen_port=0,
            otlp_endpoint=endpoint,
            otlp_protocol=protocol,
            export_interval_s=1.0,
        ),
        lambda: snap,
    )
    telemetry.start()
    try:
        telemetry.snapshot_updated()
        seen: set = set()

        def arrived() -> bool:
            seen.update(p.attributes.get("source.address") for p in _all_points(collector, LATENCY))
            return len(seen) >= 10_000

        poll_until(arrived, 60, "10,000 series at the Collector", every=1, detail=lambda: f"{len(seen)} seen")
        assert len(seen) == 10_000
        assert "RESOURCE_EXHAUSTED" not in collector.log_tail(200)
    finally:
        telemetry.shutdown(timeout_s=5)
