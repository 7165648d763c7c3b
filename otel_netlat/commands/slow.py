"""``otel-netlat slow``: slow packets live, one line each (like BCC's tcpretrans), or JSON.

Loads the same program as ``run`` with slow records on (--slow-threshold, 10 ms when not
given: the threshold KubeSkoop hard-codes) and prints every record as the kernel writes
it. The kernel rate-limits the records (--slow-rate per CPU), so this prints at most that
many lines a second however many packets are slow; what it did not print is counted and
said on exit.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from dataclasses import replace
from typing import TextIO

from otel_netlat.collect.slow import SlowReader
from otel_netlat.collect.snapshot import SlowRecord
from otel_netlat.config import Config
from otel_netlat.program.build import load_program
from otel_netlat.program.memory import release_compiler_memory
from otel_netlat.program.plan import Plan

DEFAULT_THRESHOLD_S = 0.010
QUEUE_MAX = 10_000  # records waiting to be printed (a slow terminal): beyond, counted as lost
HEADER = f"{'TIME':<12} {'STAGE':<11} {'LATENCY':>10} {'PROTO':<9} {'SOURCE':<40} {'DESTINATION':<40} CPU"


def with_default_threshold(config: Config) -> Config:
    """``slow`` records something even when no threshold is configured."""
    if config.slow_threshold is None and not config.slow_stages:
        return replace(config, slow_threshold=DEFAULT_THRESHOLD_S)
    return config


def _end(address: str, port: int) -> str:
    if not address:
        return "?"
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{port}" if port else host


def line(record: SlowRecord) -> str:
    """One record, one line."""
    t = time.strftime("%H:%M:%S", time.localtime(record.time_unix_ns / 1e9))
    ms = (record.time_unix_ns // 1_000_000) % 1000
    latency = f"{record.latency_ns / 1e6:.3f}ms"
    proto = f"{record.network_type}/{record.transport}"
    src = _end(record.source_address, record.source_port)
    dst = _end(record.destination_address, record.destination_port)
    pod = dict(record.pod)
    where = f" pod {pod['k8s.namespace.name']}/{pod['k8s.pod.name']}" if pod else ""
    return f"{t}.{ms:03d} {record.stage:<11} {latency:>10} {proto:<9} {src:<40} {dst:<40} {record.cpu}{where}"


def as_json(record: SlowRecord) -> str:
    """One record as one JSON object (semantic-convention keys; ``trace_id``: its record ID,
    as its exemplar and log record carry it)."""
    out = {"time_unix_ns": record.time_unix_ns, "latency_seconds": record.latency_s, **record.attributes()}
    if record.trace_id:
        out["trace_id"] = f"{record.trace_id:032x}"
    return json.dumps(out, sort_keys=True)


def print_records(
    records: queue.Queue[SlowRecord], stop: threading.Event, count: int | None, as_lines: bool, out: TextIO
) -> int:
    """Print records until ``stop`` or ``count`` of them; returns how many were printed."""
    printed = 0
    if as_lines:
        print(HEADER, file=out, flush=True)
    while not stop.is_set() and (count is None or printed < count):
        try:
            record = records.get(timeout=0.2)
        except queue.Empty:
            continue
        print(line(record) if as_lines else as_json(record), file=out, flush=True)
        printed += 1
    return printed


def run_slow(config: Config, plan: Plan, out: TextIO = sys.stdout, note: TextIO = sys.stderr) -> int:
    """Load, print slow records until interrupted (or --count of them), detach."""
    t0 = time.monotonic()
    program = load_program(plan.spec, plan.info)
    release_compiler_memory()
    reader = SlowReader(program)
    records: queue.Queue[SlowRecord] = queue.Queue(maxsize=QUEUE_MAX)
    unprinted = [0]

    def put(record: SlowRecord) -> None:
        try:
            records.put_nowait(record)
        except queue.Full:
            unprinted[0] += 1

    reader.listen(put)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thresholds = ", ".join(
        f"{s.name} > {ns / 1e6:g}ms" for s in plan.spec.stages for i, ns in plan.spec.slow_ns if i == s.id
    )
    print(
        f"attached in {time.monotonic() - t0:.2f}s: printing samples over {thresholds} "
        f"(at most {plan.spec.slow_rate}/s per CPU)",
        file=note,
        flush=True,
    )
    try:
        printed = print_records(records, stop, config.count, not config.json, out)
    finally:
        reader.close()
        lost = {dict(p.attributes)["netlat.slow.lost_reason"]: p.value for p in reader.lost()}
        program.detach()
    lost["not_printed"] = unprinted[0] + records.qsize()
    shown = ", ".join(f"{k} {v}" for k, v in lost.items())
    print(f"{printed} slow records printed; lost: {shown}", file=note, flush=True)
    return 0
