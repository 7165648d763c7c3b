"""Collected ``MetricsData`` → OpenMetrics 1.0.0 text, with exemplars on histogram buckets.

/metrics answers in OpenMetrics when the scraper asks for it (Prometheus does first), since
only OpenMetrics carries exemplars: each latency bucket shows the most recent slow packet
that fell in it. The sample lines are the text format's (:mod:`.prometheus_text`, whose walk
and per-series cache this renderer shares); what differs is the family headers (a counter's
family is named without ``_total``, ``# UNIT``, ``"`` escaped in HELP), the ``# EOF`` line
and the exemplars. ``target_info`` stays the gauge the text format writes, so Prometheus
stores the same series whichever format it scraped.

An exemplar's labels are compact — ``src``/``dst`` as ``address:port`` and ``transport`` —
because OpenMetrics caps its label names and values at 128 characters together; the full
attributes travel in OTLP.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import Exemplar
from opentelemetry.sdk.metrics.export import HistogramDataPoint, MetricsData
from prometheus_client.openmetrics.exposition import escape_metric_name
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from otel_netlat.export.prometheus_text import PrometheusText, _escape_value, stock_registry

#: OpenMetrics: "The combined length of the label names and values of an Exemplar's
#: LabelSet MUST NOT exceed 128 UTF-8 characters."
EXEMPLAR_LABELS_MAX = 128

#: The exemplar label sets tried in turn until one fits: (with ports, with transport).
_COMPACTIONS = ((True, True), (True, False), (False, False))


def render_stock_openmetrics(metrics_data: MetricsData, *, scope_info_enabled: bool) -> bytes:
    """What prometheus_client's OpenMetrics writer makes of the stock exporter's families.

    Only for data the fast renderer does not model: no exemplars, ``target_info`` as an info.
    """
    return generate_openmetrics(stock_registry(metrics_data, scope_info_enabled=scope_info_enabled))


class OpenMetricsText(PrometheusText):
    """Renders collected ``MetricsData`` as OpenMetrics 1.0.0, histogram exemplars included."""

    @classmethod
    def beside(cls, plain: PrometheusText) -> OpenMetricsText:
        """A renderer sharing ``plain``'s series cache (one page, two formats, one set of strings)."""
        renderer = cls(scope_info_enabled=plain.scope_info_enabled)
        renderer.share_cache(plain)
        return renderer

    def chunks(self, metrics_data: MetricsData) -> Iterator[str]:
        yield from super().chunks(metrics_data)
        yield "# EOF\n"

    def _stock(self, metrics_data: MetricsData) -> bytes:
        return render_stock_openmetrics(metrics_data, scope_info_enabled=self.scope_info_enabled)

    def _header(self, name: str, sample: str, kind: str, description: str, unit: str) -> str:
        # As prometheus_client's OpenMetrics writer: the family name, then HELP, TYPE, UNIT.
        family = escape_metric_name(name)
        help_text = description.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
        head = f"# HELP {family} {help_text}\n# TYPE {family} {kind}\n"
        return f"{head}# UNIT {family} {unit}\n" if unit else head  # name ends with "_" + unit

    def _histogram(
        self,
        points: Sequence[HistogramDataPoint],
        name: str,
        scope_items: tuple[tuple[str, str], ...],
        label_keys: tuple[str, ...],
        cache: dict[Any, Any],
        fresh: dict[Any, Any],
    ) -> Iterator[str]:
        # The text format's lines (a chunk a point); only points with exemplars are touched.
        lines = super()._histogram(points, name, scope_items, label_keys, cache, fresh)
        for point, text in zip(points, lines, strict=True):
            yield with_exemplars(text, point) if point.exemplars else text


def with_exemplars(text: str, point: HistogramDataPoint) -> str:
    """``text`` (``point``'s lines) with the newest exemplar of each bucket on its ``_bucket`` line.

    Buckets are upper-inclusive, ``(bounds[i-1], bounds[i]]``, as the kernel slots samples.
    """
    bounds = point.explicit_bounds
    newest: dict[int, Exemplar] = {}
    for exemplar in point.exemplars:
        if math.isnan(exemplar.value):
            continue
        i = bisect_left(bounds, exemplar.value)
        held = newest.get(i)
        if held is None or exemplar.time_unix_nano >= held.time_unix_nano:
            newest[i] = exemplar
    lines = text.split("\n")
    n_buckets = min(len(point.bucket_counts), len(bounds) + 1)  # the renderer zips them
    for i, exemplar in newest.items():
        if i < n_buckets:
            lines[i] += exemplar_suffix(exemplar, point.attributes)
    return "\n".join(lines)


def exemplar_suffix(exemplar: Exemplar, point_attributes: Mapping[str, Any] | None = None) -> str:
    """`` # {labels} value timestamp`` (seconds, to the millisecond) for a sample line.

    The measurement's attributes are the point's and the exemplar's ``filtered_attributes``
    (those not on the point, as OpenTelemetry defines them): e.g. ``network.transport`` is on
    the point, the 5-tuple's addresses in the exemplar.
    """
    labels = exemplar_labels({**(point_attributes or {}), **(exemplar.filtered_attributes or {})})
    text = ",".join(f'{k}="{_escape_value(v)}"' for k, v in labels)
    suffix = f" # {{{text}}} {floatToGoString(exemplar.value)}"
    if not exemplar.time_unix_nano:
        return suffix
    ms = exemplar.time_unix_nano // 1_000_000
    return f"{suffix} {ms // 1000}.{ms % 1000:03d}"


def exemplar_labels(attributes: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``src``, ``dst`` and ``transport`` from a slow record's attributes, within 128 characters.

    Over the cap (never with numeric addresses), ``transport`` goes first, then the ports.
    """
    for with_ports, with_transport in _COMPACTIONS:
        pairs = [
            ("src", _endpoint(attributes, "source", with_ports)),
            ("dst", _endpoint(attributes, "destination", with_ports)),
            ("transport", str(attributes.get("network.transport", "")) if with_transport else ""),
        ]
        pairs = [(k, v) for k, v in pairs if v]
        if sum(len(k) + len(v) for k, v in pairs) <= EXEMPLAR_LABELS_MAX:
            return pairs
    return []


def _endpoint(attributes: Mapping[str, Any], side: str, with_port: bool) -> str:
    """``address:port`` (``[address]:port`` for IPv6), or the address alone without a port."""
    address = attributes.get(f"{side}.address")
    if address is None:
        return ""
    address = str(address)
    port = attributes.get(f"{side}.port") if with_port else None
    if port is None:
        return address
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
