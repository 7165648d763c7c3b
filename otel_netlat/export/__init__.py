"""Snapshots to OpenTelemetry, and out: Prometheus text on :2112 and OTLP push.

The commands import from here. Inside, one module a job:

- ``settings``: :class:`ExportSettings` and :class:`TelemetryError`;
- ``pinning``: one snapshot per collection;
- ``points``: kernel histograms → OTel data points (series cap, deltas), merged into a collection;
- ``readers``: the reader subclasses that inject them — the only module touching SDK internals;
- ``prometheus_text``: the fast, byte-identical Prometheus renderer;
- ``metrics_page``: the /metrics body cache;
- ``otlp_env``, ``otlp_split``, ``otlp_exporter``: OTLP settings, byte-bounded requests, the guarded exporter;
- ``provider``: the MeterProvider, resource and instruments;
- ``http_server``: /metrics, /healthz (readiness), /;
- ``telemetry``: :class:`Telemetry`, the facade that starts and stops it all.
"""

from otel_netlat.export.settings import ExportSettings, TelemetryError
from otel_netlat.export.telemetry import Telemetry

__all__ = ["ExportSettings", "Telemetry", "TelemetryError"]
