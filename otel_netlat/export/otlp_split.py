"""OTLP export requests bounded in bytes, not in points.

The exporters' ``max_export_batch_size`` counts points, so long attribute values could push
a request past the Collector's 4 MiB gRPC receive limit; here each request's encoded size
is estimated from above and kept under a budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    Metric,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)

#: Estimated bytes per OTLP request; half the Collector's default 4 MiB gRPC receive limit.
OTLP_REQUEST_BUDGET = 2 * 1024 * 1024


def _str_size(s: str) -> int:
    """UTF-8 length, without encoding the (nearly always ASCII) string."""
    return len(s) if s.isascii() else len(s.encode("utf-8"))


def _attrs_size(attributes: Mapping[str, Any] | None) -> int:
    # KeyValue{key, AnyValue{...}}: tags and lengths take < 12 bytes per pair.
    if not attributes:
        return 0
    return sum(
        _str_size(k) + (_str_size(v) if isinstance(v, str) else 24 * (1 + len(str(v)))) + 12
        for k, v in attributes.items()
    )


def estimate_point_size(point: Any) -> int:
    """An upper bound on a data point's encoded OTLP size in bytes."""
    size = 64 + _attrs_size(point.attributes)  # times, count, sum, min, max, framing
    if isinstance(point, HistogramDataPoint):
        size += 9 * (len(point.bucket_counts) + len(point.explicit_bounds)) + 16
    for exemplar in getattr(point, "exemplars", None) or ():
        size += 96 + _attrs_size(getattr(exemplar, "filtered_attributes", None))
    return size


def split_metrics_data(metrics_data: MetricsData, budget: int = OTLP_REQUEST_BUDGET) -> list[MetricsData]:
    """Split ``metrics_data`` into requests whose estimated encoded size stays under ``budget``."""
    chunks: list[MetricsData] = []
    current: list[ResourceMetrics] = []
    used = 0
    for rm in metrics_data.resource_metrics:
        rm_size = 64 + _attrs_size(rm.resource.attributes)
        for sm in rm.scope_metrics:
            sm_size = 64 + _attrs_size(sm.scope.attributes) + len(sm.scope.name) + len(sm.scope.version or "")
            for metric in sm.metrics:
                # Counted once per metric and chunk: generous when one chunk holds several.
                header = rm_size + sm_size + 64 + len(metric.name) + len(metric.description or "")
                taken: list[Any] = []
                for point in metric.data.data_points:
                    size = estimate_point_size(point)
                    need = size if taken else size + header
                    if used and used + need > budget:
                        if taken:
                            _append(current, rm, sm, metric, taken)
                            taken = []
                        chunks.append(MetricsData(resource_metrics=current))
                        current, used, need = [], 0, size + header
                    taken.append(point)
                    used += need
                if taken:
                    _append(current, rm, sm, metric, taken)
    if current:
        chunks.append(MetricsData(resource_metrics=current))
    return chunks


def _append(
    current: list[ResourceMetrics], rm: ResourceMetrics, sm: ScopeMetrics, metric: Metric, points: list[Any]
) -> None:
    """Add ``points`` of ``metric`` to the chunk being built, under its resource and scope."""
    part = replace(metric, data=replace(metric.data, data_points=points))
    if current and current[-1].resource is rm.resource:
        last_rm = current[-1]
        scopes = last_rm.scope_metrics
        if scopes and scopes[-1].scope is sm.scope:
            scopes[-1].metrics.append(part)  # type: ignore[attr-defined]
            return
        scopes.append(replace(sm, metrics=[part]))  # type: ignore[attr-defined]
        return
    current.append(replace(rm, scope_metrics=[replace(sm, metrics=[part])]))
