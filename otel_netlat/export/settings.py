"""What the commands hand the export side, and the one error it raises back.

Kept apart from everything else so the OTLP resolution, the HTTP server and the facade can
all name them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass


class TelemetryError(Exception):
    """Telemetry cannot start as configured (one line, printed by the CLI)."""


@dataclass(frozen=True)
class ExportSettings:
    """Where and how to export. ``None`` means: the standard OTEL_* env var, else the default."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 2112
    otlp_endpoint: str | None = None
    otlp_protocol: str | None = None  # grpc | http/protobuf
    export_interval_s: float | None = None
    temporality: str | None = None  # cumulative | delta | lowmemory
