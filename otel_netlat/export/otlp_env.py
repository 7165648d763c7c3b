"""OTLP settings: the command's choices first, then the standard OTEL_* environment.

The SDK exporters read most of the OTLP environment themselves (headers, timeout,
compression, TLS); what the agent must decide before building one — whether to export at
all, which protocol (hence which exporter class), the interval and the temporality — is
resolved here into one :class:`OtlpConfig`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE,
    OTEL_METRIC_EXPORT_INTERVAL,
)
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality

from otel_netlat.config import ConfigError, parse_otlp_protocol
from otel_netlat.export.settings import ExportSettings, TelemetryError

log = logging.getLogger(__name__)

DEFAULT_EXPORT_INTERVAL_S = 15.0
#: Env var for the protocol: the SDK does not read it (the app picks the exporter class).
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"

_D, _C = AggregationTemporality.DELTA, AggregationTemporality.CUMULATIVE
#: OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE, as the spec (and the SDK) maps it.
TEMPORALITIES: dict[str, dict[type, AggregationTemporality]] = {
    "cumulative": {Counter: _C, UpDownCounter: _C, Histogram: _C, ObservableCounter: _C},
    "delta": {Counter: _D, UpDownCounter: _C, Histogram: _D, ObservableCounter: _D},
    "lowmemory": {Counter: _D, UpDownCounter: _C, Histogram: _D, ObservableCounter: _C},
}
for _t in TEMPORALITIES.values():
    _t.update({ObservableUpDownCounter: _C, ObservableGauge: _C})


@dataclass(frozen=True)
class OtlpConfig:
    """The resolved OTLP settings."""

    protocol: str
    endpoint: str | None  # None: the SDK exporter reads the OTEL_EXPORTER_OTLP_* env itself
    shown_endpoint: str
    interval_ms: float
    temporality: dict[type, AggregationTemporality]

    @property
    def exporter_name(self) -> str:
        """The ``exporter`` attribute of the failure counter."""
        return "otlp_grpc" if self.protocol == "grpc" else "otlp_http"


def resolve_otlp(settings: ExportSettings, environ: Mapping[str, str] = os.environ) -> OtlpConfig | None:
    """OTLP settings from ``settings`` then the env; ``None`` when no endpoint is given."""
    env_endpoint = environ.get(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) or environ.get(
        OTEL_EXPORTER_OTLP_ENDPOINT
    )
    if not settings.otlp_endpoint and not env_endpoint:
        return None
    protocol = _protocol(settings, environ)
    check_timeouts(environ)
    endpoint = _endpoint(settings.otlp_endpoint, protocol) if settings.otlp_endpoint else None
    return OtlpConfig(
        protocol=protocol,
        endpoint=endpoint,
        shown_endpoint=endpoint or env_endpoint or "",
        interval_ms=_interval_ms(settings, environ),
        temporality=dict(_temporality(settings, environ)),
    )


def _protocol(settings: ExportSettings, environ: Mapping[str, str]) -> str:
    """The command's protocol, else the env's, else grpc, checked by the config's one parser.

    The env variables are read here (the SDK does not read them), so they go through the same
    check as ``--otlp-protocol`` and accept the same words.
    """
    for where, raw in (
        ("OTLP protocol", settings.otlp_protocol),
        (OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, environ.get(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)),
        (OTEL_EXPORTER_OTLP_PROTOCOL, environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)),
    ):
        if raw:
            try:
                return parse_otlp_protocol(raw, where)
            except ConfigError as e:
                raise TelemetryError(str(e)) from None
    return "grpc"


def _temporality(settings: ExportSettings, environ: Mapping[str, str]) -> dict[type, AggregationTemporality]:
    """The command's temporality, else the env's, else cumulative; an error names its source."""
    source, preference = "OTLP temporality", settings.temporality
    if not preference:
        source = OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE
        preference = environ.get(source) or "cumulative"
    temporality = TEMPORALITIES.get(preference.strip().lower())
    if temporality is None:
        raise TelemetryError(f"{source}: {preference!r} is not supported: use cumulative, delta or lowmemory")
    return temporality


#: The SDK's exporters read these as a number of seconds and fail with a bare ValueError.
TIMEOUT_VARIABLES = ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
#: The longest export interval: the SDK waits on a threading.Event, which refuses more.
MAX_EXPORT_INTERVAL_MS = 3_600_000


def check_timeouts(environ: Mapping[str, str]) -> None:
    """The OTLP timeout variables, checked before the SDK reads them (it names no variable)."""
    for name in TIMEOUT_VARIABLES:
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            ok = float(raw) > 0
        except ValueError:
            ok = False
        if not ok:
            raise TelemetryError(f"{name}: {raw[:80]!r} is not a positive number of seconds")


def _endpoint(endpoint: str, protocol: str) -> str:
    """A bare ``host:port`` means plaintext; HTTP gets the ``/v1/metrics`` path if it has none."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    if protocol == "http/protobuf" and urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/v1/metrics"
    return url


def _interval_ms(settings: ExportSettings, environ: Mapping[str, str]) -> float:
    """The export interval: the command's, else a valid OTEL_METRIC_EXPORT_INTERVAL, else 15 s."""
    if settings.export_interval_s is not None:
        if not 0 < settings.export_interval_s * 1000 <= MAX_EXPORT_INTERVAL_MS:
            most = MAX_EXPORT_INTERVAL_MS // 1000
            raise TelemetryError(f"export interval must be in (0, {most}] s: {settings.export_interval_s}")
        return settings.export_interval_s * 1000
    raw = environ.get(OTEL_METRIC_EXPORT_INTERVAL)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if 0 < value <= MAX_EXPORT_INTERVAL_MS:
            return value
        log.warning(
            "ignoring %s=%r: not a number of milliseconds in (0, %d]",
            OTEL_METRIC_EXPORT_INTERVAL,
            raw[:80],
            MAX_EXPORT_INTERVAL_MS,
        )
    return DEFAULT_EXPORT_INTERVAL_S * 1000
