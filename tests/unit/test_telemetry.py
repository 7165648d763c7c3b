"""Telemetry end to end on loopback: /metrics, resource, port errors, OTLP export and shutdown.

No kernel: snapshots are built by hand. OTLP goes to an in-process gRPC receiver (whose
default 4 MiB receive limit is the Collector's) or to a closed port.
"""

from __future__ import annotations

import gzip
import logging
import math
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from concurrent import futures
from dataclasses import replace

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from otel_netlat.collect.snapshot import CounterPoint, HistogramSeries, Snapshot, attrs
from otel_netlat.export import ExportSettings, Telemetry, TelemetryError
from otel_netlat.export.otlp_env import resolve_otlp
from otel_netlat.export.prometheus_text import render_stock

BOUNDS_S = tuple(2**k / 1e9 for k in range(10, 30))
RX = attrs(
    netlat__stage="rx", network__type="ipv4", network__transport="tcp", network__io__direction="receive"
)
TX = attrs(
    netlat__stage="tx", network__type="ipv6", network__transport="udp", network__io__direction="transmit"
)
MiB = 2**20


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Tests set the OTEL_* env they need; nothing leaks in from the machine."""
    for name in (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
        "OTEL_METRIC_EXPORT_INTERVAL",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_SERVICE_NAME",
        "NODE_NAME",
    ):
        monkeypatch.delenv(name, raising=False)


def snapshot(n_series: int = 2, scale: int = 1) -> Snapshot:
    latency = [
        HistogramSeries(RX, tuple(scale * i for i in range(21)), scale * 5_000_000, scale * 210),
        HistogramSeries(TX, tuple(scale * (i % 3) for i in range(21)), scale * 123_456, scale * 21),
    ]
    for i in range(n_series - 2):
        a = attrs(
            netlat__stage="rx",
            network__type="ipv6",
            network__transport="tcp",
            network__io__direction="receive",
            source__address=f"fd00::{i:x}",
        )
        latency.append(HistogramSeries(a, tuple(scale * (i + j) for j in range(21)), scale * 999 * i, 0))
    return Snapshot(
        taken_at_ns=time.time_ns(),
        bounds_s=BOUNDS_S,
        latency=tuple(latency[:n_series]),
        packets=(CounterPoint(RX, scale * 300), CounterPoint(TX, scale * 21)),
        drops=(CounterPoint(attrs(netlat__drop__reason="NO_SOCKET", network__type="ipv4"), 7),),
        entries=(CounterPoint(attrs(netlat__stage="rx", netlat__outcome="sample"), 210),),
        skipped=(CounterPoint(attrs(netlat__stage="rx", netlat__skip__reason="non_ip"), 2),),
        folded=(CounterPoint(attrs(netlat__stage="rx"), 0),),
        series=(CounterPoint(attrs(netlat__stage="rx"), 2),),
        expired=(CounterPoint(attrs(netlat__stage="rx"), 5),),
        probes=(
            CounterPoint(attrs(netlat__stage="rx", netlat__hook="tp:net:netif_receive_skb"), 1),
            CounterPoint(attrs(netlat__stage="gro", netlat__hook__type="unavailable"), 0),
        ),
        sample_every=(CounterPoint((), 8),),
        missed=(CounterPoint(attrs(netlat__hook="net:netif_rx", netlat__hook__type="raw_tracepoint"), 3),),
    )


@pytest.fixture
def started():
    """start(settings, latest) → a started Telemetry, shut down after the test."""
    instances: list[Telemetry] = []

    def start(latest, **settings) -> Telemetry:
        t = Telemetry(ExportSettings(listen_host="127.0.0.1", listen_port=0, **settings), latest)
        t.start()
        instances.append(t)
        return t

    yield start
    for t in instances:
        t.shutdown()


def get(t: Telemetry, path: str = "/metrics", headers: dict | None = None):
    request = urllib.request.Request(f"http://127.0.0.1:{t.bound_port}{path}", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


def families(body: bytes) -> dict:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


def sample(fams: dict, family: str, name: str, **labels) -> float:
    for s in fams[family].samples:
        if s.name == name and labels.items() <= s.labels.items():
            return s.value
    raise AssertionError(f"no {name} {labels}")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- /metrics -------------------------------------------------------------------------------


def test_metrics_names_labels_values(started):
    t = started(lambda: snapshot())
    t.record_collection(0.003)
    status, headers, body = get(t)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    fams = families(body)
    rx = {
        "netlat_stage": "rx",
        "network_type": "ipv4",
        "network_transport": "tcp",
        "network_io_direction": "receive",
    }
    lat = "netlat_packet_latency_seconds"
    assert fams[lat].type == "histogram"
    assert sample(fams, lat, lat + "_bucket", le="1.024e-06", **rx) == 0
    assert sample(fams, lat, lat + "_bucket", le="2.048e-06", **rx) == 1
    assert sample(fams, lat, lat + "_bucket", le="+Inf", **rx) == sum(range(21))
    assert sample(fams, lat, lat + "_count", **rx) == 210
    assert sample(fams, lat, lat + "_sum", **rx) == pytest.approx(0.005)
    assert sample(fams, "netlat_packets", "netlat_packets_total", **rx) == 300
    assert (
        sample(fams, "netlat_packet_drops", "netlat_packet_drops_total", netlat_drop_reason="NO_SOCKET") == 7
    )
    assert sample(fams, "netlat_agent_entries", "netlat_agent_entries", netlat_outcome="sample") == 210
    assert (
        sample(fams, "netlat_agent_skipped", "netlat_agent_skipped_total", netlat_skip_reason="non_ip") == 2
    )
    assert sample(fams, "netlat_agent_series_folded", "netlat_agent_series_folded_total") == 0
    assert sample(fams, "netlat_agent_series_live", "netlat_agent_series_live", netlat_stage="rx") == 2
    expired = "netlat_agent_series_expired"
    assert sample(fams, expired, expired + "_total", netlat_stage="rx") == 5
    missed = "netlat_agent_hook_missed"
    hook = {"netlat_hook": "net:netif_rx", "netlat_hook_type": "raw_tracepoint"}
    assert sample(fams, missed, missed + "_total", **hook) == 3
    assert sample(fams, "netlat_latency_sample_every", "netlat_latency_sample_every") == 8
    assert sample(fams, "netlat_agent_probes", "netlat_agent_probes", netlat_stage="rx") == 1
    assert sample(fams, "netlat_agent_probes", "netlat_agent_probes", netlat_stage="gro") == 0
    duration = "netlat_agent_collection_duration_seconds"
    assert sample(fams, duration, duration + "_count") == 1
    assert sample(fams, duration, duration + "_sum") == pytest.approx(0.003)
    assert "netlat_agent_export_failures" not in fams  # no OTLP configured
    assert not any(k.startswith("otel_scope") for f in fams.values() for s in f.samples for k in s.labels)
    t.mark_ready()
    assert get(t, "/healthz")[::2] == (200, b"ok\n")
    assert get(t, "/")[0] == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        get(t, "/nope")
    assert e.value.code == 404


def healthz(t: Telemetry, method: str = "GET") -> tuple[int, bytes]:
    """(status, body) of /healthz, error statuses included."""
    request = urllib.request.Request(f"http://127.0.0.1:{t.bound_port}/healthz", method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_healthz_is_503_starting_until_mark_ready_then_200(started):
    t = started(lambda: snapshot())
    assert healthz(t) == (503, b"starting\n")
    assert healthz(t, "HEAD") == (503, b"")
    assert get(t)[0] == 200  # /metrics is served while starting: the agent's own counters
    marker = threading.Thread(target=t.mark_ready)  # from another thread, as the agent does
    marker.start()
    marker.join()
    assert healthz(t) == (200, b"ok\n")
    assert healthz(t, "HEAD") == (200, b"")
    t.mark_ready()  # again: harmless
    assert healthz(t) == (200, b"ok\n")


def test_healthz_stays_ok_while_otlp_export_fails(started, monkeypatch):
    # Readiness is about the agent, not the Collector: an absent one must not restart the pod.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds: fail fast
    t = started(lambda: snapshot(), otlp_endpoint=f"127.0.0.1:{closed_port()}", export_interval_s=0.1)
    t.mark_ready()
    wait_for(lambda: t._pipeline.exporter.failures >= 1)
    assert healthz(t) == (200, b"ok\n")


def test_promtool_check_metrics_is_clean(started):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    t = started(lambda: snapshot(n_series=50))
    t.record_collection(0.01)
    body = get(t)[2]
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result.stdout + result.stderr


def test_served_text_is_cached_and_equals_the_stock_path(started):
    current = {"snap": snapshot(n_series=30)}
    t = started(lambda: current["snap"])
    t.record_collection(0.002)
    body = get(t)[2]
    rendered_from = t._page.rendered_from
    assert body == render_stock(rendered_from, scope_info_enabled=False)
    assert get(t)[2] == body and t._page.rendered_from is rendered_from  # served from the cache
    current["snap"] = snapshot(n_series=30, scale=5)
    t.snapshot_updated()
    body2 = get(t)[2]
    assert t._page.rendered_from is not rendered_from and body2 != body
    assert body2 == render_stock(t._page.rendered_from, scope_info_enabled=False)
    status, headers, gz = get(t, headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and gzip.decompress(gz) == body2


def test_resource_defaults_and_env_overrides(started, monkeypatch):
    host = socket.gethostname()
    t = started(lambda: snapshot())
    info = families(get(t)[2])["target_info"].samples[0].labels
    assert info["service_name"] == "otel-netlat"
    assert info["host_name"] == host and info["service_instance_id"] == host
    assert "k8s_node_name" not in info

    monkeypatch.setenv("NODE_NAME", "node-7")
    monkeypatch.setenv(
        "OTEL_RESOURCE_ATTRIBUTES", "service.name=custom,deployment.environment=test,host.name=h1"
    )
    t = started(lambda: snapshot())
    info = families(get(t)[2])["target_info"].samples[0].labels
    assert info["k8s_node_name"] == "node-7" and info["service_instance_id"] == "node-7"
    assert info["service_name"] == "custom" and info["host_name"] == "h1"
    assert info["deployment_environment"] == "test"

    monkeypatch.setenv("OTEL_SERVICE_NAME", "by-service-name")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=i-1")
    t = started(lambda: snapshot())
    info = families(get(t)[2])["target_info"].samples[0].labels
    assert info["service_name"] == "by-service-name" and info["service_instance_id"] == "i-1"


def test_busy_port_is_one_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t = Telemetry(ExportSettings(listen_host="127.0.0.1", listen_port=port), lambda: snapshot())
        with pytest.raises(TelemetryError) as e:
            t.start()
    assert str(e.value) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use"
        " (is another otel-netlat running? set --listen)"
    )
    t.shutdown()  # harmless after a failed start


# ---- settings ------------------------------------------------------------------------------


def test_otlp_settings_resolution():
    assert resolve_otlp(ExportSettings(), {}) is None
    c = resolve_otlp(ExportSettings(otlp_endpoint="collector:4317"), {})
    assert (c.protocol, c.endpoint, c.interval_ms, c.exporter_name) == (
        "grpc",
        "http://collector:4317",
        15000,
        "otlp_grpc",
    )
    c = resolve_otlp(ExportSettings(otlp_endpoint="collector:4318", otlp_protocol="http/protobuf"), {})
    assert c.endpoint == "http://collector:4318/v1/metrics"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "DELTA",
    }
    c = resolve_otlp(ExportSettings(), env)
    assert (c.protocol, c.endpoint, c.shown_endpoint, c.interval_ms) == (
        "http/protobuf",
        None,
        "https://c:4318",
        5000,
    )
    from opentelemetry.sdk.metrics import Histogram, ObservableCounter, ObservableGauge

    assert c.temporality[Histogram].name == "DELTA" and c.temporality[ObservableCounter].name == "DELTA"
    assert c.temporality[ObservableGauge].name == "CUMULATIVE"
    c = resolve_otlp(ExportSettings(export_interval_s=2, temporality="cumulative", otlp_protocol="grpc"), env)
    assert (c.protocol, c.interval_ms, c.temporality[Histogram].name) == ("grpc", 2000, "CUMULATIVE")
    with pytest.raises(TelemetryError, match="http/json"):
        Telemetry(ExportSettings(otlp_endpoint="x:1", otlp_protocol="http/json"), lambda: snapshot())
    with pytest.raises(TelemetryError, match="temporality"):
        Telemetry(ExportSettings(otlp_endpoint="x:1", temporality="sometimes"), lambda: snapshot())
    # The env protocol goes through the config's parser: case ignored, a bad one named.
    c = resolve_otlp(ExportSettings(otlp_endpoint="x:1"), {"OTEL_EXPORTER_OTLP_PROTOCOL": " HTTP/Protobuf"})
    assert (c.protocol, c.endpoint) == ("http/protobuf", "http://x:1/v1/metrics")
    with pytest.raises(TelemetryError, match="^OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: .*'http/json'"):
        resolve_otlp(
            ExportSettings(otlp_endpoint="x:1"), {"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}
        )


# ---- OTLP ----------------------------------------------------------------------------------


class Receiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    """An OTLP/gRPC endpoint with a Collector's default 4 MiB receive limit."""

    def __init__(self) -> None:
        self.requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = []
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 (gRPC method name)
        with self.lock:
            self.requests.append(request)
            self.sizes.append(request.ByteSize())
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def points(self, name: str) -> list:
        with self.lock:
            requests = list(self.requests)
        return [
            p
            for r in requests
            for rm in r.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            if m.name == name
            for p in getattr(m, m.WhichOneof("data")).data_points
        ]


@pytest.fixture
def receiver():
    r = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(r, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    r.endpoint = f"127.0.0.1:{port}"
    yield r
    server.stop(grace=None)


def wait_for(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_ten_thousand_series_export_in_requests_under_4_mib(started, receiver):
    big = snapshot(n_series=10_000)
    t = started(lambda: big, otlp_endpoint=receiver.endpoint, export_interval_s=1)
    wait_for(lambda: len(receiver.points("netlat.packet.latency")) >= 10_000, timeout_s=60)
    t.shutdown()
    assert len(receiver.sizes) > 1 and max(receiver.sizes) < 4 * MiB
    assert t._pipeline.exporter.failures == 0
    first = receiver.points("netlat.packet.latency")[:10_000]
    assert len({tuple((kv.key, kv.value.string_value) for kv in p.attributes) for p in first}) == 10_000


def test_delta_export_adds_up_to_the_cumulative(started, receiver):
    state = {"scale": 1}
    t = started(
        lambda: snapshot(scale=state["scale"]),
        otlp_endpoint=receiver.endpoint,
        export_interval_s=0.2,
        temporality="delta",
    )
    for scale in (2, 3, 7):
        wait_for(lambda n=scale: len(receiver.requests) >= n)  # an export saw the previous snapshot
        state["scale"] = scale
        t.snapshot_updated()
    t.shutdown()  # the final export carries the last delta
    final = snapshot(scale=7)
    points = receiver.points("netlat.packet.latency")
    assert points and all(p.start_time_unix_nano < p.time_unix_nano for p in points)
    rx = [
        p
        for p in points
        if ("netlat.stage", "rx") in {(kv.key, kv.value.string_value) for kv in p.attributes}
    ]
    assert sum(p.count for p in rx) == final.latency[0].count
    assert math.isclose(sum(p.sum for p in rx), final.latency[0].sum_seconds, rel_tol=1e-9)
    assert [sum(col) for col in zip(*(p.bucket_counts for p in rx), strict=True)] == list(
        final.latency[0].bucket_counts
    )
    packets = [p for p in receiver.points("netlat.packets") if p.attributes[0].value.string_value == "rx"]
    assert sum(p.as_int for p in packets) == 7 * 300  # the SDK converts the observable counters


def test_an_expired_series_leaves_every_exporter_and_comes_back_new(started, receiver):
    """Gone from /metrics and from OTLP; back with a new start time and counted from zero."""
    pod = attrs(netlat__stage="rx", network__io__direction="receive", k8s__pod__name="web-0")
    base = snapshot()

    def with_pod(n: int, start_ns: int) -> Snapshot:
        series = HistogramSeries(pod, (n,) + (0,) * 20, 1_000 * n, n, start_ns)
        return replace(
            base, latency=(*base.latency, series), packets=(*base.packets, CounterPoint(pod, n, start_ns))
        )

    state = {"snap": with_pod(9, 0)}
    t = started(lambda: state["snap"], otlp_endpoint=receiver.endpoint, export_interval_s=0.2)
    pages, exported = {}, {}
    for step, snap in (("before", with_pod(9, 0)), ("expired", base), ("back", with_pod(2, time.time_ns()))):
        state["snap"] = snap
        t.snapshot_updated()
        pages[step] = families(get(t)[2])
        requests = len(receiver.requests)
        wait_for(
            lambda n=requests: len(receiver.requests) >= n + 2
        )  # the last one collected after the change
        last = Receiver()
        last.requests = receiver.requests[-1:]
        exported[step] = {
            name: [p for p in last.points(name) if ("k8s.pod.name", "web-0") in _pairs(p)]
            for name in ("netlat.packet.latency", "netlat.packets")
        }
    t.shutdown()
    packets = ("netlat_packets", "netlat_packets_total")
    assert sample(pages["before"], *packets, k8s_pod_name="web-0") == 9
    with pytest.raises(AssertionError, match="no netlat_packets_total"):
        sample(pages["expired"], *packets, k8s_pod_name="web-0")
    assert sample(pages["back"], *packets, k8s_pod_name="web-0") == 2
    for name, value in (("netlat.packet.latency", "count"), ("netlat.packets", "as_int")):
        before, expired, back = (exported[step][name] for step in ("before", "expired", "back"))
        assert before and not expired and back, name
        assert {getattr(p, value) for p in before} == {9} and {getattr(p, value) for p in back} == {2}, name
        assert min(p.start_time_unix_nano for p in back) > max(p.start_time_unix_nano for p in before), name


def _pairs(point) -> set[tuple[str, str]]:
    return {(kv.key, kv.value.string_value) for kv in point.attributes}


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_gone_failures_counted_logged_once_and_shutdown_is_quick(
    started, monkeypatch, caplog, protocol
):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds, as the Python SDK reads it
    caplog.set_level(logging.INFO)
    t = started(
        lambda: snapshot(),
        otlp_endpoint=f"127.0.0.1:{closed_port()}",
        otlp_protocol=protocol,
        export_interval_s=0.1,
    )
    name = "otlp_grpc" if protocol == "grpc" else "otlp_http"

    def failures() -> float:
        return sample(
            families(get(t)[2]),
            "netlat_agent_export_failures",
            "netlat_agent_export_failures_total",
            exporter=name,
        )

    assert failures() == 0
    wait_for(lambda: failures() >= 2)
    began = time.monotonic()
    t.shutdown()
    assert time.monotonic() - began < 5
    ours = [
        r
        for r in caplog.records
        if r.name == "otel_netlat.export.otlp_exporter" and r.levelno >= logging.WARNING
    ]
    assert len(ours) == 1 and "failed" in ours[0].getMessage()
    assert not [
        r
        for r in caplog.records
        if r.name.startswith("opentelemetry.exporter") and r.levelno >= logging.WARNING
    ]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_shutdown_during_retries_does_not_wait_them_out(started, protocol):
    # The SDK's default 10 s timeout: one failing export spends ~7 s in retries.
    t = started(
        lambda: snapshot(),
        otlp_endpoint=f"127.0.0.1:{closed_port()}",
        otlp_protocol=protocol,
        export_interval_s=0.2,
    )
    time.sleep(1.0)  # the first export is backing off now
    began = time.monotonic()
    t.shutdown()
    assert time.monotonic() - began < 5
