"""Slow-packet records end to end: one delayed flow beside a fast one, and everywhere a
record can surface — the agent's OpenMetrics exemplars, a real Prometheus with exemplar
storage scraping the agent and the Collector's Prometheus exporter, the OTLP points and log
records at the real Collector — names exactly the delayed flow, and never the fast one.

The Collector's Prometheus exporter (v0.161, ``enable_open_metrics``) keeps an exemplar's
trace and span IDs but not its filtered attributes: there the exemplar names its record by
ID (the record ID the agent gives each slow record), and the log record with that ID names
the 5-tuple.
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request

from tests.support.collector import attrs
from tests.support.netns import udp_lockstep, udp_read_after
from tests.support.process import LOOPBACK

D = 0.3
N = 10
OPENMETRICS = "application/openmetrics-text;version=1.0.0"
LATENCY = "netlat.packet.latency"
EXEMPLAR = re.compile(
    r"^netlat_packet_latency_seconds_bucket\{(?P<labels>[^}]*)\} \S+ # \{(?P<ex>[^}]*)\} (?P<v>\S+)"
)


def _openmetrics(url: str) -> str:
    request = urllib.request.Request(url, headers={"Accept": OPENMETRICS})
    with LOOPBACK.open(request, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("application/openmetrics-text"), r.headers
        return r.read().decode()


def _exemplar_lines(text: str) -> list[re.Match]:
    return [m for line in text.splitlines() if (m := EXEMPLAR.match(line))]


def _end(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def test_the_delayed_flow_and_only_it(veth_pair, start_agent, collector_factory, start_prometheus):
    collector = collector_factory(file_export=True)
    agent = start_agent(
        *("--netns", veth_pair.a, "--netns", veth_pair.b, "--interval", "0.5"),
        *("--slow-threshold", "0.1"),
        *("--otlp-endpoint", collector.http_endpoint, "--otlp-protocol", "http/protobuf"),
        *("--otlp-interval", "1"),
    )
    prom = start_prometheus(
        [f"127.0.0.1:{agent.port}", f"127.0.0.1:{collector.ports.prometheus}"], exemplar_storage=True
    )
    t0 = time.time()
    src, dst = udp_read_after(veth_pair, N, D)  # the delayed flow: IPv4
    assert udp_lockstep(veth_pair, 300, socket.AF_INET6) == 300  # the fast flow: IPv6
    want = {"src": _end(src), "dst": _end(dst), "transport": "udp"}

    # The agent's page: exemplars on the socket stage's IPv4 buckets only, naming the flow.
    def agent_exemplars() -> list[re.Match] | None:
        lines = _exemplar_lines(_openmetrics(agent.url))
        return lines or None

    lines = agent.wait_until(agent_exemplars, 15, "exemplars on the agent's OpenMetrics page")
    for m in lines:
        assert 'netlat_stage="socket"' in m["labels"] and 'network_type="ipv4"' in m["labels"], m[0]
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["ex"]))
        assert labels == want, m[0]
        assert D * 0.95 <= float(m["v"]) <= D + 0.25, m[0]
    plain = agent.scrape()
    assert " # {" not in plain and "# EOF" not in plain  # the text format is unchanged

    # A real Prometheus stores them: the agent's series only for the delayed flow.
    def stored(job: str):
        def check() -> list[dict] | None:
            found = prom.query_exemplars(
                f'netlat_packet_latency_seconds_bucket{{job="{job}"}}', t0 - 5, time.time() + 5
            )
            return found or None

        return (
            prom.wait_for_exemplars(check)
            if hasattr(prom, "wait_for_exemplars")
            else agent.wait_until(check, 30, f"exemplars of job {job} in Prometheus")
        )

    for series in stored("t0"):
        assert series["seriesLabels"]["netlat_stage"] == "socket", series
        assert series["seriesLabels"]["network_type"] == "ipv4", series
        for ex in series["exemplars"]:
            assert ex["labels"] == want, ex

    # OTLP: the histogram points carry them with the 5-tuple as filtered attributes.
    socket4 = {"netlat.stage": "socket", "network.type": "ipv4", "network.transport": "udp"}
    point = collector.wait_for_point(
        LATENCY, socket4, predicate=lambda p: bool(p.raw.get("exemplars")), timeout=30
    )
    for ex in point.raw["exemplars"]:
        fa = attrs(ex["filteredAttributes"])
        assert (fa["source.address"], fa["source.port"]) == src, fa
        assert (fa["destination.address"], fa["destination.port"]) == dst, fa
        assert D * 0.95 <= ex["asDouble"] <= D + 0.25, ex
    v6 = collector.latest_point(LATENCY, {"netlat.stage": "socket", "network.type": "ipv6"})
    assert v6 is not None and not v6.raw.get("exemplars"), v6

    # The log records: exactly one per delayed datagram, none for the fast flow.
    records = collector.wait_for_log_records(N, timeout=30)
    assert len(records) == N, [r.attributes for r in records]
    for r in records:
        a = r.attributes
        assert (a["source.address"], a["source.port"]) == src, a
        assert (a["destination.address"], a["destination.port"]) == dst, a
        assert a["netlat.stage"] == "socket" and a["network.transport"] == "udp", a
        assert D * 0.95 <= a["netlat.latency_seconds"] <= D + 0.25, a
    by_id = {(r.raw["traceId"], r.raw["spanId"]): r for r in records}
    assert len(by_id) == N, "every record has its own ID"
    for ex in point.raw["exemplars"]:  # the OTLP exemplars name their log records
        assert (ex["traceId"], ex["spanId"]) in by_id, ex

    # Through the Collector's Prometheus exporter: the exemplar keeps the record's ID, whose
    # log record is the delayed flow's; the fast flow's series have none.
    for series in stored("t1"):
        assert series["seriesLabels"]["netlat_stage"] == "socket", series
        assert series["seriesLabels"]["network_type"] == "ipv4", series
        for ex in series["exemplars"]:
            record = by_id[(ex["labels"]["trace_id"], ex["labels"]["span_id"])]
            assert float(ex["value"]) == record.attributes["netlat.latency_seconds"], (ex, record)
