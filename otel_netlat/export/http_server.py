"""The agent's HTTP endpoint: /metrics for Prometheus, /healthz for probes, / for people.

``http.server`` rather than ``prometheus_client``'s server: the body comes from our cache
(rendered once per snapshot, gzipped once), and /healthz must tell a starting agent from a
ready one. /metrics is OpenMetrics 1.0.0 (with exemplars) for a scraper that asks for it in
``Accept``, as ``prometheus_client`` decides, else the text format 0.0.4.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as CONTENT_TYPE_OPENMETRICS

from otel_netlat.export.settings import TelemetryError

log = logging.getLogger(__name__)

INDEX_TEXT = b"otel-netlat: Prometheus metrics at /metrics, health at /healthz\n"
TEXT = "text/plain; charset=utf-8"

#: A scrape: gzip accepted? → (body, Content-Encoding or None).
Scrape = Callable[[bool], tuple[bytes, str | None]]

OPENMETRICS = "application/openmetrics-text"


class Health:
    """What /healthz answers: 503 ``starting`` until :meth:`mark_ready`, then 200 ``ok``.

    The server binds before BCC compiles and attaches, so a probe reaching it early must not
    route traffic to (or stop restarting) an agent that measures nothing yet.
    """

    def __init__(self) -> None:
        self._ready = threading.Event()  # set once, read from every handler thread

    def mark_ready(self) -> None:
        """The agent's programs are attached: report healthy from now on."""
        self._ready.set()

    def answer(self) -> tuple[int, bytes]:
        """(status, body) of /healthz now."""
        return (200, b"ok\n") if self._ready.is_set() else (503, b"starting\n")


class _Handler(BaseHTTPRequestHandler):
    server: MetricsServer
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _respond(self, send_body: bool) -> None:
        path = urlsplit(self.path).path
        encoding = None
        ctype = TEXT
        if path == "/metrics":
            status, ctype, body, encoding = self._metrics()
        elif path == "/healthz":
            status, body = self.server.health.answer()
        elif path == "/":
            status, body = 200, INDEX_TEXT
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def _metrics(self) -> tuple[int, str, bytes, str | None]:
        """(status, Content-Type, body, Content-Encoding) of /metrics."""
        scrape, ctype = self.server.scrape, CONTENT_TYPE_PLAIN_0_0_4
        if self.server.scrape_openmetrics is not None and wants_openmetrics(self.headers.get("Accept", "")):
            scrape, ctype = self.server.scrape_openmetrics, CONTENT_TYPE_OPENMETRICS
        try:
            body, encoding = scrape(_accepts_gzip(self.headers.get("Accept-Encoding", "")))
        except Exception:
            log.exception("rendering /metrics failed")
            return 500, TEXT, b"rendering metrics failed\n", None
        return 200, ctype, body, encoding

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape is noise


def wants_openmetrics(accept: str) -> bool:
    """Whether ``Accept`` asks for OpenMetrics 1.x, decided as ``prometheus_client`` does.

    Media ranges are read in order (Prometheus lists them by preference) and q-values are
    not compared: the first ``application/openmetrics-text`` without a version or with one
    from 1.0.0 on wins; a ``text/plain`` of version 1.0.0 or later before it, or none at
    all, means text. A range with ``q=0`` is skipped (not acceptable).
    """
    for media_range in accept.split(","):
        media, *params = (token.strip() for token in media_range.split(";"))
        media = media.lower()
        if media not in (OPENMETRICS, "text/plain"):
            continue
        values = {k.strip().lower(): v.strip() for k, _, v in (p.partition("=") for p in params)}
        if _number(values.get("q", "1"), 1.0) <= 0:
            continue  # not acceptable
        version = values.get("version")
        if media == OPENMETRICS and not version:
            return True
        if version and _version(version) >= (1, 0, 0):
            return media == OPENMETRICS
    return False


def _version(text: str) -> tuple[int, ...]:
    """``1.0.0`` → (1, 0, 0); what does not parse sorts first."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return ()


def _number(text: str, default: float) -> float:
    try:
        return float(text)
    except ValueError:
        return default


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0")
    return False


class MetricsServer(ThreadingHTTPServer):
    """Serves ``scrape`` on /metrics and ``health`` on /healthz, on IPv4 or IPv6.

    ``scrape_openmetrics`` answers scrapes that ask for OpenMetrics; without it every scrape
    gets the text format.
    """

    daemon_threads = True

    def __init__(
        self, host: str, port: int, scrape: Scrape, health: Health, scrape_openmetrics: Scrape | None = None
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.scrape = scrape
        self.scrape_openmetrics = scrape_openmetrics
        self.health = health
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # [::] serves IPv4 too, whatever bindv6only says
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def bind(
    host: str, port: int, scrape: Scrape, health: Health, scrape_openmetrics: Scrape | None = None
) -> MetricsServer:
    """A bound (not yet serving) server; a bind failure is one clear :class:`TelemetryError`."""
    try:
        return MetricsServer(host, port, scrape, health, scrape_openmetrics)
    except OSError as e:
        raise _listen_error(host, port, e) from None


def serve(server: MetricsServer) -> None:
    """Serve on a daemon thread until ``server.shutdown()``."""
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="otel-netlat-http", daemon=True
    ).start()


def where(host: str, port: int) -> str:
    """``host:port`` as a URL writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _listen_error(host: str, port: int, e: OSError) -> TelemetryError:
    at = where(host, port)
    if e.errno == errno.EADDRINUSE:
        return TelemetryError(
            f"cannot listen on {at}: address already in use (is another otel-netlat running? set --listen)"
        )
    reason = (e.strerror or str(e)).lower()
    return TelemetryError(f"cannot listen on {at}: {reason}")
