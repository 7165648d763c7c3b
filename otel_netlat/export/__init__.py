"""Snapshots to OpenTelemetry, and out: Prometheus text on :2112 and OTLP push.

The commands import from here; the modules inside split the work (data points, the
Prometheus renderer, OTLP request splitting, the provider, the HTTP server).
"""

from otel_netlat.export.telemetry import ExportSettings, Telemetry, TelemetryError

__all__ = ["ExportSettings", "Telemetry", "TelemetryError"]
