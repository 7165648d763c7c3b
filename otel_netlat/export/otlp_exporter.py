"""The OTLP exporter the agent runs: the SDK's, guarded against a missing Collector.

A Collector that is down must cost a log line a minute, not a traceback per cycle, and must
never hold up the agent's shutdown; requests must stay under the Collector's receive limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from otel_netlat.export.otlp_env import OtlpConfig
from otel_netlat.export.otlp_split import split_metrics_data
from otel_netlat.export.settings import TelemetryError

log = logging.getLogger(__name__)

FAILURE_LOG_INTERVAL_S = 60.0


def build_exporter(config: OtlpConfig) -> MetricExporter:
    """The SDK's OTLP exporter; it reads headers, timeout, compression and TLS from the env."""
    try:
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

            return Grpc(endpoint=config.endpoint, preferred_temporality=config.temporality)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        return Http(endpoint=config.endpoint, preferred_temporality=config.temporality)
    except Exception as e:  # bad compression, headers, certificate paths...
        raise TelemetryError(f"cannot set up the OTLP exporter: {e}") from e


class _SdkLogCapture(logging.Filter):
    """Keeps the OTLP exporters' per-attempt warnings out of the log; remembers the first one.

    With the Collector down the SDK logs 15-30 lines a minute; the agent reports failures
    itself, at most once a minute, with this message as the reason.
    """

    LOGGERS = (
        "opentelemetry.exporter.otlp.proto.grpc.exporter",
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter",
        "opentelemetry.exporter.otlp.proto.http.metric_exporter",
    )

    def __init__(self) -> None:
        super().__init__()
        self.first: str | None = None  # the first warning since take(): names the error

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            if self.first is None:
                self.first = record.getMessage()
            return False
        return True

    def install(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)

    def uninstall(self) -> None:
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)

    def take(self) -> str | None:
        first, self.first = self.first, None
        return first


class _FailureLog:
    """Logs export failures at most once per ``every_s``, with the count since the last line."""

    def __init__(self, what: str, every_s: float = FAILURE_LOG_INTERVAL_S) -> None:
        self.what = what
        self.every_s = every_s
        self._count = 0
        self._last_line: float | None = None
        self._failing = False

    def failure(self, reason: str) -> None:
        self._count += 1
        self._failing = True
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self.every_s:
            log.warning(
                "%s failed (%d time(s) since the last report; reported at most every %.0fs): %s",
                self.what, self._count, self.every_s, reason,
            )  # fmt: skip
            self._last_line, self._count = now, 0

    def success(self) -> None:
        if self._failing:
            log.info("%s works again (%d failure(s) since the last report)", self.what, self._count)
            self._failing, self._count = False, 0


class ExportGuard:
    """What wrapping one SDK exporter takes, for metrics and logs alike: whether the last
    export failed or one is in flight, the SDK's per-attempt retry warnings captured (so a
    Collector that is down costs one log line a minute, not one per retry), and an abort
    that shuts the SDK exporter down (cutting off its back-off and, for gRPC, the in-flight
    call)."""

    def __init__(self, inner: Any, what: str, capture: _SdkLogCapture) -> None:
        self.inner = inner
        self.what = what
        self.failing = False
        self.exporting = False
        self.aborted = threading.Event()
        self.capture = capture
        self.log = _FailureLog(what)

    @contextmanager
    def attempt(self) -> Iterator[None]:
        """One export: the capture starts empty, and ``troubled`` sees it in flight."""
        self.capture.take()
        self.exporting = True
        try:
            yield
        finally:
            self.exporting = False

    def failed(self, reason: str | None) -> None:
        self.failing = True
        self.log.failure(reason or self.capture.take() or "no reason given")

    def succeeded(self) -> None:
        self.failing = False
        self.log.success()

    @property
    def troubled(self) -> bool:
        """The last export failed, or the current one is retrying: the Collector is not there."""
        return self.failing or (self.exporting and self.capture.first is not None)

    def abort(self) -> None:
        """Stop exporting now, cutting off retries and in-flight calls."""
        if self.aborted.is_set():
            return
        self.aborted.set()
        try:
            self.inner.shutdown()
        except Exception:
            log.debug("%s: exporter shutdown failed", self.what, exc_info=True)


class GuardedExporter(MetricExporter):
    """Wraps the SDK OTLP exporter: byte-bounded requests, failure counting, bounded shutdown.

    - each export is split (:func:`split_metrics_data`) so no request nears the Collector's
      4 MiB gRPC limit; after one failed request the rest of that cycle is skipped;
    - a failed export calls ``on_failure`` (the failure counter) and is logged at most once
      a minute;
    - :meth:`abort` shuts the SDK exporter down, which cuts off its retry back-off and, for
      gRPC, cancels the in-flight call: the agent's shutdown never waits out the retries.
    """

    def __init__(self, inner: MetricExporter, config: OtlpConfig, on_failure: Callable[[], None]) -> None:
        # The periodic reader takes temporality and aggregation from its exporter: ours, plus
        # the SDK exporter's aggregation (OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION).
        super().__init__(
            preferred_temporality=config.temporality,
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner
        self.name = config.exporter_name
        self.failures = 0
        self._on_failure = on_failure
        self._guard = ExportGuard(
            inner, f"OTLP export ({config.protocol}) to {config.shown_endpoint}", _SdkLogCapture()
        )

    @property
    def failing(self) -> bool:
        return self._guard.failing

    def start(self) -> None:
        self._guard.capture.install()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._guard.aborted.is_set():
            return MetricExportResult.FAILURE  # shutting down: not sent, not a failure
        with self._guard.attempt():
            return self._export(metrics_data, timeout_millis)

    def _export(self, metrics_data: MetricsData, timeout_millis: float) -> MetricExportResult:
        for chunk in split_metrics_data(metrics_data):
            try:
                result = self.inner.export(chunk, timeout_millis=timeout_millis)
                reason = None
            except Exception as e:  # the reader would log a traceback per cycle
                result, reason = MetricExportResult.FAILURE, f"{type(e).__name__}: {e}"
            if result is not MetricExportResult.SUCCESS:
                if self._guard.aborted.is_set():
                    return result  # cut off by shutdown: not a Collector failure
                self.failures += 1
                self._on_failure()
                self._guard.failed(reason)
                return MetricExportResult.FAILURE
        self._guard.succeeded()
        return MetricExportResult.SUCCESS

    @property
    def troubled(self) -> bool:
        """The last export failed, or the current one is retrying: the Collector is not there."""
        return self._guard.troubled

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def abort(self) -> None:
        """Stop exporting now, cutting off retries and in-flight calls."""
        self._guard.abort()

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abort()
        self._guard.capture.uninstall()
