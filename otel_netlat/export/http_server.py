"""The agent's HTTP endpoint: /metrics for Prometheus, /healthz for probes, / for people.

``http.server`` rather than ``prometheus_client``'s server: the body comes from our cache
(rendered once per snapshot, gzipped once), and /healthz must tell a starting agent from a
ready one.
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

from otel_netlat.export.settings import TelemetryError

log = logging.getLogger(__name__)

INDEX_TEXT = b"otel-netlat: Prometheus metrics at /metrics, health at /healthz\n"
TEXT = "text/plain; charset=utf-8"

#: A scrape: gzip accepted? → (body, Content-Encoding or None).
Scrape = Callable[[bool], tuple[bytes, str | None]]


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
        try:
            body, encoding = self.server.scrape(_accepts_gzip(self.headers.get("Accept-Encoding", "")))
        except Exception:
            log.exception("rendering /metrics failed")
            return 500, TEXT, b"rendering metrics failed\n", None
        return 200, CONTENT_TYPE_PLAIN_0_0_4, body, encoding

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a line per scrape is noise


def _accepts_gzip(header: str) -> bool:
    for part in header.split(","):
        name, _, params = part.strip().partition(";")
        if name.strip().lower() == "gzip":
            return params.replace(" ", "") not in ("q=0", "q=0.0")
    return False


class MetricsServer(ThreadingHTTPServer):
    """Serves ``scrape`` on /metrics and ``health`` on /healthz, on IPv4 or IPv6."""

    daemon_threads = True

    def __init__(self, host: str, port: int, scrape: Scrape, health: Health) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.scrape = scrape
        self.health = health
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:  # [::] serves IPv4 too, whatever bindv6only says
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def bind(host: str, port: int, scrape: Scrape, health: Health) -> MetricsServer:
    """A bound (not yet serving) server; a bind failure is one clear :class:`TelemetryError`."""
    try:
        return MetricsServer(host, port, scrape, health)
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
