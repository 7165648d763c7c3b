"""A real OpenTelemetry Collector (our ``otelcol-netlat`` build) run as a subprocess by tests.

The agent's OTLP push is only proven by a real Collector receiving it, so tests start the
distribution that ``collector/build.sh`` builds, with ``collector/config.yaml`` itself or a
variant that also writes what it receives to JSON-lines files (``file`` exporters: metrics in
one, log records in another), on free loopback ports moved through the config's
``${env:NETLAT_COLLECTOR_*}`` variables.

Fixtures: ``collector_binary`` (session; builds if needed, fails loudly if it cannot),
``collector_factory`` (makes ``CollectorProcess`` objects, stops them all at teardown) and
``collector`` (the file variant, started and healthy).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import LOOPBACK, LoggedProcess
from tests.support.wait import poll_until

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "collector" / "build.sh"
CONFIG = REPO / "collector" / "config.yaml"
BINARY = REPO / "build" / "otelcol-netlat" / "otelcol-netlat"
BUILD_TIMEOUT = 1800  # a cold build (empty Go module cache) takes ~4-5 min on 2 cores

_POINT_KINDS = ("sum", "gauge", "histogram", "exponentialHistogram", "summary")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (all held open while choosing, so they differ)."""
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]


@dataclass(frozen=True)
class CollectorPorts:
    """Loopback ports of one Collector: OTLP in, Prometheus out, health, own telemetry."""

    grpc: int
    http: int
    prometheus: int
    health: int
    telemetry: int

    @classmethod
    def pick(cls) -> CollectorPorts:
        return cls(*free_ports(5))

    def env(self) -> dict[str, str]:
        """The variables collector/config.yaml reads for its listen addresses."""
        return {
            "NETLAT_COLLECTOR_OTLP_GRPC": f"127.0.0.1:{self.grpc}",
            "NETLAT_COLLECTOR_OTLP_HTTP": f"127.0.0.1:{self.http}",
            "NETLAT_COLLECTOR_PROMETHEUS": f"127.0.0.1:{self.prometheus}",
            "NETLAT_COLLECTOR_HEALTH": f"127.0.0.1:{self.health}",
            "NETLAT_COLLECTOR_TELEMETRY_HOST": "127.0.0.1",
            "NETLAT_COLLECTOR_TELEMETRY_PORT": str(self.telemetry),
        }


def has_logs_pipeline(source: Path = CONFIG) -> bool:
    """Whether ``source`` has a ``logs`` pipeline (collector/config.yaml has one)."""
    return "logs" in yaml.safe_load(source.read_text())["service"]["pipelines"]


def write_file_variant(
    dest_dir: Path,
    output: Path,
    flush_interval: str = "100ms",
    source: Path = CONFIG,
    logs_output: Path | None = None,
) -> Path:
    """Copy of ``source`` whose metrics pipeline also feeds a ``file`` exporter (OTLP JSON lines).

    With ``logs_output``, its logs pipeline also feeds a second one, ``file/logs``, writing
    there: one file per signal, so metric readers never meet log records.
    Derived from the real config (not a hand-written twin) so tests exercise what users deploy.
    """
    cfg = yaml.safe_load(source.read_text())
    cfg["exporters"]["file"] = {"path": str(output), "format": "json", "flush_interval": flush_interval}
    cfg["service"]["pipelines"]["metrics"]["exporters"].append("file")
    if logs_output is not None:
        file_logs = {"path": str(logs_output), "format": "json", "flush_interval": flush_interval}
        cfg["exporters"]["file/logs"] = file_logs
        cfg["service"]["pipelines"]["logs"]["exporters"].append("file/logs")
    path = dest_dir / "config-file-export.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def any_value(v: Mapping[str, Any]) -> Any:
    """OTLP-JSON ``AnyValue`` → Python value (int64 arrives as a string in protojson)."""
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        return [any_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return attrs(v["kvlistValue"].get("values", []))
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def attrs(kvs: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    """OTLP-JSON attribute list → plain dict."""
    return {kv["key"]: any_value(kv.get("value", {})) for kv in kvs or []}


@dataclass
class MetricPoint:
    """One data point from the file exporter, with the context needed to match it."""

    name: str
    kind: str  # sum | gauge | histogram | exponentialHistogram | summary
    resource: dict[str, Any]
    scope: str
    attributes: dict[str, Any]
    time_unix_nano: int
    raw: dict[str, Any]  # the OTLP-JSON data point as written (counts and times are strings)

    @property
    def value(self) -> float | int:
        """Number value of a sum/gauge point; the count of a histogram or summary point."""
        if "asInt" in self.raw:
            return int(self.raw["asInt"])
        if "asDouble" in self.raw:
            return float(self.raw["asDouble"])
        return int(self.raw.get("count", 0))


def parse_file_export(path: Path) -> list[dict[str, Any]]:
    """The file exporter's output: one ``Export{Metrics,Logs}ServiceRequest`` dict per line.

    A last line still being written is skipped, not an error.
    """
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def iter_points(requests: list[dict[str, Any]]) -> Iterator[MetricPoint]:
    for req in requests:
        for rm in req.get("resourceMetrics", []):
            resource = attrs(rm.get("resource", {}).get("attributes"))
            for sm in rm.get("scopeMetrics", []):
                scope = sm.get("scope", {}).get("name", "")
                for m in sm.get("metrics", []):
                    for kind in _POINT_KINDS:
                        for dp in m.get(kind, {}).get("dataPoints", []):
                            yield MetricPoint(
                                m["name"],
                                kind,
                                resource,
                                scope,
                                attrs(dp.get("attributes")),
                                int(dp.get("timeUnixNano", 0)),
                                dp,
                            )


@dataclass
class LogRecordOut:
    """One log record from the ``file/logs`` exporter, with its resource and scope."""

    resource: dict[str, Any]
    scope: str
    body: Any
    attributes: dict[str, Any]
    time_unix_nano: int
    observed_time_unix_nano: int
    severity_number: int
    severity_text: str
    event_name: str
    raw: dict[str, Any]  # the OTLP-JSON log record as written


def iter_log_records(requests: list[dict[str, Any]]) -> Iterator[LogRecordOut]:
    """Every log record of ``ExportLogsServiceRequest`` dicts, in the order written."""
    for req in requests:
        for rl in req.get("resourceLogs", []):
            resource = attrs(rl.get("resource", {}).get("attributes"))
            for sl in rl.get("scopeLogs", []):
                scope = sl.get("scope", {}).get("name", "")
                for lr in sl.get("logRecords", []):
                    yield LogRecordOut(
                        resource,
                        scope,
                        any_value(lr.get("body", {})),
                        attrs(lr.get("attributes")),
                        int(lr.get("timeUnixNano", 0)),
                        int(lr.get("observedTimeUnixNano", 0)),
                        int(lr.get("severityNumber", 0)),
                        lr.get("severityText", ""),
                        lr.get("eventName", ""),
                        lr,
                    )


def latest_point(
    requests: list[dict[str, Any]],
    name: str,
    attributes: Mapping[str, Any] | None = None,
    resource: Mapping[str, Any] | None = None,
) -> MetricPoint | None:
    """The newest point of metric ``name`` whose attributes (and resource) include the given ones."""
    best = None
    for p in iter_points(requests):
        if p.name != name:
            continue
        if attributes and any(p.attributes.get(k) != v for k, v in attributes.items()):
            continue
        if resource and any(p.resource.get(k) != v for k, v in resource.items()):
            continue
        if best is None or p.time_unix_nano >= best.time_unix_nano:
            best = p
    return best


def prometheus_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text → [(sample name, labels, value)]."""
    return [
        (s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples
    ]


class CollectorProcess:
    """One ``otelcol-netlat`` subprocess on loopback ports, stoppable and restartable.

    ``file_output`` (metrics) and ``logs_output`` (log records, when the config has a logs
    pipeline) are set when it runs the file-exporter variant; ``log_path`` gets its
    stdout+stderr (the debug exporter logs there too).
    """

    def __init__(
        self,
        binary: Path,
        workdir: Path,
        *,
        config: Path = CONFIG,
        file_export: bool = False,
        ports: CollectorPorts | None = None,
        env: Mapping[str, str] | None = None,
        flush_interval: str = "100ms",
    ) -> None:
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.file_output: Path | None = None
        self.logs_output: Path | None = None
        if file_export:
            self.file_output = workdir / "metrics.jsonl"
            if has_logs_pipeline(config):
                self.logs_output = workdir / "logs.jsonl"
            config = write_file_variant(
                workdir, self.file_output, flush_interval, source=config, logs_output=self.logs_output
            )
        self.config = config
        self.ports = ports or CollectorPorts.pick()
        self._auto_ports = ports is None
        self.extra_env = dict(env or {})
        self.log_path = workdir / "collector.log"
        self.process: LoggedProcess | None = None

    # --- addresses -------------------------------------------------------------------------
    @property
    def grpc_endpoint(self) -> str:
        """For the gRPC OTLP exporter (``endpoint=``, with ``insecure=True``)."""
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_endpoint(self) -> str:
        """Base URL of OTLP/HTTP (the metrics path is ``/v1/metrics``)."""
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def http_metrics_url(self) -> str:
        return f"{self.http_endpoint}/v1/metrics"

    @property
    def http_logs_url(self) -> str:
        return f"{self.http_endpoint}/v1/logs"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.prometheus}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.health}/"

    # --- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> CollectorProcess:
        """Start and wait until health_check answers 200; raises with the log tail otherwise.

        Ports picked here can be taken by someone else before the Collector binds them: on
        the first start, "address already in use" makes it pick new ones (twice at most).
        """
        for attempt in range(3):
            try:
                return self._start(timeout)
            except AssertionError:
                if not (self._auto_ports and attempt < 2 and "address already in use" in self.log_tail()):
                    raise
                self.ports = CollectorPorts.pick()
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> CollectorProcess:
        if self.running:
            return self
        with open(self.log_path, "a") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ports={self.ports}\n")
        self.process = LoggedProcess(
            [self.binary, "--config", self.config],
            self.log_path,
            env={**os.environ, **self.ports.env(), **self.extra_env},
            append=True,
            name="collector",
        )
        try:
            self.wait_healthy(timeout)
        except Exception:
            self.stop()
            raise
        self._auto_ports = False  # restarts keep the ports the agent was given
        return self

    def wait_healthy(self, timeout: float = 30.0) -> dict[str, Any]:
        """Until the health_check extension answers 200; returns its JSON body."""
        if self.process is None:
            raise AssertionError("the collector was never started")
        return json.loads(self.process.wait_for_http(self.health_url, timeout) or b"{}")

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process.proc if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code (None: never started)."""
        if self.process is None:
            return None
        rc, _ = self.process.stop(timeout)
        return rc

    def restart(self, timeout: float = 30.0) -> CollectorProcess:
        """Stop and start again on the same ports (what an agent sees as a Collector outage)."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> CollectorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    # --- reading back ----------------------------------------------------------------------
    def exported(self) -> list[dict[str, Any]]:
        """Every OTLP request the file exporter wrote so far, as dicts."""
        if self.file_output is None:
            raise AssertionError("this collector runs without the file exporter (file_export=False)")
        return parse_file_export(self.file_output)

    def latest_point(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        resource: Mapping[str, Any] | None = None,
    ) -> MetricPoint | None:
        return latest_point(self.exported(), name, attributes, resource)

    def wait_for_point(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        resource: Mapping[str, Any] | None = None,
        timeout: float = 15.0,
        predicate: Callable[[MetricPoint], bool] | None = None,
    ) -> MetricPoint:
        """Poll the file output until a matching point (satisfying ``predicate``) appears."""

        def found() -> MetricPoint | None:
            p = self.latest_point(name, attributes, resource)
            return p if p is not None and (predicate is None or predicate(p)) else None

        def seen() -> str:
            names = sorted({q.name for q in iter_points(self.exported())})
            return f"metrics seen: {names}\n{self.log_tail()}"

        what = f"point {name} {attributes or {}} (resource {resource or {}})"
        return poll_until(found, timeout, what, detail=seen)

    def exported_logs(self) -> list[dict[str, Any]]:
        """Every OTLP logs request the ``file/logs`` exporter wrote so far, as dicts."""
        if self.logs_output is None:
            raise AssertionError("this collector writes no log records (no file_export, or no logs pipeline)")
        return parse_file_export(self.logs_output)

    def log_records(self) -> list[LogRecordOut]:
        """Every log record received so far, in the order written."""
        return list(iter_log_records(self.exported_logs()))

    def wait_for_log_records(
        self, count: int, timeout: float = 15.0, predicate: Callable[[LogRecordOut], bool] | None = None
    ) -> list[LogRecordOut]:
        """Poll the logs file until at least ``count`` records (satisfying ``predicate``) are in it."""

        def found() -> list[LogRecordOut] | None:
            records = [r for r in self.log_records() if predicate is None or predicate(r)]
            return records if len(records) >= count else None

        def seen() -> str:
            return f"log records seen: {len(self.log_records())}\n{self.log_tail()}"

        return poll_until(found, timeout, f"{count} log record(s)", detail=seen)

    def scrape(self) -> str:
        """The Collector's Prometheus exporter page (the :8889 endpoint of config.yaml)."""
        with LOOPBACK.open(self.prometheus_url, timeout=10) as r:
            return r.read().decode()

    def prometheus_value(self, name: str, **labels: str) -> float | None:
        """Value of the sample ``name`` whose labels include ``labels`` (None if absent)."""
        for n, ls, v in prometheus_samples(self.scrape()):
            if n == name and all(ls.get(k) == val for k, val in labels.items()):
                return v
        return None

    def wait_for_prometheus(self, name: str, timeout: float = 15.0, **labels: str) -> float:
        """The value of ``name{labels}`` once the Collector's Prometheus page shows it."""
        (value,) = poll_until(
            lambda: None if (v := self.prometheus_value(name, **labels)) is None else (v,),
            timeout,
            f"{name}{labels} on {self.prometheus_url}",
            every=0.2,
            detail=lambda: self.scrape()[:3000],
        )
        return value


def build_collector() -> Path:
    """Run collector/build.sh (a no-op when the cached binary is current); fail loudly."""
    try:
        r = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"collector/build.sh timed out after {BUILD_TIMEOUT}s: {e.stdout!r}", pytrace=False)
    if r.returncode != 0 or not BINARY.is_file():
        tail = "\n".join((r.stdout + r.stderr).splitlines()[-40:])
        pytest.fail(
            f"cannot build the Collector (collector/build.sh exit {r.returncode}):\n{tail}", pytrace=False
        )
    return BINARY


@pytest.fixture(scope="session")
def collector_binary() -> Path:
    """Path to the built ``otelcol-netlat``; builds it if missing or stale. Never skips."""
    return build_collector()


@pytest.fixture
def collector_factory(collector_binary: Path, tmp_path: Path) -> Iterator[Callable[..., CollectorProcess]]:
    """``factory(file_export=False, config=CONFIG, ports=None, env=None, start=True)`` →
    ``CollectorProcess``; every one made is stopped at teardown."""
    made: list[CollectorProcess] = []

    def factory(
        *,
        file_export: bool = False,
        config: Path = CONFIG,
        ports: CollectorPorts | None = None,
        env: Mapping[str, str] | None = None,
        start: bool = True,
        flush_interval: str = "100ms",
    ) -> CollectorProcess:
        c = CollectorProcess(
            collector_binary,
            tmp_path / f"collector{len(made)}",
            config=config,
            file_export=file_export,
            ports=ports,
            env=env,
            flush_interval=flush_interval,
        )
        made.append(c)
        return c.start() if start else c

    yield factory
    for c in made:
        c.stop()


@pytest.fixture
def collector(collector_factory: Callable[..., CollectorProcess]) -> CollectorProcess:
    """A started, healthy Collector running config.yaml plus the file exporter."""
    return collector_factory(file_export=True)
