"""Slow-packet records as OTLP log records, through the real Collector built from collector/.

Hand-made :class:`SlowRecord` objects go through :class:`SlowLogExporter` over both OTLP
protocols; the Collector's ``file/logs`` exporter must hold exactly what they say. With the
Collector gone, records are counted lost, and neither ``emit`` nor ``shutdown`` waits on it.
"""

from __future__ import annotations

import logging
import time

import pytest
from opentelemetry.sdk.resources import Resource

from otel_netlat.collect.snapshot import SlowRecord
from otel_netlat.export.otlp_env import resolve_otlp
from otel_netlat.export.settings import ExportSettings, TelemetryError
from otel_netlat.export.slow_logs import EVENT_NAME, SlowLogExporter, build_slow_log_exporter, logs_endpoint
from tests.support.collector import CollectorPorts, LogRecordOut
from tests.support.wait import poll_until

NOW = time.time_ns()
RECORDS = (
    SlowRecord("socket", 431_234_567, NOW - 3_000_000, 1, "ipv4", "udp", "10.1.2.1", 40000, "10.1.2.2", 5000,
               7, 4026532001),
    SlowRecord("backlog", 2_500_000, NOW - 2_000_000, 0, "ipv6", "tcp", "fd00::1", 51000, "fd00::2", 443,
               9, 4026532002, (("k8s.namespace.name", "shop"), ("k8s.pod.name", "web-7"))),
    SlowRecord("qdisc", 250_000, NOW - 1_000_000, 1, "ipv4", "icmp", "10.1.2.2", 0, "10.1.2.1", 0,
               7, 4026532001),
)  # fmt: skip
BODIES = (
    "slow packet: socket 431.2 ms udp 10.1.2.1:40000 -> 10.1.2.2:5000 cpu 1",
    "slow packet: backlog 2.5 ms tcp [fd00::1]:51000 -> [fd00::2]:443 cpu 0 pod shop/web-7",
    "slow packet: qdisc 250 us icmp 10.1.2.2 -> 10.1.2.1 cpu 1",
)
RESOURCE = Resource.create({"service.name": "otel-netlat", "k8s.node.name": "node-slow"})
SEVERITY_INFO = 9


def _endpoint(collector, protocol: str) -> str:
    """What a user passes to --otlp-endpoint: a bare base URL; the agent adds the paths."""
    return f"http://{collector.grpc_endpoint}" if protocol == "grpc" else collector.http_endpoint


def _exporter(endpoint: str, protocol: str, **kwargs) -> SlowLogExporter:
    settings = ExportSettings(otlp_endpoint=endpoint, otlp_protocol=protocol)
    config = resolve_otlp(settings, environ={})
    assert config is not None
    return SlowLogExporter(config, RESOURCE, environ={}, **{"schedule_delay_ms": 100, **kwargs})


def _expected(record: SlowRecord) -> dict:
    """Exactly the attributes of a record: the 5-tuple, stage, where, pod, latency."""
    out = {
        "netlat.stage": record.stage,
        "network.type": record.network_type,
        "network.transport": record.transport,
        "source.address": record.source_address,
        "destination.address": record.destination_address,
        "cpu.logical_number": record.cpu,
        "network.interface.index": record.ifindex,
        "netlat.netns.inode": record.netns,
        "netlat.latency_seconds": record.latency_ns / 1e9,
    }
    if record.source_port:
        out |= {"source.port": record.source_port, "destination.port": record.destination_port}
    return out | dict(record.pod)


def _check_record(got: LogRecordOut, record: SlowRecord, body: str) -> None:
    assert got.attributes == _expected(record)
    assert got.body == body
    assert got.time_unix_nano == record.time_unix_ns
    assert got.observed_time_unix_nano > record.time_unix_ns  # observed when emitted, after it
    assert (got.severity_number, got.severity_text) == (SEVERITY_INFO, "INFO")
    assert got.event_name == EVENT_NAME
    assert got.scope == "otel_netlat"
    assert got.resource["service.name"] == "otel-netlat"
    assert got.resource["k8s.node.name"] == "node-slow"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_records_arrive_as_log_records(collector, protocol):
    exporter = _exporter(_endpoint(collector, protocol), protocol)
    try:
        exporter.emit(RECORDS)
        got = collector.wait_for_log_records(len(RECORDS))
    finally:
        exporter.shutdown(5.0)
    assert len(got) == len(RECORDS)
    by_stage = {r.attributes["netlat.stage"]: r for r in got}
    for record, body in zip(RECORDS, BODIES, strict=True):
        _check_record(by_stage[record.stage], record, body)
    counts = exporter.counts()
    assert (counts.emitted, counts.exported) == (3, 3)
    assert set(counts.lost.values()) == {0}
    # The metrics file saw none of them: one file per signal.
    assert not [r for r in collector.exported() if "resourceLogs" in r]


def test_shutdown_sends_what_is_queued(collector):
    """The agent stops: records of its last interval still reach a Collector that is up."""
    exporter = _exporter(_endpoint(collector, "grpc"), "grpc", schedule_delay_ms=3_600_000)
    exporter.emit(RECORDS)
    exporter.shutdown(5.0)
    assert exporter.counts().exported == len(RECORDS)
    assert len(collector.wait_for_log_records(len(RECORDS))) == len(RECORDS)


def test_logs_url_beside_the_metrics_url():
    def url(endpoint: str | None, protocol: str = "http/protobuf", **env: str) -> str | None:
        config = resolve_otlp(ExportSettings(otlp_endpoint=endpoint, otlp_protocol=protocol), env)
        assert config is not None
        return logs_endpoint(config, env)

    assert url("http://c:4318") == "http://c:4318/v1/logs"
    assert url("c:4318") == "http://c:4318/v1/logs"
    assert url("https://gw/otlp/v1/metrics") == "https://gw/otlp/v1/logs"
    assert url("c:4317", "grpc") == "http://c:4317"
    assert (
        url(None, OTEL_EXPORTER_OTLP_METRICS_ENDPOINT="http://c:4318/v1/metrics") == "http://c:4318/v1/logs"
    )
    assert url(None, OTEL_EXPORTER_OTLP_ENDPOINT="http://c:4318") is None  # the SDK adds /v1/logs
    assert url("http://c:4318", OTEL_EXPORTER_OTLP_LOGS_ENDPOINT="http://l:4318/v1/logs") is None
    with pytest.raises(TelemetryError, match="OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        url("http://gw/custom")


def test_metrics_url_from_the_env_gives_the_logs_url(collector, monkeypatch):
    """Only OTEL_EXPORTER_OTLP_METRICS_ENDPOINT set: logs go to its /v1/logs twin."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", collector.http_metrics_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    exporter = build_slow_log_exporter(ExportSettings(), RESOURCE)
    assert exporter is not None
    try:
        exporter.emit(RECORDS[:1])
        (got,) = collector.wait_for_log_records(1)
    finally:
        exporter.shutdown(5.0)
    _check_record(got, RECORDS[0], BODIES[0])


def test_no_exporter_without_otlp_or_when_disabled(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert build_slow_log_exporter(ExportSettings()) is None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert build_slow_log_exporter(ExportSettings(otlp_endpoint="127.0.0.1:4317")) is None


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_down_loses_records_without_blocking(
    collector_factory, protocol, monkeypatch, caplog, capfd
):
    """Stop the Collector: records are lost and counted, emit and shutdown stay quick, memory
    stays bounded by the queue; once it is back, records arrive again."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")  # each failed export gives up after 2 s
    caplog.set_level(logging.INFO)
    collector = collector_factory(file_export=True)
    exporter = _exporter(_endpoint(collector, protocol), protocol, max_queue=64)
    try:
        exporter.emit(RECORDS[:1])
        collector.wait_for_log_records(1)
        collector.stop()

        flood = RECORDS * 100
        started = time.monotonic()
        exporter.emit(flood)
        assert time.monotonic() - started < 1.0, "emit waited on the Collector"
        counts = poll_until(
            lambda: (c := exporter.counts()).lost["export_failed"] > 0 and c,
            20,
            "an export failure to be counted",
        )
        offered = 1 + len(flood)
        assert counts.lost["queue_full"] > 0
        assert counts.emitted + counts.lost["queue_full"] == offered
        assert counts.emitted <= 1 + 2 * 64  # the queue, plus one batch in flight: bounded
        assert counts.exported == 1

        collector.start()
        exporter.emit(RECORDS[1:2])
        poll_until(
            lambda: any(r.attributes["netlat.stage"] == "backlog" for r in collector.log_records()),
            30,
            "a record sent after the Collector came back",
        )
    finally:
        started = time.monotonic()
        exporter.shutdown(3.0)
        assert time.monotonic() - started < 3.5, "shutdown waited on the Collector"
    failures = [r for r in caplog.records if "slow-packet log export" in r.getMessage()]
    assert failures and len([r for r in failures if r.levelno == logging.WARNING]) == 1
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert "Traceback" not in capfd.readouterr().err


def test_nobody_listening_is_counted_and_shutdown_is_bounded(monkeypatch, caplog):
    """An endpoint nobody ever listened on: the same, with no Collector at all."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "2")
    ports = CollectorPorts.pick()
    exporter = _exporter(f"http://127.0.0.1:{ports.http}", "http/protobuf", max_queue=16)
    try:
        exporter.emit(RECORDS * 20)
        poll_until(lambda: exporter.counts().lost["export_failed"] > 0, 20, "an export failure")
    finally:
        started = time.monotonic()
        exporter.shutdown(2.0)
        assert time.monotonic() - started < 2.5
    counts = exporter.counts()
    assert counts.exported == 0
    assert counts.emitted == sum(counts.lost[r] for r in ("export_failed", "shutdown"))
    assert not [r for r in caplog.records if r.exc_info]
