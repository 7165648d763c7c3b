"""``otel-netlat watch``: per-stage latency histograms in the terminal, BCC-tools style.

Reads snapshots (not Prometheus text) and prints, each interval, what happened during it:
one log2-style histogram per stage and transport, like ``biolatency``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TextIO

from otel_netlat.collect.filters import FilterWatcher, filter_watcher
from otel_netlat.collect.reader import SnapshotReader
from otel_netlat.collect.slow import SlowReader, slow_reader
from otel_netlat.collect.snapshot import HistogramSeries, Snapshot
from otel_netlat.commands.slow import HEADER, line
from otel_netlat.config import Config
from otel_netlat.program.build import load_program
from otel_netlat.program.memory import release_compiler_memory
from otel_netlat.program.plan import Plan

BAR_WIDTH = 40
SLOW_SHOWN = 5


def _fmt_s(seconds: float) -> str:
    if seconds == float("inf"):
        return "inf"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            v = seconds / scale
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.3g}{unit}"
    return f"{seconds * 1e9:.0f}ns"


def quantile(bounds: tuple[float, ...], counts: tuple[int, ...], q: float) -> float:
    """Prometheus-style histogram_quantile: linear interpolation inside the bucket."""
    total = sum(counts)
    if not total:
        return float("nan")
    rank = q * total
    seen = 0
    for i, c in enumerate(counts):
        if seen + c >= rank and c:
            if i >= len(bounds):
                return bounds[-1]
            lo = bounds[i - 1] if i else 0.0
            return lo + (bounds[i] - lo) * (rank - seen) / c
        seen += c
    return bounds[-1]


def delta(now: HistogramSeries, before: HistogramSeries | None) -> tuple[tuple[int, ...], int, int]:
    if before is None:
        return now.bucket_counts, now.count, now.sum_ns
    return (
        tuple(a - b for a, b in zip(now.bucket_counts, before.bucket_counts, strict=True)),
        now.count - before.count,
        now.sum_ns - before.sum_ns,
    )


def render(now: Snapshot, before: Snapshot | None, interval_s: float) -> str:
    """The text for one interval: a histogram per series that saw samples."""
    prev = {s.attributes: s for s in before.latency} if before else {}
    lines = [time.strftime("%H:%M:%S") + f"  (last {interval_s:g}s)"]
    bounds = now.bounds_s
    for series in sorted(now.latency, key=lambda s: s.attributes):
        counts, count, sum_ns = delta(series, prev.get(series.attributes))
        if count <= 0:
            continue
        a = dict(series.attributes)
        title = " ".join(a[k] for k in ("netlat.stage", "network.type", "network.transport") if k in a)
        p50, p99 = quantile(bounds, counts, 0.5), quantile(bounds, counts, 0.99)
        avg = _fmt_s(sum_ns / count / 1e9)
        lines.append(f"\n{title}: {count} packets, avg {avg}, p50 {_fmt_s(p50)}, p99 {_fmt_s(p99)}")
        lines.append(f"{'latency':>22} : {'count':<8} distribution")
        peak = max(counts) or 1
        first = next(i for i, c in enumerate(counts) if c)
        last = max(i for i, c in enumerate(counts) if c)
        for i in range(first, last + 1):
            lo = bounds[i - 1] if i else 0.0
            hi = bounds[i] if i < len(bounds) else float("inf")
            bar = "*" * round(BAR_WIDTH * counts[i] / peak)
            lines.append(f"{_fmt_s(lo):>10} -> {_fmt_s(hi):<9}: {counts[i]:<8} |{bar:<{BAR_WIDTH}}|")
    if len(lines) == 1:
        lines.append("no samples in this interval")
    lines += softirq_lines(now, before)
    lines += slow_lines(now, before)
    return "\n".join(lines) + "\n"


def softirq_lines(now: Snapshot, before: Snapshot | None) -> list[str]:
    """The softirq stage's interval, per vector: wait and runtime p50/p99 (every CPU's
    together), and the NAPI polls that used their whole budget."""
    if not now.softirq:
        return []
    prev = {s.attributes: s for s in before.softirq} if before else {}
    counts: dict[tuple[str, str], list[int]] = {}
    for series in now.softirq:
        a = dict(series.attributes)
        add = delta(series, prev.get(series.attributes))[0]
        key = (a.get("netlat.softirq.vector", ""), a.get("netlat.softirq.phase", ""))
        counts[key] = [x + y for x, y in zip(counts.get(key, [0] * len(add)), add, strict=True)]
    row = "{:<8} {:>9} {:>9} {:>9} {:>12} {:>12}".format
    out = ["", row("softirq", "runs", "wait p50", "wait p99", "runtime p50", "runtime p99")]
    for vector in ("net_rx", "net_tx"):
        wait, run = counts.get((vector, "wait")), counts.get((vector, "runtime"))
        if not wait or not run:
            continue
        q = [
            _fmt_s(quantile(now.bounds_s, tuple(c), p)) if sum(c) else "-"
            for c in (wait, run)
            for p in (0.5, 0.99)
        ]
        out.append(row(vector, sum(run), *q))
    was = sum(p.value for p in before.napi_squeezed) if before else 0
    squeezed = sum(p.value for p in now.napi_squeezed) - was
    out.append(f"NAPI polls that used their whole budget (time squeeze): {squeezed}")
    return out


def slow_lines(now: Snapshot, before: Snapshot | None, n: int = SLOW_SHOWN) -> list[str]:
    """The newest slow packets of this interval (--slow-threshold), under the histograms."""
    since = before.taken_at_ns if before else 0
    fresh = [r for r in now.slow if r.time_unix_ns >= since]
    if not fresh:
        return []
    out = [f"\nslow packets ({len(fresh)} recorded, newest {min(n, len(fresh))}):", HEADER]
    return out + [line(r) for r in reversed(fresh[-n:])]


def watch(
    read: Callable[[], Snapshot],
    interval_s: float,
    count: int | None,
    out: TextIO = sys.stdout,
    stop: Callable[[float], bool] | None = None,
    note: TextIO = sys.stderr,
    attached: str = "",
) -> None:
    """Print one histogram block per interval; ``count`` blocks, or until ``stop`` says so.

    Once the baseline is read, one ``attached`` line goes to ``note`` (stderr: stdout stays
    the histograms): packets from then on are in the first block. ``attached`` says what.
    """
    before = read()
    what = f": {attached}" if attached else ""
    note.write(f"attached{what}; a histogram every {interval_s:g}s follows (Ctrl-C to stop)\n")
    note.flush()
    done = 0
    wait = stop or (lambda s: time.sleep(s) or False)
    while count is None or done < count:
        if wait(interval_s):
            break
        now = read()
        out.write(render(now, before, interval_s))
        out.flush()
        before = now
        done += 1


def read_filtered(reader: SnapshotReader, filters: FilterWatcher | None, slow: SlowReader | None) -> Snapshot:
    """Bring the filter sets up to date (a recreated namespace or interface), then read, with
    the slow records when they are on."""
    if filters is not None:
        filters.refresh()
    snap = reader.read()
    return replace(snap, slow=slow.retained()) if slow is not None else snap


def run_watch(config: Config, plan: Plan) -> int:
    """``watch``: load and attach as ``run`` does, print histograms until done, detach."""
    t0 = time.monotonic()
    program = load_program(plan.spec, plan.info)
    release_compiler_memory()
    reader = SnapshotReader(program, plan.unavailable)
    filters = filter_watcher(config, program)
    slow = slow_reader(program)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stages = [s.name for s in plan.spec.stages] + (["drops"] if plan.spec.drops else [])
    attached = f"{len(stages)} stages ({', '.join(stages)}) in {time.monotonic() - t0:.2f}s"
    try:
        watch(
            partial(read_filtered, reader, filters, slow),
            config.interval,
            config.count,
            stop=stop.wait,
            attached=attached,
        )
    finally:
        if slow is not None:
            slow.close()
        reader.close()
        program.detach()
    return 0
