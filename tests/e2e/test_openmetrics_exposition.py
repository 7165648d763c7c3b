"""/metrics in OpenMetrics, through a real Prometheus: its parser accepts the page, stores the
exemplars (``--enable-feature=exemplar-storage``) and the same values as the text format.

No kernel: the page and server classes of the agent serve a hand-made ``MetricsData`` on
loopback, a slow flow's bucket carrying an exemplar and a fast flow's carrying none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.parser import text_string_to_metric_families

from otel_netlat.export.http_server import Health, MetricsServer, bind, serve
from otel_netlat.export.metrics_page import MetricsPage
from otel_netlat.export.prometheus_text import PrometheusText
from otel_netlat.export.provider import SCOPE_LABELS
from tests.support.wait import poll_until

BOUNDS_S = tuple(2**k / 1e9 for k in range(10, 30))  # the kernel's log2 slots, 1.024 µs … 0.54 s
CUMULATIVE = AggregationTemporality.CUMULATIVE
SLOW = {"netlat.stage": "socket", "network.type": "ipv4", "network.transport": "udp"}
FAST = {"netlat.stage": "socket", "network.type": "ipv4", "network.transport": "tcp"}
BUCKET = "netlat_packet_latency_seconds_bucket"
#: A slow record's filtered_attributes: what is not on its point (stage, type and transport are).
UDP_RECORD = {
    "source.address": "10.1.2.1",
    "source.port": 40000,
    "destination.address": "10.1.2.2",
    "destination.port": 5000,
    "netlat.netns.inode": 4026532000,
}


def slow_record(value: float, at_ns: int, **attributes) -> Exemplar:
    base = {"cpu.logical_number": 1, "network.interface.index": 3}
    return Exemplar({**base, **attributes}, value, at_ns, None, None)


def histogram_point(attributes: dict, counts: tuple[int, ...], exemplars: list) -> HistogramDataPoint:
    return HistogramDataPoint(
        attributes=attributes,
        start_time_unix_nano=1,
        time_unix_nano=2,
        count=sum(counts),
        sum=0.001 * sum(counts),
        bucket_counts=counts,
        explicit_bounds=BOUNDS_S,
        min=None,  # type: ignore[arg-type]
        max=None,  # type: ignore[arg-type]
        exemplars=exemplars,
    )


def metrics_data(slow_exemplar: Exemplar, scale: int = 1) -> MetricsData:
    """A latency histogram (slow flow with ``slow_exemplar``, fast flow without), a counter,
    an up-down counter and a gauge, as the agent's reader collects them."""
    slow_counts = tuple(scale * (i % 4) for i in range(len(BOUNDS_S) + 1))
    fast_counts = tuple(scale * (3 if i < 5 else 0) for i in range(len(BOUNDS_S) + 1))

    def number(attributes: dict, value: float) -> NumberDataPoint:
        return NumberDataPoint(attributes, 1, 2, value)

    metrics = [
        Metric(
            "netlat.packet.latency",
            'Time a "packet" spent in a stage',
            "s",
            Histogram(
                [
                    histogram_point(SLOW, slow_counts, [slow_exemplar]),
                    histogram_point(FAST, fast_counts, []),
                ],
                CUMULATIVE,
            ),
        ),
        Metric(
            "netlat.packets",
            "Packets",
            "{packet}",
            Sum([number(SLOW, 300 * scale), number(FAST, 45 * scale)], CUMULATIVE, True),
        ),
        Metric("netlat.agent.series", "Live series", "{series}", Sum([number({}, 2)], CUMULATIVE, False)),
        Metric("netlat.agent.ratio", "A gauge", "1", Gauge([number({"k": "v"}, 0.25 * scale)])),
    ]
    resource = Resource({"service.name": "otel-netlat", "host.name": "om-test"})
    scope = InstrumentationScope("otel_netlat", "0.1.0")
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])


@dataclass
class Served:
    """The agent's /metrics page and server over ``current``, counting scrapes by format."""

    current: MetricsData
    server: MetricsServer | None = None
    page: MetricsPage | None = None
    formats: list[str] = field(default_factory=list)

    def text(self) -> str:
        assert self.page is not None
        return self.page.body(False)[0].decode()

    def show(self, md: MetricsData) -> None:
        self.current = md
        assert self.page is not None
        self.page.changed()


@pytest.fixture
def served() -> Iterator[Served]:
    now = time.time_ns()
    s = Served(metrics_data(slow_record(0.431, now, **UDP_RECORD)))
    s.page = page = MetricsPage(lambda: s.current, PrometheusText(scope_info_enabled=SCOPE_LABELS))

    def scrape(gzip_ok: bool) -> tuple[bytes, str | None]:
        s.formats.append("text")
        return page.body(gzip_ok)

    def scrape_openmetrics(gzip_ok: bool) -> tuple[bytes, str | None]:
        s.formats.append("openmetrics")
        return page.body(gzip_ok, openmetrics=True)

    s.server = bind("127.0.0.1", 0, scrape, Health(), scrape_openmetrics)
    serve(s.server)
    yield s
    s.server.shutdown()
    s.server.server_close()


def wait_exemplars(prom, expr: str, predicate, window: tuple[float, float]) -> list[dict]:
    seen: list = [None]

    def holds():
        seen[0] = prom.query_exemplars(expr, *window)
        return (seen[0],) if predicate(seen[0]) else None

    (result,) = poll_until(holds, 30, f"exemplars of {expr}", every=0.5, detail=lambda: f"last {seen[0]}")
    return result


def page_values(text: str) -> dict[tuple[str, frozenset], float]:
    """The text page as {(sample name, labels): value}."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def prometheus_values(prom, names: set[str]) -> dict[tuple[str, frozenset], float]:
    """What Prometheus holds now for ``names``, labelled as on the page (no job/instance)."""
    out = {}
    for name in names:
        for r in prom.query(name):
            labels = {k: v for k, v in r["metric"].items() if k not in ("__name__", "job", "instance")}
            out[(name, frozenset(labels.items()))] = float(r["value"][1])
    return out


def test_prometheus_stores_exemplars_and_the_same_values(served, start_prometheus):
    at = served.current.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points[0].exemplars[0]
    prom = start_prometheus([f"127.0.0.1:{served.server.server_address[1]}"], exemplar_storage=True)
    window = (time.time() - 3600, time.time() + 3600)
    (series,) = wait_exemplars(prom, BUCKET, bool, window)
    assert series["seriesLabels"]["le"] == "0.536870912"  # (0.268, 0.537] holds 0.431
    assert series["seriesLabels"]["network_transport"] == "udp"  # the slow flow; the fast has none
    (exemplar,) = series["exemplars"]
    assert exemplar["labels"] == {"src": "10.1.2.1:40000", "dst": "10.1.2.2:5000", "transport": "udp"}
    assert float(exemplar["value"]) == 0.431
    assert exemplar["timestamp"] == pytest.approx(at.time_unix_nano // 1_000_000 / 1000, abs=1e-6)
    assert "openmetrics" in served.formats and "text" not in served.formats

    # Every sample of the text page, as Prometheus stored it from the OpenMetrics page.
    want = page_values(served.text())
    names = {name for name, _ in want}
    got = poll_until(
        lambda: (v := prometheus_values(prom, names)) == want and v,
        30,
        "Prometheus to hold the text page's values",
        every=0.5,
        detail=lambda: f"want {want}\ngot {prometheus_values(prom, names)}",
    )
    assert len(got) == 2 * 23 + 2 + 3  # 2 histogram series, 2 counters; up-down, gauge, target_info

    # A newer snapshot: a port-less IPv6 record (ICMP) in another bucket, and new values.
    later = time.time_ns()
    icmp = slow_record(
        1.5e-6,
        later,
        **{"network.transport": "icmp", "source.address": "fd00::1", "destination.address": "fd00::2"},
    )
    served.show(metrics_data(icmp, scale=2))
    newest = wait_exemplars(
        prom, BUCKET, lambda r: any(s["seriesLabels"]["le"] == "2.048e-06" for s in r), window
    )
    (series,) = [s for s in newest if s["seriesLabels"]["le"] == "2.048e-06"]
    assert [e["labels"] for e in series["exemplars"]] == [
        {"src": "fd00::1", "dst": "fd00::2", "transport": "icmp"}
    ]
    want = page_values(served.text())
    poll_until(
        lambda: prometheus_values(prom, names) == want,
        30,
        "Prometheus to hold the new values",
        every=0.5,
        detail=lambda: f"want {want}\ngot {prometheus_values(prom, names)}",
    )
