"""The otelcol-netlat Collector distribution: builds, starts from collector/config.yaml and
turns OTLP from the Python SDK (gRPC and HTTP) into Prometheus series with node labels."""

from __future__ import annotations

import json
import subprocess
import urllib.request

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.support.collector import CONFIG


def test_validate_passes_on_config_yaml(collector_binary):
    r = subprocess.run(
        [str(collector_binary), "validate", "--config", str(CONFIG)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_components_are_the_pinned_release(collector_binary):
    out = subprocess.run(
        [str(collector_binary), "components"], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    for name in ("otlp", "memory_limiter", "batch", "debug", "prometheus", "file", "health_check"):
        assert f"- name: {name}\n" in out, name
    modules = [line.split("module:")[1].split() for line in out.splitlines() if "module:" in line]
    assert modules and all(v in ("v0.161.0", "v1.67.0") for _, v in modules), modules


def test_starts_healthy_from_config_yaml(collector_factory):
    c = collector_factory()
    with urllib.request.urlopen(c.health_url, timeout=5) as r:
        assert r.status == 200
        assert json.load(r)["status"] == "Server available"
    # Nothing received yet: the exporter endpoint answers, empty.
    assert "k8s_node_name" not in c.scrape()


def test_file_variant_starts_healthy_and_restarts(collector_factory):
    c = collector_factory(file_export=True)
    ports = c.ports
    c.restart()
    assert c.ports == ports and c.running
    assert c.stop() == 0  # SIGTERM is a clean shutdown
    assert not c.running


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_export_reaches_file_and_prometheus(collector_factory, protocol):
    c = collector_factory(file_export=True)
    if protocol == "grpc":
        exporter = GrpcExporter(endpoint=c.grpc_endpoint, insecure=True, timeout=10)
    else:
        exporter = HttpExporter(endpoint=c.http_metrics_url, timeout=10)
    node = f"node-{protocol}"
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "netlat-test", "k8s.node.name": node}),
        metric_readers=[reader],
    )
    try:
        counter = provider.get_meter("tests.collector").create_counter("netlat.test.packets")
        counter.add(3, {"network.transport": "udp"})
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()

    p = c.wait_for_point(
        "netlat.test.packets", {"network.transport": "udp"}, resource={"k8s.node.name": node}
    )
    assert p.kind == "sum" and p.value == 3
    assert p.raw["attributes"] and p.resource["service.name"] == "netlat-test"

    v = c.wait_for_prometheus("netlat_test_packets_total", k8s_node_name=node, network_transport="udp")
    assert v == 3


def test_grpc_receive_limit_stays_at_default_4mib(collector_factory):
    """The agent must split large exports: a request over 4 MiB is refused, not absorbed."""
    c = collector_factory()
    big = PbResource(attributes=[KeyValue(key="pad", value=AnyValue(string_value="x" * (5 << 20)))])
    req = metrics_service_pb2.ExportMetricsServiceRequest()
    req.resource_metrics.add(resource=big)
    with grpc.insecure_channel(c.grpc_endpoint) as ch:
        stub = metrics_service_pb2_grpc.MetricsServiceStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Export(req, timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert str(4 << 20) in e.value.details()
