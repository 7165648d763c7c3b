"""Slow-packet records as OTLP log records, pushed to where the metrics go.

The agent's loop hands over each interval's new records; they must never hold it up nor
grow its memory: records wait in the logs SDK's batch queue, admitted only while fewer than
``max_queue`` are waiting, and a Collector that is down loses them — counted by reason,
logged at most once a minute — instead of blocking or piling up.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from opentelemetry._logs import SeverityNumber
from opentelemetry.context import Context
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_LOGS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from otel_netlat.collect.snapshot import SlowRecord
from otel_netlat.export.otlp_env import OtlpConfig, resolve_otlp
from otel_netlat.export.otlp_exporter import ExportGuard, _SdkLogCapture
from otel_netlat.export.provider import build_resource, instrumentation_scope
from otel_netlat.export.settings import ExportSettings, TelemetryError

log = logging.getLogger(__name__)

EVENT_NAME = "netlat.slow_packet"
#: Records waiting for export, at most (≈1.5 KiB each; one batch more is in flight): the
#: memory bound of this path.
MAX_QUEUE = 2048
#: Records per OTLP request, and how often a partial batch is sent.
MAX_BATCH = 512
SCHEDULE_DELAY_MS = 1000
#: How long before the shutdown deadline an in-flight export is cut off.
ABORT_MARGIN_S = 1.0
#: Why records were lost: no room in the queue, the Collector refused or was not there,
#: or still queued when the agent stopped.
LOST_REASONS = ("queue_full", "export_failed", "shutdown")


@dataclass(frozen=True)
class SlowLogCounts:
    """Cumulative tallies, for self-metrics.

    ``emitted`` records were queued for export; of them ``exported`` reached the Collector;
    ``lost`` counts by reason, ``queue_full`` ones never having been queued. So
    ``emitted == exported + lost["export_failed"] + lost["shutdown"] + pending``.
    """

    emitted: int
    exported: int
    lost: Mapping[str, int]


class _Tally:
    """Thread-safe counts shared by the agent's thread (emit) and the export worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._emitted = self._handed = self._exported = 0
        self._lost = dict.fromkeys(LOST_REASONS, 0)

    def admit(self, limit: int) -> bool:
        """One more record may be queued: fewer than ``limit`` wait (else lost: queue_full).

        Counting here, not trusting the SDK's queue, keeps it from silently evicting the
        oldest record and logging a warning per record.
        """
        with self._lock:
            if self._emitted - self._handed >= limit:
                self._lost["queue_full"] += 1
                return False
            self._emitted += 1
            return True

    def handed(self, n: int) -> None:
        with self._lock:
            self._handed += n

    def exported(self, n: int) -> None:
        with self._lock:
            self._exported += n

    def lost(self, reason: str, n: int) -> None:
        with self._lock:
            self._lost[reason] += n

    def counts(self) -> SlowLogCounts:
        with self._lock:
            return SlowLogCounts(self._emitted, self._exported, dict(self._lost))


# ---- what one record says ---------------------------------------------------------------------


def _address(address: str, port: int, network_type: str) -> str:
    if not port:
        return address
    return f"[{address}]:{port}" if network_type == "ipv6" else f"{address}:{port}"


def _duration(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms * 1e3:.0f} us"


def _record_context(record: SlowRecord) -> Context | None:
    """A context whose span context is the record's ID: the log record's trace_id/span_id,
    the same as its exemplar's, so a backend can go from a histogram bucket to the record."""
    if not record.record_id:
        return None
    span = SpanContext(record.trace_id or 0, record.span_id or 0, is_remote=False, trace_flags=TraceFlags(0))
    return set_span_in_context(NonRecordingSpan(span))


def slow_record_line(record: SlowRecord) -> str:
    """One line a person reads: ``slow packet: socket 431.2 ms udp 10.1.2.1:40000 -> ... cpu 1``."""
    src = _address(record.source_address, record.source_port, record.network_type)
    dst = _address(record.destination_address, record.destination_port, record.network_type)
    line = (
        f"slow packet: {record.stage} {_duration(record.latency_s)} {record.transport} "
        f"{src} -> {dst} cpu {record.cpu}"
    )
    pod = dict(record.pod)
    if "k8s.pod.name" in pod:
        line += f" pod {pod.get('k8s.namespace.name', '?')}/{pod['k8s.pod.name']}"
    return line


def log_attributes(record: SlowRecord) -> dict[str, str | int | float]:
    """The record's semantic-convention attributes plus its latency in seconds."""
    return {**record.attributes(), "netlat.latency_seconds": record.latency_s}


# ---- where the records go ---------------------------------------------------------------------


def logs_endpoint(config: OtlpConfig, environ: Mapping[str, str] = os.environ) -> str | None:
    """The logs URL beside the metrics one; ``None``: the SDK exporter reads the env itself.

    ``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` wins when set. Otherwise the metrics URL, as
    resolved, is reused with ``/v1/metrics`` turned into ``/v1/logs`` (OTLP/HTTP) — unless the
    command gave none and ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set: the SDK completes that base
    URL for logs itself.
    """
    if environ.get(OTEL_EXPORTER_OTLP_LOGS_ENDPOINT):
        return None
    metrics_url = config.endpoint
    if metrics_url is None:  # the metrics URL comes from the env
        if environ.get(OTEL_EXPORTER_OTLP_ENDPOINT):
            return None  # the base URL of every signal
        metrics_url = environ.get(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "")
    if config.protocol == "grpc":
        return metrics_url  # gRPC has no per-signal path
    parts = urlsplit(metrics_url)
    if not parts.path.endswith("/v1/metrics"):
        raise TelemetryError(
            f"cannot tell where OTLP logs go from the metrics URL {metrics_url!r} (its path is not "
            f".../v1/metrics): set {OTEL_EXPORTER_OTLP_LOGS_ENDPOINT}"
        )
    return urlunsplit(parts._replace(path=parts.path.removesuffix("metrics") + "logs"))


def build_log_exporter(config: OtlpConfig, environ: Mapping[str, str] = os.environ) -> LogRecordExporter:
    """The SDK's OTLP log exporter for the metrics' protocol; it reads headers, TLS... from the env."""
    endpoint = logs_endpoint(config, environ)
    try:
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as Grpc

            return Grpc(endpoint=endpoint)
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as Http

        return Http(endpoint=endpoint)
    except Exception as e:  # bad compression, headers, timeout, certificate paths...
        raise TelemetryError(f"cannot set up the OTLP log exporter: {e}") from e


class _LogsCapture(_SdkLogCapture):
    """The log exporters' per-attempt warnings, kept out of the log like the metric ones.

    The gRPC exporters of every signal share one logger: only records about ``logs`` are
    taken, the others pass on (to the metric exporter's capture, installed there too).
    """

    SHARED = "opentelemetry.exporter.otlp.proto.grpc.exporter"
    LOGGERS = (SHARED, "opentelemetry.exporter.otlp.proto.http._log_exporter")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == self.SHARED and "logs" not in (record.args or ()):
            return True
        return super().filter(record)

    def install(self) -> None:
        # First on each logger: a capture installed earlier must not take our records.
        for name in self.LOGGERS:
            logging.getLogger(name).filters.insert(0, self)


class _CountingExporter(LogRecordExporter):
    """Wraps the SDK log exporter: counts outcomes, logs failures once a minute, never raises
    (the guard is the metric exporter's)."""

    def __init__(self, inner: LogRecordExporter, config: OtlpConfig, tally: _Tally) -> None:
        self.inner = inner
        self._tally = tally
        self._guard = ExportGuard(
            inner,
            f"OTLP slow-packet log export ({config.protocol}) to {config.shown_endpoint}",
            _LogsCapture(),
        )
        self._guard.capture.install()

    @property
    def failing(self) -> bool:
        return self._guard.failing

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        n = len(batch)
        self._tally.handed(n)
        if self._guard.aborted.is_set():
            self._tally.lost("shutdown", n)
            return LogRecordExportResult.FAILURE
        with self._guard.attempt():
            try:
                result, reason = self.inner.export(batch), None
            except Exception as e:  # the batch processor would log a traceback
                result, reason = LogRecordExportResult.FAILURE, f"{type(e).__name__}: {e}"
        if result is LogRecordExportResult.SUCCESS:
            self._tally.exported(n)
            self._guard.succeeded()
        elif self._guard.aborted.is_set():
            self._tally.lost("shutdown", n)  # cut off by shutdown: not a Collector failure
        else:
            self._tally.lost("export_failed", n)
            self._guard.failed(reason)
        return result

    @property
    def troubled(self) -> bool:
        """The last export failed, or the current one is retrying: the Collector is not there."""
        return self._guard.troubled

    def abort(self) -> None:
        """Stop exporting now, cutting off retries and in-flight calls."""
        self._guard.abort()

    def force_flush(self, timeout_millis: int = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abort()
        self._guard.capture.uninstall()


class SlowLogExporter:
    """Sends slow-packet records as OTLP log records (event ``netlat.slow_packet``).

    :meth:`emit` only queues (never blocks); a worker thread exports batches every
    ``schedule_delay_ms`` or as soon as ``MAX_BATCH`` wait. :meth:`counts` feeds self-metrics.
    """

    def __init__(
        self,
        config: OtlpConfig,
        resource: Resource | None = None,
        *,
        max_queue: int = MAX_QUEUE,
        schedule_delay_ms: float = SCHEDULE_DELAY_MS,
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        self._tally = _Tally()
        self._max_queue = max_queue
        self._exporter = _CountingExporter(build_log_exporter(config, environ), config, self._tally)
        processor = BatchLogRecordProcessor(
            self._exporter,
            schedule_delay_millis=schedule_delay_ms,
            max_export_batch_size=min(MAX_BATCH, max_queue),
            max_queue_size=max_queue,
        )
        self._provider = LoggerProvider(resource=resource or build_resource(), shutdown_on_exit=False)
        self._provider.add_log_record_processor(processor)
        scope = instrumentation_scope()
        self._logger = self._provider.get_logger(scope.name, scope.version, scope.schema_url)
        self._closed = False

    def emit(self, records: Sequence[SlowRecord]) -> None:
        """Queue ``records`` for export; those that find the queue full are counted lost."""
        if self._closed:
            self._tally.lost("shutdown", len(records))
            return
        observed = time.time_ns()
        for record in records:
            if not self._tally.admit(self._max_queue):
                continue
            self._logger.emit(
                timestamp=record.time_unix_ns,
                context=_record_context(record),
                observed_timestamp=observed,
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                body=slow_record_line(record),
                attributes=log_attributes(record),
                event_name=EVENT_NAME,
            )

    def counts(self) -> SlowLogCounts:
        """Records emitted, exported and lost so far (thread-safe)."""
        return self._tally.counts()

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Export what is queued and stop, within ``timeout_s`` whatever the Collector does.

        A Collector already failing gets no final attempt; an export still running
        ``ABORT_MARGIN_S`` before the deadline is cut off; a worker stuck past the deadline
        (a black-holed endpoint) is left to its daemon thread.
        """
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        if self._exporter.troubled:
            self._exporter.abort()
        worker = threading.Thread(target=self._shutdown_provider, daemon=True, name="netlat-slow-logs-stop")
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic() - ABORT_MARGIN_S))
        if worker.is_alive():
            self._exporter.abort()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.warning("slow-packet log shutdown did not finish within %.1fs; not waiting longer", timeout_s)

    def _shutdown_provider(self) -> None:
        try:
            self._provider.shutdown()
        except Exception:
            log.warning("slow-packet log shutdown failed", exc_info=True)


def build_slow_log_exporter(
    settings: ExportSettings, resource: Resource | None = None, environ: Mapping[str, str] = os.environ
) -> SlowLogExporter | None:
    """The exporter for these settings; ``None`` when OTLP is off or OTEL_SDK_DISABLED is true."""
    if environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true":
        return None
    config = resolve_otlp(settings, environ)
    return None if config is None else SlowLogExporter(config, resource, environ=environ)
