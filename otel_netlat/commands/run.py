"""The agent's run loop: load, read the maps once per interval, hand the snapshot on.

Python's work here is per interval, never per packet: one read of the maps into one
snapshot that every exporter serves until the next.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import replace

from otel_netlat.collect.filters import FilterWatcher, filter_watcher
from otel_netlat.collect.reader import SnapshotReader
from otel_netlat.collect.slow import SlowReader, slow_reader
from otel_netlat.collect.snapshot import CounterPoint, SlowRecord, Snapshot, attrs, empty_snapshot
from otel_netlat.config import Config
from otel_netlat.export import ExportSettings, Telemetry
from otel_netlat.export.expiry import SeriesBook
from otel_netlat.export.provider import build_resource
from otel_netlat.export.slow_logs import SlowLogExporter, build_slow_log_exporter
from otel_netlat.program.build import LoadedProgram, load_program
from otel_netlat.program.memory import release_compiler_memory
from otel_netlat.program.plan import Plan

log = logging.getLogger("otel_netlat")
SLOW_LOG_BACKLOG = 10_000


def export_settings(config: Config) -> ExportSettings:
    return ExportSettings(
        listen_host=config.listen.host,
        listen_port=config.listen.port,
        otlp_endpoint=config.otlp_endpoint,
        otlp_protocol=config.otlp_protocol,
        export_interval_s=config.otlp_interval,
        temporality=config.otlp_temporality,
    )


class Agent:
    """Owns the loaded program, the snapshot reader and the telemetry, for one ``run``."""

    def __init__(self, config: Config, plan: Plan) -> None:
        self.config = config
        self.plan = plan
        self._latest: Snapshot = empty_snapshot(tuple(b / 1e9 for b in plan.spec.bounds_ns))
        self._stop = threading.Event()
        self.program: LoadedProgram | None = None
        self.reader: SnapshotReader | None = None
        self.telemetry: Telemetry | None = None
        #: otel_netlat.k8s.pods.PodIndex when pod attribution is on (set before start(), e.g. by
        #: a test, and that index is used instead of the cluster's).
        self.pods = None
        self._attributor = None  # otel_netlat.k8s.attribution.Attributor of self.pods
        self.filters: FilterWatcher | None = None
        self.slow: SlowReader | None = None
        #: Slow records not yet sent as OTLP log records (bounded: older ones are dropped and
        #: counted, as log_queue_full, should the loop ever stall).
        self._slow_new: deque[SlowRecord] = deque(maxlen=SLOW_LOG_BACKLOG)
        self._slow_seen = 0
        self.slow_logs: SlowLogExporter | None = None
        #: Address series expire (--series-ttl): the exporters' side of it.
        self.book = SeriesBook(config.series_ttl) if plan.spec.addr_labels else None

    def latest(self) -> Snapshot:
        return self._latest

    def stop(self, *_: object) -> None:
        self._stop.set()

    def start(self) -> None:
        """Bind the HTTP port first (a busy port fails fast), then load, attach, and say so.

        /healthz answers 503 until the programs are attached and the first snapshot is taken:
        readiness probes and tests wait for that, not for a guessed delay.
        """
        t0 = time.monotonic()
        self.telemetry = Telemetry(export_settings(self.config), self.latest)
        self.telemetry.start()
        self.program = load_program(self.plan.spec, self.plan.info)
        release_compiler_memory()  # the one compile is done: ≈90 MB of LLVM pages need not stay resident
        ttl = self.config.series_ttl if self.book is not None else None
        self.reader = SnapshotReader(self.program, self.plan.unavailable, series_ttl_s=ttl)
        self.filters = filter_watcher(self.config, self.program)
        self.slow = slow_reader(self.program)
        if self.slow is not None:
            self.slow.listen(self._slow_new.append)  # a bounded deque: appends are thread-safe
            self.slow_logs = build_slow_log_exporter(export_settings(self.config), build_resource())
        if self.plan.pod_attribution and self.pods is None:
            self._start_pod_index()
        for name, reason in self.plan.unavailable.items():
            log.warning("stage %s unavailable: %s", name, reason)
        if self.plan.hooks_summary:
            log.info("%s", self.plan.hooks_summary)
        self.collect()
        self._announce_attached(time.monotonic() - t0)
        self.telemetry.mark_ready()

    def _announce_attached(self, seconds: float) -> None:
        """The one INFO line that says the agent measures: stages, hooks, where it serves."""
        assert self.program is not None and self.telemetry is not None
        spec = self.plan.spec
        stages = [s.name for s in spec.stages] + (["drops"] if spec.drops else [])
        log.info(
            "attached: %d stages (%s) with %d hooks (%s) in %.2fs; serving http://%s:%d/metrics",
            len(stages),
            ", ".join(stages),
            len(self.program.attached),
            ", ".join(str(h) for h in self.program.attached),
            seconds,
            self.config.listen.host,
            self.telemetry.bound_port,
        )

    def _start_pod_index(self) -> None:
        from otel_netlat.k8s.pods import PodIndex, PodIndexError  # noqa: PLC0415 — only in a cluster

        try:
            self.pods = PodIndex.from_cluster(os.environ["NODE_NAME"]).start()
            log.info("pod attribution on: watching the pods of node %s", os.environ["NODE_NAME"])
        except PodIndexError as e:
            log.warning("pod attribution is off: %s", e)

    def collect(self) -> None:
        """One read of the kernel maps into the snapshot every exporter serves."""
        assert self.reader is not None and self.telemetry is not None
        t0 = time.perf_counter()
        if self.filters is not None:
            self.filters.refresh()
        try:
            snap = self.reader.read()
        except Exception as e:  # a failed read must not kill the agent: keep serving the last one
            log.warning("reading the kernel maps failed: %s", e)
            return
        if self.slow is not None:
            snap = replace(
                snap,
                slow=self.slow.retained(),
                slow_lost=self.slow.lost() + self._slow_log_losses(),
                slow_records=(CounterPoint((), self.slow.received),),
            )
        if self.pods is not None:
            if self._attributor is None:
                from otel_netlat.k8s.attribution import Attributor  # noqa: PLC0415

                self._attributor = Attributor(self.pods, keep_addresses=self.config.address_labels)
            snap = self._attributor(snap)
        self._send_slow_logs()
        if self.book is not None:
            snap = self.book.apply(snap)
        self._latest = snap
        self.telemetry.snapshot_updated()
        self.telemetry.record_collection(time.perf_counter() - t0)

    def _send_slow_logs(self) -> None:
        """The records drained since the last collection, as OTLP log records (with their pod)."""
        if self.slow is None:
            return
        new = [self._slow_new.popleft() for _ in range(len(self._slow_new))]
        self._slow_seen += len(new)
        if self.slow_logs is None or not new:
            return
        if self._attributor is not None:
            new = [self._attributor.record_pod(r) for r in new]
        self.slow_logs.emit(new)

    def _slow_log_losses(self) -> tuple[CounterPoint, ...]:
        """Slow records lost on the way to the Collector (none when OTLP is off)."""
        if self.slow is None or self.slow_logs is None:
            return ()
        counts = self.slow_logs.counts()
        # Records the deque dropped before the loop took them (a stalled loop).
        behind = max(0, self.slow.received - self._slow_seen - len(self._slow_new))
        lost = {"log_queue_full": counts.lost.get("queue_full", 0) + behind}
        lost["log_export_failed"] = counts.lost.get("export_failed", 0)
        return tuple(CounterPoint(attrs(netlat__slow__lost_reason=k), v) for k, v in lost.items())

    def run(self) -> int:
        """Start, collect every interval until SIGTERM/SIGINT, then detach and exit 0."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        try:
            self.start()
            while not self._stop.wait(self.config.interval):
                self.collect()
        finally:
            self.close()
        return 0

    def close(self) -> None:
        """Detach probes first (the kernel stops paying at once), then flush exporters."""
        if self.pods is not None:
            self.pods.stop()
        if self.slow is not None:
            self.slow.close()
        if self.slow_logs is not None:
            self.slow_logs.shutdown(timeout_s=2.0)
        if self.reader is not None:
            self.reader.close()
        if self.program is not None:
            self.program.detach()
        if self.telemetry is not None:
            self.telemetry.shutdown(timeout_s=4.0)
        log.info("stopped")
