"""The /metrics body, rendered once per change and served from a cache in between.

Prometheus may scrape more often than the agent reads the maps, and a render of thousands of
series is the agent's most expensive step: the same bytes (and their gzip) are served until
a new snapshot, a new collection duration or an export failure changes what there is to say.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable

from opentelemetry.sdk.metrics.export import MetricsData

from otel_netlat.export.prometheus_text import PrometheusText


class MetricsPage:
    """Collects and renders on the first scrape after :meth:`changed`; caches until the next."""

    def __init__(self, collect: Callable[[], MetricsData], text: PrometheusText) -> None:
        self._collect = collect
        self._text = text
        self._lock = threading.Lock()
        self._dirty = True
        self._body: bytes | None = None
        self._gzipped: bytes | None = None
        self.rendered_from: MetricsData | None = None  # what the cached body shows (for tests)

    def changed(self) -> None:
        """What the page shows has changed: the next scrape renders it again."""
        self._dirty = True

    def body(self, gzip_ok: bool) -> tuple[bytes, str | None]:
        """(body, Content-Encoding or ``None``) for a scrape that does or does not accept gzip."""
        with self._lock:
            if self._dirty or self._body is None:
                self._dirty = False  # a snapshot arriving during the render marks it dirty again
                metrics_data = self._collect()
                self._body = self._text.render(metrics_data)
                self._gzipped = None
                self.rendered_from = metrics_data
            if not gzip_ok:
                return self._body, None
            if self._gzipped is None:
                # Level 1: ~15x smaller already, for a fraction of the default level's time.
                self._gzipped = gzip.compress(self._body, compresslevel=1)
            return self._gzipped, "gzip"
