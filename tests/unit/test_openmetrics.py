"""/metrics in OpenMetrics: exemplars on the right bucket, compact labels, valid pages, the
text format unchanged, negotiation as prometheus_client decides, both formats cached.

The text page with exemplars in the data must stay byte for byte what it is without them
(and what the stock exporter writes). A real Prometheus parses the OpenMetrics page in
``tests/e2e/test_openmetrics_exposition.py``.
"""

from __future__ import annotations

import gzip
import urllib.request
from collections.abc import Iterator
from dataclasses import replace

import pytest
from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
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
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

from otel_netlat.export.http_server import Health, bind, serve, wants_openmetrics
from otel_netlat.export.metrics_page import MetricsPage
from otel_netlat.export.openmetrics_text import (
    EXEMPLAR_LABELS_MAX,
    OpenMetricsText,
    exemplar_labels,
    exemplar_suffix,
    render_stock_openmetrics,
)
from otel_netlat.export.prometheus_text import PrometheusText, render_stock

BOUNDS_S = tuple(2**k / 1e9 for k in range(10, 30))
CUMULATIVE = AggregationTemporality.CUMULATIVE
OPENMETRICS_CTYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
T0 = 1_764_000_000_123_456_789
UDP = {
    "netlat.stage": "socket",
    "network.type": "ipv4",
    "network.transport": "udp",
    "source.address": "10.1.2.1",
    "source.port": 40000,
    "destination.address": "10.1.2.2",
    "destination.port": 5000,
    "cpu.logical_number": 1,
    "network.interface.index": 3,
    "netlat.netns.inode": 4026532000,
    "k8s.pod.name": "reader-7d9f",
    "k8s.namespace.name": "default",
}
ICMP6 = {"network.transport": "icmp", "source.address": "fd00::1", "destination.address": "fd00::2"}


def exemplar(value: float, at_ns: int = T0, attributes: dict | None = None) -> Exemplar:
    return Exemplar(attributes if attributes is not None else UDP, value, at_ns, None, None)


def point(attributes: dict, exemplars: list[Exemplar], scale: int = 1) -> HistogramDataPoint:
    counts = tuple(scale * (i % 5) for i in range(len(BOUNDS_S) + 1))
    return HistogramDataPoint(
        attributes, 1, 2, sum(counts), 0.5 * scale, counts, BOUNDS_S, None, None, exemplars
    )


def page_data(exemplars: list[Exemplar], scale: int = 1) -> MetricsData:
    """A latency histogram (one series with ``exemplars``, one without) and odd counters."""
    histogram = Histogram(
        [point({"flow": "slow"}, exemplars, scale), point({"flow": "fast"}, [], scale)], CUMULATIVE
    )
    counters = [
        Metric(
            "netlat.packets",
            'help with "quotes", \\ and\nnewline',
            "{packet}",
            Sum([NumberDataPoint({"k": 'v"\\\n'}, 1, 2, 5 * scale)], CUMULATIVE, True),
        ),
        Metric("requests_total", "", "", Sum([NumberDataPoint({}, 1, 2, 2**60)], CUMULATIVE, True)),
        Metric("bytes", "unit", "By", Sum([NumberDataPoint({}, 1, 2, 1.5)], CUMULATIVE, True)),
        Metric("in.flight", "up-down", "", Sum([NumberDataPoint({}, 1, 2, -3)], CUMULATIVE, False)),
    ]
    metrics = [Metric("netlat.packet.latency", "Latency", "s", histogram), *counters]
    resource = Resource({"service.name": "otel-netlat", "host.name": "t"})
    scope = InstrumentationScope("otel_netlat", "0.1.0")
    return MetricsData([ResourceMetrics(resource, [ScopeMetrics(scope, metrics, "")], "")])


def without_exemplars(md: MetricsData) -> MetricsData:
    (rm,) = md.resource_metrics
    (sm,) = rm.scope_metrics
    h, *rest = sm.metrics
    points = [replace(p, exemplars=[]) for p in h.data.data_points]
    h = replace(h, data=replace(h.data, data_points=points))
    return MetricsData([replace(rm, scope_metrics=[replace(sm, metrics=[h, *rest])])])


def exemplar_lines(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if " # {" in line]


# ---- the text format does not change -------------------------------------------------------


@pytest.mark.parametrize("scope_info", [False, True])
def test_text_page_with_exemplars_is_byte_identical(scope_info):
    md = page_data([exemplar(0.431), exemplar(1.5e-6, attributes=ICMP6), exemplar(9.0)])
    plain = PrometheusText(scope_info_enabled=scope_info)
    openmetrics = OpenMetricsText.beside(plain)
    reference = render_stock(without_exemplars(md), scope_info_enabled=scope_info)
    assert render_stock(md, scope_info_enabled=scope_info) == reference
    assert PrometheusText(scope_info_enabled=scope_info).render(without_exemplars(md)) == reference
    for _ in range(2):  # the shared series cache, warm from either format, changes nothing
        assert plain.render(md) == reference
        assert exemplar_lines(openmetrics.render(md))
        assert gzip.decompress(plain.render_gzip(md)) == reference
    assert b"# {" not in reference and b"# EOF" not in reference


def test_page_serves_the_text_unchanged_beside_openmetrics():
    md = page_data([exemplar(0.431)])
    page = MetricsPage(lambda: md, PrometheusText(scope_info_enabled=False))
    assert b"# EOF" in page.body(False, openmetrics=True)[0]
    body, encoding = page.body(False)
    assert encoding is None and body == render_stock(without_exemplars(md), scope_info_enabled=False)


# ---- OpenMetrics --------------------------------------------------------------------------


@pytest.mark.parametrize("scope_info", [False, True])
def test_openmetrics_page_is_prometheus_clients_plus_exemplars(scope_info):
    """Without exemplars: prometheus_client's OpenMetrics writer's bytes, target_info aside
    (a gauge, as in the text format, where the stock writer makes an info)."""
    md = page_data([exemplar(0.431)])
    ours = OpenMetricsText(scope_info_enabled=scope_info).render(md).decode()
    stock = render_stock_openmetrics(md, scope_info_enabled=scope_info).decode()
    stock = stock.replace("# HELP target Target metadata\n# TYPE target info\n", "")
    ours = ours.replace("# HELP target_info Target metadata\n# TYPE target_info gauge\n", "")
    (line,) = [line for line in ours.splitlines() if " # {" in line]
    assert ours.replace(line, line.split(" # {")[0]) == stock
    assert ours.endswith("\n# EOF\n") and ours.count("# EOF") == 1
    assert "# TYPE netlat_packets counter\n" in ours and "\nnetlat_packets_total{" in ours
    assert '# HELP netlat_packets help with \\"quotes\\", \\\\ and\\nnewline\n' in ours
    assert "# UNIT netlat_packet_latency_seconds seconds\n" in ours
    assert "# TYPE in_flight gauge\n" in ours


def test_openmetrics_page_parses_with_its_exemplars():
    md = page_data([exemplar(0.431), exemplar(1.5e-6, T0 + 10**9, ICMP6)])
    text = OpenMetricsText(scope_info_enabled=False).render(md).decode()
    found = {}
    for family in parse_openmetrics(text):
        for s in family.samples:
            if s.exemplar:
                found[(s.labels["flow"], s.labels["le"])] = s.exemplar
    assert found.keys() == {("slow", "0.536870912"), ("slow", "2.048e-06")}
    udp = found[("slow", "0.536870912")]
    assert udp.labels == {"src": "10.1.2.1:40000", "dst": "10.1.2.2:5000", "transport": "udp"}
    assert (udp.value, udp.timestamp.sec, udp.timestamp.nsec) == (0.431, 1764000000, 123_000_000)
    assert found[("slow", "2.048e-06")].labels == {"src": "fd00::1", "dst": "fd00::2", "transport": "icmp"}


@pytest.mark.parametrize(
    ("value", "le"),
    [
        (BOUNDS_S[0], "1.024e-06"),  # on a bound: that bucket (upper-inclusive)
        (BOUNDS_S[0] * 1.000001, "2.048e-06"),
        (0.0, "1.024e-06"),
        (BOUNDS_S[-1], "0.536870912"),
        (BOUNDS_S[-1] * 2, "+Inf"),
        (float("inf"), "+Inf"),
    ],
)
def test_an_exemplar_goes_on_exactly_the_bucket_holding_its_value(value, le):
    text = OpenMetricsText(scope_info_enabled=False).render(page_data([exemplar(value)]))
    (line,) = exemplar_lines(text)
    assert line.startswith(f'netlat_packet_latency_seconds_bucket{{flow="slow",le="{le}"}} ')


def test_the_newest_exemplar_of_a_bucket_wins_and_nan_is_left_out():
    older, newer = exemplar(0.3, T0), exemplar(0.4, T0 + 1, ICMP6)
    text = OpenMetricsText(scope_info_enabled=False).render(
        page_data([older, newer, exemplar(0.5, T0 - 1), exemplar(float("nan"), T0 + 5)])
    )
    (line,) = exemplar_lines(text)
    assert line.endswith(' # {src="fd00::1",dst="fd00::2",transport="icmp"} 0.4 1764000000.123')


def test_exemplars_follow_each_new_collection():
    text = OpenMetricsText(scope_info_enabled=False)
    first = exemplar_lines(text.render(page_data([exemplar(0.431)])))
    second = exemplar_lines(text.render(page_data([exemplar(1e-3, T0 + 10**9)], scale=3)))
    third = exemplar_lines(text.render(page_data([])))
    assert first != second and len(first) == len(second) == 1 and not third
    assert second[0].endswith(" 0.001 1764000001.123")


def test_exemplar_suffix_and_timestamp_to_the_millisecond():
    assert exemplar_suffix(exemplar(0.431)) == (
        ' # {src="10.1.2.1:40000",dst="10.1.2.2:5000",transport="udp"} 0.431 1764000000.123'
    )
    assert exemplar_suffix(exemplar(2, 5_000_000)).endswith("} 2.0 0.005")
    assert exemplar_suffix(exemplar(2, 0)).endswith("} 2.0")  # no time: none written


def test_exemplar_labels_take_what_is_on_the_point():
    """filtered_attributes hold only what the point does not: the transport is the point's."""
    only_filtered = {k: v for k, v in UDP.items() if k not in ("network.transport", "netlat.stage")}
    point_attributes = {"netlat.stage": "socket", "network.transport": "udp"}
    assert exemplar_suffix(exemplar(0.431, attributes=only_filtered), point_attributes) == (
        exemplar_suffix(exemplar(0.431))
    )
    prefix = {"source.address": "10.1.2.0/24", "network.transport": "tcp"}  # the record's own wins
    assert 'src="10.1.2.1:40000"' in exemplar_suffix(exemplar(0.431), prefix)
    text = OpenMetricsText(scope_info_enabled=False).render(
        page_data([exemplar(0.431, attributes=only_filtered)])
    )
    (line,) = exemplar_lines(text)
    assert line.endswith(' # {src="10.1.2.1:40000",dst="10.1.2.2:5000"} 0.431 1764000000.123')  # no transport


def test_exemplar_labels_are_compact():
    v6 = {**UDP, "source.address": "fd00::1", "destination.address": "2001:db8::2"}
    assert exemplar_labels(v6) == [
        ("src", "[fd00::1]:40000"),
        ("dst", "[2001:db8::2]:5000"),
        ("transport", "udp"),
    ]
    assert exemplar_labels(ICMP6) == [("src", "fd00::1"), ("dst", "fd00::2"), ("transport", "icmp")]
    assert exemplar_labels({}) == []


def test_exemplar_labels_stay_within_128_characters():
    widest = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"  # the longest IPv6 text, 45 characters
    attributes = {**UDP, "source.address": widest, "destination.address": widest, "source.port": 65535}
    full = exemplar_labels(attributes)
    assert [k for k, _ in full] == ["src", "dst", "transport"] and _size(full) <= EXEMPLAR_LABELS_MAX
    long_transport = {**attributes, "network.transport": "x" * 20}
    assert [k for k, _ in exemplar_labels(long_transport)] == ["src", "dst"]  # transport first
    zone = "%" + "z" * 15  # the longest interface name
    zoned = {**long_transport, "source.address": widest + zone, "destination.address": widest + zone}
    assert exemplar_labels(zoned) == [("src", widest + zone), ("dst", widest + zone)]  # then ports
    huge = {"source.address": "a" * 200}
    assert exemplar_labels(huge) == []
    for labels in (full, exemplar_labels(long_transport), exemplar_labels(zoned)):
        assert _size(labels) <= EXEMPLAR_LABELS_MAX


def _size(labels: list[tuple[str, str]]) -> int:
    return sum(len(k) + len(v) for k, v in labels)


def test_unsupported_data_falls_back_to_stock_openmetrics():
    a = Metric("x", "d", "", Sum([NumberDataPoint({"k": "1"}, 1, 2, 1)], CUMULATIVE, True))
    b = Metric("x", "d", "", Sum([NumberDataPoint({"k": "2"}, 1, 2, 2)], CUMULATIVE, True))
    scopes = [
        ScopeMetrics(InstrumentationScope("a"), [a], ""),
        ScopeMetrics(InstrumentationScope("b"), [b], ""),
    ]
    md = MetricsData([ResourceMetrics(Resource({}), scopes, "")])
    text = OpenMetricsText(scope_info_enabled=False)
    assert text.render(md) == render_stock_openmetrics(md, scope_info_enabled=False)
    assert gzip.decompress(text.render_gzip(md)) == render_stock_openmetrics(md, scope_info_enabled=False)
    assert text.render(md).endswith(b"# EOF\n")


# ---- the page: one collection, each format rendered once per change -------------------------


def test_page_collects_once_and_renders_each_format_once_per_change(monkeypatch):
    collections = []

    def collect() -> MetricsData:
        collections.append(1)
        return page_data([exemplar(0.431)], scale=len(collections))

    renders = {"text": 0, "openmetrics": 0}
    real = PrometheusText.render_gzip

    def counting(self, md, level=1):
        renders["openmetrics" if isinstance(self, OpenMetricsText) else "text"] += 1
        return real(self, md, level)

    monkeypatch.setattr(PrometheusText, "render_gzip", counting)
    page = MetricsPage(collect, PrometheusText(scope_info_enabled=False))
    om1, text1 = page.body(True, openmetrics=True)[0], page.body(True)[0]
    assert page.body(True, openmetrics=True)[0] is om1 and page.body(False)[0] == gzip.decompress(text1)
    assert (len(collections), renders) == (1, {"text": 1, "openmetrics": 1})
    page.changed()
    om2 = page.body(False, openmetrics=True)[0]
    assert (len(collections), renders) == (2, {"text": 1, "openmetrics": 2})
    assert om2 != gzip.decompress(om1) and om2 == OpenMetricsText(scope_info_enabled=False).render(
        page.rendered_from
    )
    assert page.body(False)[0] == render_stock(page.rendered_from, scope_info_enabled=False)


# ---- HTTP: negotiation ----------------------------------------------------------------------

PROMETHEUS_2 = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_3 = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
ACCEPTS = {
    PROMETHEUS_2: True,
    PROMETHEUS_3: True,
    "application/openmetrics-text": True,
    "Application/OpenMetrics-Text; version=1.1.0": True,
    "text/plain;version=0.0.4;q=0.5,application/openmetrics-text;version=1.0.0": True,
    "text/plain;version=1.0.0,application/openmetrics-text;version=1.0.0": False,  # text first
    "application/openmetrics-text;version=0.0.1": False,
    "text/plain;version=0.0.4": False,
    "text/plain": False,
    "*/*": False,
    "": False,
}


@pytest.mark.parametrize("accept", ACCEPTS)
def test_accept_rule_is_prometheus_clients(accept):
    assert wants_openmetrics(accept) is ACCEPTS[accept]
    if accept.islower() or not accept:  # prometheus_client compares media types case-sensitively
        assert choose_encoder(accept)[1].startswith("application/openmetrics-text") is ACCEPTS[accept]


def test_accept_q0_is_not_acceptable():
    assert not wants_openmetrics("application/openmetrics-text;q=0,text/plain")
    assert wants_openmetrics("application/openmetrics-text;version=1.0.0;q=0.0,application/openmetrics-text")


@pytest.fixture
def server() -> Iterator:
    """start(with_openmetrics) → the port of a server of page_data's page, shut down after."""
    servers = []

    def start(with_openmetrics: bool = True) -> int:
        page = MetricsPage(lambda: page_data([exemplar(0.431)]), PrometheusText(scope_info_enabled=False))
        openmetrics = (lambda gz: page.body(gz, openmetrics=True)) if with_openmetrics else None
        s = bind("127.0.0.1", 0, page.body, Health(), openmetrics)
        serve(s)
        servers.append(s)
        return s.server_address[1]

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def fetch(port: int, headers: dict[str, str], method: str = "GET") -> tuple[dict, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(response.headers), response.read()


def test_http_negotiates_openmetrics_and_gzip(server):
    port = server()
    md = page_data([exemplar(0.431)])
    text = render_stock(md, scope_info_enabled=False)
    openmetrics = OpenMetricsText(scope_info_enabled=False).render(md)
    headers, body = fetch(port, {})
    assert (headers["Content-Type"], body) == (CONTENT_TYPE_PLAIN_0_0_4, text)
    headers, body = fetch(port, {"Accept": PROMETHEUS_3, "Accept-Encoding": "gzip"})
    assert (headers["Content-Type"], headers["Content-Encoding"]) == (OPENMETRICS_CTYPE, "gzip")
    assert gzip.decompress(body) == openmetrics
    headers, body = fetch(port, {"Accept": PROMETHEUS_2})
    assert (headers["Content-Type"], body) == (OPENMETRICS_CTYPE, openmetrics)
    assert "Content-Encoding" not in headers
    headers, body = fetch(port, {"Accept": "text/plain;version=0.0.4"})
    assert (headers["Content-Type"], body) == (CONTENT_TYPE_PLAIN_0_0_4, text)
    headers, body = fetch(port, {"Accept": PROMETHEUS_3}, method="HEAD")
    assert (headers["Content-Type"], headers["Content-Length"], body) == (
        OPENMETRICS_CTYPE,
        str(len(openmetrics)),
        b"",
    )


def test_http_without_an_openmetrics_page_serves_text_to_all(server):
    port = server(with_openmetrics=False)
    headers, body = fetch(port, {"Accept": PROMETHEUS_3})
    assert headers["Content-Type"] == CONTENT_TYPE_PLAIN_0_0_4 and b"# EOF" not in body
