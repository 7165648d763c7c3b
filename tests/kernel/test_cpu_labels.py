"""``--cpu-labels`` on this kernel: each CPU's copy of the per-CPU maps as a series of its own.

* The per-CPU series add up exactly to the unlabelled ones: both readers read the same maps
  (one program), with and without CPU labels. The packet stages are filtered to the test's
  namespaces, so once the traffic is over their counts hold still and must match exactly; the
  softirq hooks see the whole machine, so a labelled read is checked between two unlabelled
  ones.
* Traffic pinned to one CPU lands on that ``cpu.logical_number``: a thread pinned there sends
  UDP in lockstep (no RPS), so the whole receive path and the read run on that CPU.
* The series count against ``--max-series``: the rest fold into ``otel.metric.overflow``,
  counted in ``netlat.agent.series.folded``; nothing is lost, and a series keeps its place.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TypeVar

import pytest

from otel_netlat.collect.per_cpu import CPU, OVERFLOW, merge_counters, merge_hist
from otel_netlat.collect.reader import SnapshotReader
from otel_netlat.collect.snapshot import Attributes, CounterPoint, HistogramSeries, Snapshot
from tests.support.netns import udp_lockstep

N = 200
T = TypeVar("T", HistogramSeries, CounterPoint)


@contextmanager
def on_cpu(cpu: int) -> Iterator[None]:
    """This thread pinned to ``cpu`` for the block."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


@pytest.fixture
def cpus() -> list[int]:
    mine = sorted(os.sched_getaffinity(0))
    if len(mine) < 2:
        pytest.fail("per-CPU tests need two CPUs")
    return mine[:2]


@pytest.fixture
def unlabelled():
    """Factory: a reader of a loaded program's maps without CPU labels (closed afterwards)."""
    readers: list[SnapshotReader] = []

    def make(loaded) -> SnapshotReader:
        program = replace(loaded.program, spec=replace(loaded.program.spec, cpu_labels=False))
        readers.append(SnapshotReader(program))
        return readers[-1]

    yield make
    for r in readers:
        r.close()


def without_cpu(a: Attributes) -> Attributes:
    return tuple((k, v) for k, v in a if k != CPU)


def added_up(series: tuple[HistogramSeries, ...]) -> dict[Attributes, HistogramSeries]:
    """Labelled series summed over their CPUs, by the rest of their attributes."""
    groups: dict[Attributes, list[HistogramSeries]] = {}
    for s in series:
        assert CPU in dict(s.attributes), s.attributes
        groups.setdefault(without_cpu(s.attributes), []).append(s)
    return {a: merge_hist(a, parts) for a, parts in groups.items()}


def udp(series: tuple[T, ...]) -> list[T]:
    """Our traffic's series: the namespaces' own ICMPv6 (router and multicast listener
    messages) may come at any time, even between two reads."""
    return [s for s in series if ("network.transport", "udp") in s.attributes]


def as_rows(h: HistogramSeries) -> tuple:
    return (h.bucket_counts, h.sum_ns, h.count)


def traffic(pair, cpus: list[int]) -> None:
    for cpu in cpus:
        with on_cpu(cpu):
            assert udp_lockstep(pair, N) == N
            assert udp_lockstep(pair, N // 2, socket.AF_INET6) == N // 2


def between(lo: HistogramSeries, mid: HistogramSeries, hi: HistogramSeries) -> bool:
    rows = zip(lo.bucket_counts, mid.bucket_counts, hi.bucket_counts, strict=True)
    return lo.count <= mid.count <= hi.count and all(a <= b <= c for a, b, c in rows)


@pytest.mark.parametrize("addr_labels", [False, True], ids=["plain", "address-labels"])
def test_per_cpu_series_add_up_to_the_totals(load_agent_program, veth_pair, unlabelled, cpus, addr_labels):
    loaded = load_agent_program(
        netns=veth_pair.netns_inodes, softirq=True, cpu_labels=True, addr_labels=addr_labels
    )
    plain = unlabelled(loaded)
    traffic(veth_pair, cpus)
    first = plain.read()
    labelled = loaded.reader.read()
    last = plain.read()
    want = {s.attributes: as_rows(s) for s in udp(first.latency) if s.count}
    assert {a: as_rows(s) for a, s in added_up(udp(labelled.latency)).items()} == want
    assert {p.attributes: p.value for p in udp(labelled.packets)} == {
        p.attributes: p.value for p in udp(first.packets)
    }
    assert len({dict(s.attributes)[CPU] for s in labelled.latency}) == len(cpus)
    for s in first.softirq:
        mine = added_up(labelled.softirq).get(s.attributes)
        if mine is not None or s.count:
            (after,) = [x for x in last.softirq if x.attributes == s.attributes]
            assert mine is not None and between(s, mine, after), s.attributes
    squeezed = merge_counters((), labelled.napi_squeezed).value
    assert first.napi_squeezed[0].value <= squeezed <= last.napi_squeezed[0].value
    assert all(p.value == 0 for p in labelled.folded), labelled.folded


def udp_samples(snap: Snapshot, stage: str) -> dict[str, int]:
    """This stage's UDP samples by CPU."""
    out: dict[str, int] = {}
    for s in snap.latency:
        a = dict(s.attributes)
        if a["netlat.stage"] == stage and a["network.transport"] == "udp":
            out[a[CPU]] = out.get(a[CPU], 0) + s.count
    return out


def test_pinned_traffic_lands_on_its_cpu(load_agent_program, veth_pair, cpus):
    loaded = load_agent_program(netns=veth_pair.netns_inodes, softirq=True, cpu_labels=True)
    for cpu in cpus:
        before = loaded.reader.read()
        with on_cpu(cpu):
            assert udp_lockstep(veth_pair, N) == N
        after = loaded.reader.read()
        for stage in ("backlog", "socket"):
            was, now = udp_samples(before, stage), udp_samples(after, stage)
            gained = {c: n - was.get(c, 0) for c, n in now.items() if n != was.get(c, 0)}
            assert gained == {str(cpu): N}, (stage, cpu, gained)
        runs = [s for s in after.softirq if dict(s.attributes)[CPU] == str(cpu)]
        assert any(dict(s.attributes)["netlat.softirq.vector"] == "net_rx" for s in runs)


def test_series_cap_counts_every_cpu(load_agent_program, veth_pair, unlabelled, cpus):
    loaded = load_agent_program(netns=veth_pair.netns_inodes, softirq=True, cpu_labels=True, max_series=1)
    plain = unlabelled(loaded)
    traffic(veth_pair, cpus)
    first, snap, last = plain.read(), loaded.reader.read(), plain.read()
    again = loaded.reader.read()
    own = [s for s in snap.latency if s.attributes != OVERFLOW]
    (overflow,) = [s for s in snap.latency if s.attributes == OVERFLOW]
    assert len(own) == 1 and overflow.count > 0
    samples = [sum(s.count for s in x.latency) for x in (first, snap, last)]
    assert samples == sorted(samples), samples  # nothing lost (stray ICMPv6 may add)
    folded = {dict(p.attributes)["netlat.stage"]: p.value for p in snap.folded}
    assert sum(v for k, v in folded.items() if k != "softirq") == overflow.count
    softirq_own = [s for s in snap.softirq if s.attributes != OVERFLOW]
    softirq_over = [s.count for s in snap.softirq if s.attributes == OVERFLOW]
    assert len(softirq_own) == 1 and folded["softirq"] == sum(softirq_over)
    assert len([p for p in snap.napi_squeezed if p.attributes != OVERFLOW]) <= 1
    # A series keeps its place from read to read.
    assert [s.attributes for s in again.latency if s.attributes != OVERFLOW] == [own[0].attributes]
