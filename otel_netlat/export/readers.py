"""The only module that touches OpenTelemetry SDK internals: readers that inject points.

``MetricReader.collect`` is marked ``@final`` and ``_receive_metrics`` is private, but they
are the only hooks that run before the observable callbacks (where the snapshot must be
pinned) and where a collection's ``MetricsData`` passes by. Pinned: opentelemetry-sdk
1.45.2 and opentelemetry-exporter-prometheus 0.66b2 (see pyproject.toml).
"""

from __future__ import annotations

import threading
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics.export import MetricsData, PeriodicExportingMetricReader
from prometheus_client import CollectorRegistry

from otel_netlat.export.points import KernelInjection


class _InjectingReader:
    """Mixin for MetricReader subclasses: pin one snapshot, inject the kernel histogram.

    ``MetricReader.collect`` is marked ``@final`` in the SDK; overriding it is the only hook
    that runs before the observable callbacks, which is where the snapshot must be pinned.
    The SDK returns ``None`` (and skips ``_receive_metrics``) when its own instruments have
    nothing; the kernel histogram is delivered anyway.
    """

    _injection: KernelInjection
    _collect: Any

    def collect(self, timeout_millis: float = 10_000) -> None:
        """Collect with one snapshot pinned; deliver the kernel histogram even if the SDK did not."""
        if self._collect is None:  # not registered on a MeterProvider yet: the SDK warns
            super().collect(timeout_millis=timeout_millis)  # type: ignore[misc]
            return
        with self._injection.source.pinned() as pin:
            super().collect(timeout_millis=timeout_millis)  # type: ignore[misc]
            if not pin.delivered:
                self._receive_metrics(None, timeout_millis=timeout_millis)

    def _receive_metrics(
        self, metrics_data: MetricsData | None, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        pin = self._injection.source.current_pin()
        pin.delivered = True
        merged = self._injection.merge(metrics_data, pin.snapshot)
        if merged is not None:
            self._deliver(merged, timeout_millis)

    def _deliver(self, metrics_data: MetricsData, timeout_millis: float) -> None:
        """Hand the merged collection on: what the reader would have done with the SDK's."""
        raise NotImplementedError


class BridgedPrometheusReader(_InjectingReader, PrometheusMetricReader):
    """A PrometheusMetricReader whose collections include the kernel histogram.

    It keeps the last merged ``MetricsData`` instead of queueing it on the exporter's
    collector (whose queue only drains through ``prometheus_client``'s registry); the
    caller renders it (:mod:`otel_netlat.export.prometheus_text`). Its temporality
    (cumulative) and component type are the stock reader's.
    """

    def __init__(self, injection: KernelInjection, *, scope_info_enabled: bool, **kwargs: Any) -> None:
        # A private registry: the global one would collect us again and leak between instances.
        super().__init__(
            scope_info_enabled=scope_info_enabled, registry=CollectorRegistry(auto_describe=False), **kwargs
        )
        self._injection = injection
        self.scope_info_enabled = scope_info_enabled
        self._latest: MetricsData | None = None
        self._latest_lock = threading.Lock()

    def _deliver(self, metrics_data: MetricsData, timeout_millis: float) -> None:
        with self._latest_lock:
            self._latest = metrics_data

    def collect_metrics_data(self, timeout_millis: float = 10_000) -> MetricsData:
        """Collect now and return what was collected (empty if nothing)."""
        with self._latest_lock:
            self._latest = None
        self.collect(timeout_millis=timeout_millis)
        with self._latest_lock:
            return self._latest if self._latest is not None else MetricsData(resource_metrics=[])


class BridgedPeriodicReader(_InjectingReader, PeriodicExportingMetricReader):
    """A PeriodicExportingMetricReader whose exports include the kernel histogram."""

    def __init__(self, injection: KernelInjection, exporter: Any, **kwargs: Any) -> None:
        self._injection = injection  # set before super(): its thread may collect at once
        super().__init__(exporter, **kwargs)

    def _deliver(self, metrics_data: MetricsData, timeout_millis: float) -> None:
        PeriodicExportingMetricReader._receive_metrics(self, metrics_data, timeout_millis=timeout_millis)
