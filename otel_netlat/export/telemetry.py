"""Serve the latest snapshot through OpenTelemetry: Prometheus on /metrics, OTLP push.

One MeterProvider carries the agent's resource, the observable counters (callbacks read the
snapshot pinned for the collection) and two readers from :mod:`otel_netlat.export.bridge`,
which add the kernel histograms: a Prometheus reader served by our own HTTP server, whose
text is rendered once per new snapshot and cached, and a periodic OTLP reader when an
endpoint is configured. Nothing here touches SDK internals.
"""

from __future__ import annotations

import errno
import gzip
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any
from urllib.parse import urlsplit

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_OTLP_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE,
    OTEL_METRIC_EXPORT_INTERVAL,
    OTEL_SDK_DISABLED,
)
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from otel_netlat.collect.snapshot import Snapshot
from otel_netlat.export.bridge import (
    SERIES_LIMIT,
    BridgedPeriodicReader,
    BridgedPrometheusReader,
    HistogramSpec,
    KernelHistogram,
    KernelInjection,
    PrometheusText,
    SeriesCap,
    SnapshotSource,
    split_metrics_data,
)

log = logging.getLogger(__name__)

SERVICE_NAME = "otel-netlat"
DEFAULT_EXPORT_INTERVAL_S = 15.0
#: otel_scope_name/version/schema_url labels on every series: off. The agent has one scope,
#: so they carry nothing a query could use, yet they add ~40% to each sample line.
SCOPE_LABELS = False
#: How long before the shutdown deadline an in-flight OTLP export is cut off.
ABORT_MARGIN_S = 1.0
FAILURE_LOG_INTERVAL_S = 60.0
#: Env var for the protocol: the SDK does not read it (the app picks the exporter class).
OTEL_EXPORTER_OTLP_PROTOCOL = "OTEL_EXPORTER_OTLP_PROTOCOL"
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL = "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL"
PROTOCOLS = ("grpc", "http/protobuf")

LATENCY = HistogramSpec(
    name="netlat.packet.latency",
    description="Time a packet spent inside the kernel between the start and end hooks of a stage",
    unit="s",
)
#: Observable counters: (name, Snapshot field, unit, description).
COUNTERS = (
    ("netlat.packets", "packets", "{packet}", "Packets that entered a measured stage"),
    ("netlat.packet.drops", "drops", "{packet}", "Packets the kernel dropped, by drop reason"),
    (
        "netlat.agent.ends.unmatched",
        "unmatched",
        "{event}",
        "End events whose object was not a recorded start (e.g. a socket queue tail already drained)",
    ),
    ("netlat.agent.skipped", "skipped", "{packet}", "Packets a hook did not measure, by reason"),
    (
        "netlat.agent.hook.missed",
        "missed",
        "{event}",
        "Hook runs the kernel skipped because a BPF program was already running on that CPU "
        "(events that hook never saw)",
    ),
    (
        "netlat.agent.series.folded",
        "folded",
        "{packet}",
        "Packets folded into the otel.metric.overflow series because the series limit was reached",
    ),
)
COLLECTION_BOUNDS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

INDEX_TEXT = b"otel-netlat: Prometheus metrics at /metrics, health at /healthz\n"


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


# ---- configuration -------------------------------------------------------------------------


def build_resource() -> Resource:
    """The agent's resource: our defaults, overridden by OTEL_RESOURCE_ATTRIBUTES/OTEL_SERVICE_NAME.

    ``Resource.create(attrs)`` lets ``attrs`` win over the env, so the env attributes are
    merged over the defaults first; the SDK's ``telemetry.sdk.*`` attributes come with it.
    """
    host = socket.gethostname()
    node = os.environ.get("NODE_NAME") or None
    defaults: dict[str, str] = {
        "service.name": SERVICE_NAME,
        "host.name": host,
        "service.instance.id": node or host,
    }
    if node:
        defaults["k8s.node.name"] = node
    return Resource.create({**defaults, **OTELResourceDetector().detect().attributes})


def _scope() -> InstrumentationScope:
    try:
        version = metadata.version("otel-netlat")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return InstrumentationScope("otel_netlat", version)


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
        return "otlp_grpc" if self.protocol == "grpc" else "otlp_http"


def resolve_otlp(settings: ExportSettings, environ: Mapping[str, str] = os.environ) -> OtlpConfig | None:
    """OTLP settings from ``settings`` then the env; ``None`` when no endpoint is given."""
    env_endpoint = environ.get(OTEL_EXPORTER_OTLP_METRICS_ENDPOINT) or environ.get(
        OTEL_EXPORTER_OTLP_ENDPOINT
    )
    if not settings.otlp_endpoint and not env_endpoint:
        return None
    protocol = (
        settings.otlp_protocol
        or environ.get(OTEL_EXPORTER_OTLP_METRICS_PROTOCOL)
        or environ.get(OTEL_EXPORTER_OTLP_PROTOCOL)
        or "grpc"
    ).strip()
    if protocol not in PROTOCOLS:
        raise TelemetryError(f"OTLP protocol {protocol!r} is not supported: use grpc or http/protobuf")
    endpoint = _endpoint(settings.otlp_endpoint, protocol) if settings.otlp_endpoint else None
    preference = (
        settings.temporality or environ.get(OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE) or "cumulative"
    )
    temporality = TEMPORALITIES.get(preference.strip().lower())
    if temporality is None:
        raise TelemetryError(
            f"OTLP temporality {preference!r} is not supported: use cumulative, delta or lowmemory"
        )
    return OtlpConfig(
        protocol=protocol,
        endpoint=endpoint,
        shown_endpoint=endpoint or env_endpoint or "",
        interval_ms=_interval_ms(settings, environ),
        temporality=dict(temporality),
    )


def _endpoint(endpoint: str, protocol: str) -> str:
    """A bare ``host:port`` means plaintext; HTTP gets the ``/v1/metrics`` path if it has none."""
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    if protocol == "http/protobuf" and urlsplit(url).path in ("", "/"):
        url = url.rstrip("/") + "/v1/metrics"
    return url


def _interval_ms(settings: ExportSettings, environ: Mapping[str, str]) -> float:
    if settings.export_interval_s is not None:
        if settings.export_interval_s <= 0:
            raise TelemetryError(f"export interval must be positive, not {settings.export_interval_s}")
        return settings.export_interval_s * 1000
    raw = environ.get(OTEL_METRIC_EXPORT_INTERVAL)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if value > 0:
            return value
        log.warning("ignoring %s=%r: not a positive number of milliseconds", OTEL_METRIC_EXPORT_INTERVAL, raw)
    return DEFAULT_EXPORT_INTERVAL_S * 1000


def _build_exporter(config: OtlpConfig) -> MetricExporter:
    """The SDK's OTLP exporter; it reads headers, timeout, compression and TLS from the env."""
    try:
        if config.protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

            return Grpc(endpoint=config.endpoint, preferred_temporality=config.temporality)
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        return Http(endpoint=config.endpoint, preferred_temporality=config.temporality)
    except Exception as e:  # bad compression, headers, certificate paths...
        raise TelemetryError(f"cannot set up the OTLP exporter: {e}") from e


# ---- OTLP export ---------------------------------------------------------------------------


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
        self.failing = False
        self.failures = 0
        self._exporting = False
        self._on_failure = on_failure
        self._aborted = threading.Event()
        self._capture = _SdkLogCapture()
        self._log = _FailureLog(f"OTLP export ({config.protocol}) to {config.shown_endpoint}")

    def start(self) -> None:
        self._capture.install()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if self._aborted.is_set():
            return MetricExportResult.FAILURE  # shutting down: not sent, not a failure
        self._capture.take()
        self._exporting = True
        try:
            return self._export(metrics_data, timeout_millis)
        finally:
            self._exporting = False

    def _export(self, metrics_data: MetricsData, timeout_millis: float) -> MetricExportResult:
        for chunk in split_metrics_data(metrics_data):
            try:
                result = self.inner.export(chunk, timeout_millis=timeout_millis)
                reason = None
            except Exception as e:  # the reader would log a traceback per cycle
                result, reason = MetricExportResult.FAILURE, f"{type(e).__name__}: {e}"
            if result is not MetricExportResult.SUCCESS:
                if self._aborted.is_set():
                    return result  # cut off by shutdown: not a Collector failure
                self.failing = True
                self.failures += 1
                self._on_failure()
                self._log.failure(reason or self._capture.take() or "no reason given")
                return MetricExportResult.FAILURE
        self.failing = False
        self._log.success()
        return MetricExportResult.SUCCESS

    @property
    def troubled(self) -> bool:
        """The last export failed, or the current one is retrying: the Collector is not there."""
        return self.failing or (self._exporting and self._capture.first is not None)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def abort(self) -> None:
        """Stop exporting now, cutting off retries and in-flight calls."""
        if self._aborted.is_set():
            return
        self._aborted.set()
        try:
            self.inner.shutdown()
        except Exception:
            log.debug("OTLP exporter shutdown failed", exc_info=True)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.abort()
        self._capture.uninstall()


# ---- HTTP server ---------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        encoding = None
        if path == "/metrics":
            try:
                body, encoding = self.server.scrape(_accepts_gzip(self.headers.get("Accept-Encoding", "")))
                status, ctype = 200, CONTENT_TYPE_PLAIN_0_0_4
            except Exception:
                log.exception("rendering /metrics failed")
                status, ctype, body = 500, "text/plain; charset=utf-8", b"rendering metrics failed\n"
        elif path == "/healthz":
            status, ctype, body = 200, "text/plain; charset=utf-8", b"ok\n"
        elif path == "/":
            status, ctype, body = 200, "text/plain; charset=utf-8", INDEX_TEXT
        else:
            status, ctype, body = 404, "text/plain; charset=utf-8", b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape is noise


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0")
    return False


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, scrape: Callable[[bool], tuple[bytes, str | None]]) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.scrape = scrape
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # [::] serves IPv4 too, whatever bindv6only says
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_error(host: str, port: int, e: OSError) -> TelemetryError:
    where = _where(host, port)
    if e.errno == errno.EADDRINUSE:
        return TelemetryError(
            f"cannot listen on {where}: address already in use (is another otel-netlat running? set --listen)"
        )
    reason = (e.strerror or str(e)).lower()
    return TelemetryError(f"cannot listen on {where}: {reason}")


# ---- the whole thing -----------------------------------------------------------------------


class Telemetry:
    """The agent's OpenTelemetry side: give it the latest snapshot, it serves and exports it.

    Every collection (a scrape, an OTLP cycle) pins one snapshot: the observable counters
    and the injected histograms of that collection all read it. /metrics is rendered on
    the first scrape after :meth:`snapshot_updated` (or a new collection duration, or an
    export failure) and the same bytes are served until the next change.
    """

    def __init__(self, settings: ExportSettings, latest: Callable[[], Snapshot]) -> None:
        self.settings = settings
        self._otlp = resolve_otlp(settings)  # raises TelemetryError early on bad settings
        # The SDK would drop our instruments but not the injected histograms: drop everything.
        self._disabled = os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"
        self._source = SnapshotSource(latest)
        self._resource = build_resource()
        self._scope = _scope()
        self._start_ns = time.time_ns()
        self._cap = SeriesCap(SERIES_LIMIT)
        self._text = PrometheusText(scope_info_enabled=SCOPE_LABELS)
        self._render_lock = threading.Lock()
        self._dirty = True
        self._body: bytes | None = None
        self._gzipped: bytes | None = None
        self._rendered_from: MetricsData | None = None
        self._server: _MetricsServer | None = None
        self._provider: MeterProvider | None = None
        self._prometheus: BridgedPrometheusReader | None = None
        self._exporter: GuardedExporter | None = None
        self._collection: Any = None
        self._state = "new"

    @property
    def bound_port(self) -> int:
        """The port /metrics is served on (the ephemeral one when ``listen_port`` is 0)."""
        return self._server.server_address[1] if self._server else self.settings.listen_port

    def start(self) -> None:
        """Bind the HTTP server (raises :class:`TelemetryError`), then start the readers."""
        if self._state != "new":
            raise TelemetryError("telemetry was already started")
        if self._disabled:
            log.warning("%s is true: /metrics stays empty and nothing is pushed", OTEL_SDK_DISABLED)
        exporter = _build_exporter(self._otlp) if self._otlp and not self._disabled else None
        host, port = self.settings.listen_host, self.settings.listen_port
        try:
            server = _MetricsServer(host, port, self._scrape)
        except OSError as e:
            if exporter:
                exporter.shutdown()
            raise _listen_error(host, port, e) from None
        try:
            self._provider = None if self._disabled else self._build_provider(exporter)
        except Exception:
            server.server_close()
            if exporter:
                exporter.shutdown()
            raise
        self._server = server
        self._state = "started"
        threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="otel-netlat-http", daemon=True
        ).start()
        log.info("serving Prometheus metrics on http://%s/metrics", _where(host, self.bound_port))

    def _injection(self, temporality: AggregationTemporality) -> KernelInjection:
        histogram = KernelHistogram(LATENCY, temporality, self._start_ns, self._cap)
        return KernelInjection(self._source, self._resource, self._scope, histogram, time.time_ns)

    def _build_provider(self, inner: MetricExporter | None) -> MeterProvider:
        limits = {ObservableCounter: SERIES_LIMIT, ObservableGauge: SERIES_LIMIT}
        self._prometheus = BridgedPrometheusReader(
            self._injection(AggregationTemporality.CUMULATIVE),
            scope_info_enabled=SCOPE_LABELS,
            cardinality_limits=limits,
        )
        readers: list[MetricReader] = [self._prometheus]
        failures: list[Any] = []  # the counter, once the meter exists
        if inner is not None and self._otlp is not None:
            attrs = {"exporter": self._otlp.exporter_name}

            def on_failure() -> None:
                if failures:
                    failures[0].add(1, attrs)
                self._dirty = True

            self._exporter = GuardedExporter(inner, self._otlp, on_failure)
            self._exporter.start()
            injection = self._injection(self._otlp.temporality[Histogram])
            readers.append(
                BridgedPeriodicReader(
                    injection,
                    self._exporter,
                    export_interval_millis=self._otlp.interval_ms,
                    cardinality_limits=limits,
                )
            )
        provider = MeterProvider(metric_readers=readers, resource=self._resource, shutdown_on_exit=False)
        meter = provider.get_meter(self._scope.name, self._scope.version, self._scope.schema_url)
        for name, field, unit, description in COUNTERS:
            meter.create_observable_counter(name, [self._observe(field)], unit=unit, description=description)
        # Not a counter: "pending" goes down as entries end. Per stage, the outcomes add up to
        # netlat.packets (the accounting identity), so they share one up-down counter.
        meter.create_observable_up_down_counter(
            "netlat.agent.entries",
            [self._observe("entries")],
            unit="{entry}",
            description="Start entries of a stage by outcome: sample, dropped, no_socket, overwritten, "
            "evicted, coalesced, pending; per stage they add up to netlat.packets",
        )
        meter.create_observable_gauge(
            "netlat.agent.probes",
            [self._observe("probes")],
            unit="{probe}",
            description="Attached hooks: 1 each (0 for a stage this kernel cannot attach)",
        )
        self._collection = meter.create_histogram(
            "netlat.agent.collection.duration",
            unit="s",
            description="Time to read the kernel maps into one snapshot",
            explicit_bucket_boundaries_advisory=list(COLLECTION_BOUNDS_S),
        )
        if self._otlp is not None:
            counter = meter.create_counter(
                "netlat.agent.export.failures", unit="{export}", description="OTLP exports that failed"
            )
            counter.add(0, {"exporter": self._otlp.exporter_name})  # visible before the first failure
            failures.append(counter)
        return provider

    def _observe(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(p.value, dict(p.attributes)) for p in getattr(self._source.current(), field)]

        return callback

    def record_collection(self, seconds: float) -> None:
        """Record how long one read of the kernel maps took."""
        if self._collection is not None:
            self._collection.record(seconds)
            self._dirty = True

    def snapshot_updated(self) -> None:
        """A new snapshot is available: the next scrape renders it."""
        self._dirty = True

    def _scrape(self, gzip_ok: bool) -> tuple[bytes, str | None]:
        """The /metrics body: rendered once per change, then served from the cache."""
        if self._prometheus is None:  # OTEL_SDK_DISABLED
            return b"", None
        with self._render_lock:
            if self._dirty or self._body is None:
                self._dirty = False  # a snapshot arriving during the render marks it dirty again
                metrics_data = self._prometheus.collect_metrics_data()
                self._body = self._text.render(metrics_data)
                self._gzipped = None
                self._rendered_from = metrics_data
            if not gzip_ok:
                return self._body, None
            if self._gzipped is None:
                # Level 1: ~15x smaller already, for a fraction of the default level's time.
                self._gzipped = gzip.compress(self._body, compresslevel=1)
            return self._gzipped, "gzip"

    def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop serving and exporting within ``timeout_s``, whatever the Collector does.

        The final OTLP export is attempted only if the last one worked, and is cut off
        ``ABORT_MARGIN_S`` before the deadline; a provider shutdown still stuck then (a
        black-holed HTTP endpoint) is left to its daemon thread.
        """
        if self._state != "started":
            self._state = "stopped"
            return
        self._state = "stopped"
        deadline = time.monotonic() + timeout_s
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        exporter = self._exporter
        if exporter is not None and exporter.troubled:
            exporter.abort()  # the Collector is down: a final export would only wait out retries
        provider = self._provider
        if provider is None:
            return
        worker = threading.Thread(target=self._shutdown_provider, args=(provider, timeout_s), daemon=True)
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic() - ABORT_MARGIN_S))
        if worker.is_alive() and exporter is not None:
            exporter.abort()
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.warning("telemetry shutdown did not finish within %.1fs; not waiting longer", timeout_s)

    @staticmethod
    def _shutdown_provider(provider: MeterProvider, timeout_s: float) -> None:
        try:
            provider.shutdown(timeout_millis=timeout_s * 1000)
        except Exception:
            log.warning("telemetry shutdown failed", exc_info=True)
