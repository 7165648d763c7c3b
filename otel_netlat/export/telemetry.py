"""The agent's OpenTelemetry side as one object: start it, feed it snapshots, stop it.

It ties the parts together in the order start-up needs — resolve the OTLP settings (bad
ones fail before anything binds), bind the HTTP port (a busy one fails fast), build the
provider, serve — and shuts them down within a deadline whatever the Collector does.
Nothing here touches SDK internals (that is :mod:`otel_netlat.export.readers`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

from opentelemetry.sdk.environment_variables import OTEL_SDK_DISABLED
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter

from otel_netlat.collect.snapshot import Snapshot
from otel_netlat.export.http_server import Health, MetricsServer, bind, serve, where
from otel_netlat.export.metrics_page import MetricsPage
from otel_netlat.export.otlp_env import resolve_otlp
from otel_netlat.export.otlp_exporter import build_exporter
from otel_netlat.export.pinning import SnapshotSource
from otel_netlat.export.prometheus_text import PrometheusText
from otel_netlat.export.provider import SCOPE_LABELS, Pipeline, build_pipeline
from otel_netlat.export.settings import ExportSettings, TelemetryError

log = logging.getLogger(__name__)

#: How long before the shutdown deadline an in-flight OTLP export is cut off.
ABORT_MARGIN_S = 1.0


class Telemetry:
    """The agent's OpenTelemetry side: give it the latest snapshot, it serves and exports it.

    Every collection (a scrape, an OTLP cycle) pins one snapshot: the observable counters
    and the injected histograms of that collection all read it. /metrics is rendered on
    the first scrape after :meth:`snapshot_updated` (or a new collection duration, or an
    export failure) and the same bytes are served until the next change. /healthz answers
    503 until :meth:`mark_ready`.
    """

    def __init__(self, settings: ExportSettings, latest: Callable[[], Snapshot]) -> None:
        self.settings = settings
        self._otlp = resolve_otlp(settings)  # raises TelemetryError early on bad settings
        # The SDK would drop our instruments but not the injected histograms: drop everything.
        self._disabled = os.environ.get(OTEL_SDK_DISABLED, "").strip().lower() == "true"
        self._source = SnapshotSource(latest)
        self._health = Health()
        self._server: MetricsServer | None = None
        self._pipeline: Pipeline | None = None
        self._page: MetricsPage | None = None
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
        exporter = build_exporter(self._otlp) if self._otlp and not self._disabled else None
        host, port = self.settings.listen_host, self.settings.listen_port
        try:
            server = bind(host, port, self._scrape, self._health, self._scrape_openmetrics)
            try:
                self._pipeline = None if self._disabled else self._build(exporter)
            except Exception:
                server.server_close()
                raise
        except Exception:
            if exporter:
                exporter.shutdown()
            raise
        self._server = server
        self._state = "started"
        serve(server)
        log.info("serving Prometheus metrics on http://%s/metrics", where(host, self.bound_port))

    def _build(self, exporter: MetricExporter | None) -> Pipeline:
        """The provider, and the /metrics page rendered from its Prometheus reader."""
        pipeline = build_pipeline(self._source, self._otlp, exporter, on_export_failure=self.snapshot_updated)
        text = PrometheusText(scope_info_enabled=SCOPE_LABELS)
        self._page = MetricsPage(pipeline.prometheus.collect_metrics_data, text)
        return pipeline

    def mark_ready(self) -> None:
        """The agent has attached its programs: /healthz answers 200 from now on (thread-safe)."""
        self._health.mark_ready()

    def record_collection(self, seconds: float) -> None:
        """Record how long one read of the kernel maps took."""
        if self._pipeline is not None:
            self._pipeline.collection.record(seconds)
            self.snapshot_updated()

    def snapshot_updated(self) -> None:
        """A new snapshot is available (or something else on /metrics changed): re-render it."""
        if self._page is not None:
            self._page.changed()

    def _scrape(self, gzip_ok: bool) -> tuple[bytes, str | None]:
        """The /metrics body; empty when OTEL_SDK_DISABLED."""
        page = self._page
        return page.body(gzip_ok) if page is not None else (b"", None)

    def _scrape_openmetrics(self, gzip_ok: bool) -> tuple[bytes, str | None]:
        """The /metrics body in OpenMetrics (with exemplars); ``# EOF`` alone when OTEL_SDK_DISABLED."""
        page = self._page
        return page.body(gzip_ok, openmetrics=True) if page is not None else (b"# EOF\n", None)

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
        if self._pipeline is None:
            return
        exporter = self._pipeline.exporter
        if exporter is not None and exporter.troubled:
            exporter.abort()  # the Collector is down: a final export would only wait out retries
        worker = threading.Thread(
            target=self._shutdown_provider, args=(self._pipeline.provider, timeout_s), daemon=True
        )
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
