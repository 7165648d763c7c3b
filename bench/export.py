"""Export-side figures: /metrics serve time (agent path vs stock) and one OTLP export.

The series are synthetic but shaped like the agent's address-labelled histograms (stage,
network type, transport, direction, source and destination prefixes; 22 buckets). The
agent path is :class:`otel_netlat.export.telemetry.Telemetry` serving a hand-built snapshot; the
stock path is an SDK ``Histogram`` fed the very values the snapshot's buckets count,
collected by the stock ``PrometheusMetricReader`` and served by ``prometheus_client``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from bench.stats import summary
from otel_netlat.collect.snapshot import HistogramSeries, Snapshot, as_attributes
from otel_netlat.config import DEFAULT_BOUNDS_NS

REPO = Path(__file__).resolve().parent.parent
COLLECTOR = REPO / "build" / "otelcol-netlat" / "otelcol-netlat"
BOUNDS_S = tuple(b / 1e9 for b in DEFAULT_BOUNDS_NS)
STAGES = (("backlog", "receive"), ("stack", "receive"), ("socket", "receive"), ("qdisc", "transmit"))
CURL = shutil.which("curl")
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def synthetic(n: int) -> tuple[Snapshot, list[tuple[dict[str, str], list[float]]]]:
    """``n`` histogram series, and for each the raw values (seconds) its buckets count."""
    series, raw = [], []
    for i in range(n):
        stage, direction = STAGES[i % 4]
        attrs = {
            "netlat.stage": stage,
            "network.io.direction": direction,
            "network.type": "ipv4",
            "network.transport": ("udp", "tcp")[(i // 4) % 2],
            "source.address": f"10.{(i // 8) % 250}.{(i // 2000) % 250}.0/24",
            "destination.address": f"192.168.{i % 8}.0/24",
        }
        values = [BOUNDS_S[(i + k * 3) % len(BOUNDS_S)] * 0.75 for k in range(1 + i % 4)]
        counts = [0] * (len(BOUNDS_S) + 1)
        for v in values:
            counts[next(j for j, b in enumerate(BOUNDS_S) if v <= b)] += 1
        sum_ns = sum(round(v * 1e9) for v in values)
        series.append(HistogramSeries(as_attributes(attrs), tuple(counts), sum_ns, len(values)))
        raw.append((attrs, values))
    snap = Snapshot(taken_at_ns=time.time_ns(), bounds_s=BOUNDS_S, latency=tuple(series))
    return snap, raw


def _time_get(url: str, gzip_ok: bool = False) -> float:
    """ms of one GET, timed by a client in another process, as Prometheus is.

    A client inside this process would share the GIL with the server thread it times, so
    curl does it and throws the body away (gzip is asked for, not decoded: the server's
    cost is what is timed). Without curl, urllib in this process is the fallback.
    """
    if CURL:
        args = [CURL, "-sS", "--fail", "-o", "/dev/null", "-w", "%{time_total}", "--noproxy", "*", url]
        if gzip_ok:
            args[1:1] = ["-H", "Accept-Encoding: gzip"]
        return float(subprocess.run(args, capture_output=True, check=True, timeout=120).stdout) * 1e3
    req = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"} if gzip_ok else {})
    t0 = time.perf_counter()
    with _http.open(req, timeout=120) as r:
        r.read()
    return (time.perf_counter() - t0) * 1e3


def _timed(url: str, gzip_ok: bool = False) -> tuple[float, float]:
    """(wall ms, CPU ms of this process) of one GET: the server's own work, which other
    tenants of a shared machine can delay but not inflate."""
    c0 = time.process_time()
    ms = _time_get(url, gzip_ok)
    return ms, (time.process_time() - c0) * 1e3


def _body(url: str) -> bytes:
    with _http.open(url, timeout=120) as r:
        return r.read()


def _next(snap: Snapshot, k: int) -> Snapshot:
    """The same series with new counts: what the next collection interval hands over."""
    latency = tuple(
        replace(s, bucket_counts=(s.bucket_counts[0] + k, *s.bucket_counts[1:]), count=s.count + k)
        for s in snap.latency
    )
    return replace(snap, latency=latency, taken_at_ns=time.time_ns())


def _same_histograms(agent: bytes, stock: bytes) -> bool:
    """The latency lines of both texts agree: exactly, except ``_sum`` to 1e-12 (relative).

    The kernel keeps an exact integer sum of nanoseconds; the SDK adds floats one by one,
    so the last digit of a sum can differ while both are right.
    """

    def lines(text: bytes) -> dict[bytes, bytes]:
        return dict(
            line.rsplit(b" ", 1) for line in text.splitlines() if line.startswith(b"netlat_packet_latency")
        )

    a, b = lines(agent), lines(stock)
    if a.keys() != b.keys():
        return False
    for key, value in a.items():
        if value == b[key]:
            continue
        x, y = float(value), float(b[key])
        if b"_sum{" not in key or abs(x - y) > 1e-12 * abs(x):
            return False
    return True


def scrape(sizes: tuple[int, ...], stock_sizes: tuple[int, ...], rounds: int) -> dict:
    """/metrics serve time at each size: agent and stock, plain and gzip (as Prometheus asks)."""
    keys = (
        "scrape_ms",
        "scrape_cpu_ms",
        "scrape_ms_gzip",
        "scrape_ms_cached",
        "scrape_ms_stock",
        "scrape_cpu_ms_stock",
        "scrape_ms_stock_gzip",
        "scrape_bytes",
        "scrape_histogram_text_matches_stock",
    )
    out: dict = {k: {} for k in keys}
    out["scrape_client"] = "curl" if CURL else "urllib (curl not found)"
    for n in sizes:
        key = str(n)
        snap, raw = synthetic(n)
        fresh, fresh_cpu, fresh_gz, cached, body = _scrape_agent(snap, rounds)
        out["scrape_ms"][key] = summary(fresh, 1)
        out["scrape_cpu_ms"][key] = summary(fresh_cpu, 1)
        out["scrape_ms_gzip"][key] = summary(fresh_gz, 1)
        out["scrape_ms_cached"][key] = summary(cached, 2)
        out["scrape_bytes"][key] = {"agent": len(body)}
        if n not in stock_sizes:
            for k in ("scrape_ms_stock", "scrape_cpu_ms_stock", "scrape_ms_stock_gzip"):
                out[k][key] = None
            continue
        stock, stock_cpu, stock_gz, stock_body = _scrape_stock(raw, rounds, gzip_too=n <= 1000)
        out["scrape_ms_stock"][key] = summary(stock, 1)
        out["scrape_cpu_ms_stock"][key] = summary(stock_cpu, 1)
        out["scrape_ms_stock_gzip"][key] = summary(stock_gz, 1)
        out["scrape_bytes"][key]["stock"] = len(stock_body)
        out["scrape_histogram_text_matches_stock"][key] = _same_histograms(body, stock_body)
    return out


def _scrape_agent(
    snap: Snapshot, rounds: int
) -> tuple[list[float], list[float], list[float], list[float], bytes]:
    """(fresh ms, fresh CPU ms, fresh gzip ms, cached ms, body of ``snap``) of the agent's /metrics.

    Each round hands Telemetry a new snapshot (new counts, same series, as after a
    collection), then scrapes it fresh (rendered now) and again (served from the cache).
    The first round also pays for building the per-series label cache: it shows as the max.
    """
    from otel_netlat.export import ExportSettings, Telemetry  # noqa: PLC0415

    current = [snap]
    telemetry = Telemetry(ExportSettings(listen_host="127.0.0.1", listen_port=0), lambda c=current: c[0])
    telemetry.start()
    url = f"http://127.0.0.1:{telemetry.bound_port}/metrics"
    fresh, fresh_cpu, fresh_gz, cached = [], [], [], []
    try:
        for k in range(rounds):
            current[0] = _next(snap, 2 * k)
            telemetry.snapshot_updated()
            ms, cpu = _timed(url)
            fresh.append(ms)
            fresh_cpu.append(cpu)
            cached.append(_time_get(url))
            current[0] = _next(snap, 2 * k + 1)
            telemetry.snapshot_updated()
            fresh_gz.append(_time_get(url, gzip_ok=True))
        current[0] = snap
        telemetry.snapshot_updated()
        body = _body(url)  # the exact data the stock path gets, for the comparison
    finally:
        telemetry.shutdown(timeout_s=2.0)
    return fresh, fresh_cpu, fresh_gz, cached, body


def _scrape_stock(
    raw: list[tuple[dict[str, str], list[float]]], rounds: int, gzip_too: bool
) -> tuple[list[float], list[float], list[float], bytes]:
    """(ms, CPU ms, gzip ms, body) of the stock path: an SDK Histogram fed ``raw``, served by
    ``PrometheusMetricReader`` + ``prometheus_client``."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View  # noqa: PLC0415
    from prometheus_client import CollectorRegistry, start_http_server  # noqa: PLC0415

    from otel_netlat.export.provider import LATENCY, SCOPE_LABELS  # noqa: PLC0415

    registry = CollectorRegistry(auto_describe=False)
    reader = PrometheusMetricReader(scope_info_enabled=SCOPE_LABELS, registry=registry)
    view = View(
        instrument_name=LATENCY.name,
        aggregation=ExplicitBucketHistogramAggregation(BOUNDS_S),
        aggregation_cardinality_limit=len(raw) + 1,
    )
    provider = MeterProvider(metric_readers=[reader], views=[view], shutdown_on_exit=False)
    hist = provider.get_meter("otel_netlat").create_histogram(
        LATENCY.name, unit=LATENCY.unit, description=LATENCY.description
    )
    for attrs, values in raw:
        for v in values:
            hist.record(v, attrs)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    stock, stock_cpu, stock_gz = [], [], []
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        for _ in range(rounds):
            ms, cpu = _timed(url)
            stock.append(ms)
            stock_cpu.append(cpu)
            if gzip_too:  # ~4 s a scrape at 10,000: the plain one makes the point
                stock_gz.append(_time_get(url, gzip_ok=True))
        stock_body = _body(url)
    finally:
        server.shutdown()
        server.server_close()
        provider.shutdown()
    return stock, stock_cpu, stock_gz, stock_body


def otlp_export(sizes: tuple[int, ...], rounds: int, workdir: Path) -> dict:
    """One OTLP/gRPC export of each size to the built Collector through the agent's exporter.

    Times the agent's ``GuardedExporter.export`` (split into requests under the Collector's
    4 MiB limit, encode, send, wait for the answer) around a forced collection, reaching it
    through Telemetry's private attributes: the bench must time exactly what the agent runs.
    """
    if not COLLECTOR.is_file():
        reason = f"{COLLECTOR.relative_to(REPO)} not built (make collector)"
        return {"otlp_export_ms": None, "otlp_export_reason": reason}
    from otel_netlat.export import ExportSettings, Telemetry  # noqa: PLC0415
    from tests.support.collector import CollectorProcess  # noqa: PLC0415

    collector = CollectorProcess(COLLECTOR, workdir)
    try:
        collector.start()
    except AssertionError as e:
        return {"otlp_export_ms": None, "otlp_export_reason": f"the Collector did not start: {str(e)[:200]}"}
    out: dict = {"otlp_export_ms": {}, "otlp_collect_and_export_ms": {}, "otlp_export_ok": {}}
    try:
        for n in sizes:
            snap, _ = synthetic(n)
            settings = ExportSettings(
                listen_host="127.0.0.1",
                listen_port=0,
                otlp_endpoint=collector.grpc_endpoint,
                otlp_protocol="grpc",
                export_interval_s=3600,
            )
            telemetry = Telemetry(settings, lambda s=snap: s)
            telemetry.start()
            exporter = telemetry._pipeline.exporter
            timings: list[tuple[float, bool]] = []
            inner_export = exporter.export

            def timed_export(data, timeout_millis=10_000, _inner=inner_export, _t=timings, **kw):
                t0 = time.perf_counter()
                result = _inner(data, timeout_millis=timeout_millis, **kw)
                _t.append(((time.perf_counter() - t0) * 1e3, result.name == "SUCCESS"))
                return result

            exporter.export = timed_export
            total = []
            try:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    telemetry._pipeline.provider.force_flush()
                    total.append((time.perf_counter() - t0) * 1e3)
            finally:
                telemetry.shutdown(timeout_s=3.0)
            ok = [t for t, good in timings[:rounds] if good]
            out["otlp_export_ms"][str(n)] = summary(ok, 1)
            out["otlp_collect_and_export_ms"][str(n)] = summary(total, 1)
            out["otlp_export_ok"][str(n)] = f"{len(ok)}/{len(timings[:rounds])}"
    finally:
        collector.stop()
    return out
