"""``--cpu-labels``: the per-CPU maps read CPU by CPU, and the series cap over the result.

Every histogram the kernel keeps is already per CPU (``BPF_PERCPU_ARRAY``, and per-CPU
hashes for the address maps): a hook adds to its own CPU's copy, and the reader sums the
copies. With CPU labels the reader keeps each CPU's copy as a series of its own, with
``cpu.logical_number`` (the CPU the sample ended on). No kernel code changes, and the read
copies the same bytes (a per-CPU value always holds every CPU's copy): the only cost is
the series themselves, up to series × CPUs.

Those count against ``--max-series``: :class:`CpuCap` admits per-CPU series first come up
to the cap, per metric, and folds the rest into the ``otel.metric.overflow`` series. A
series keeps its place (admitted or folded) for as long as it lives, so no cumulative series
ever moves between its own row and the overflow row; the last counts of a folded series
whose address entry was removed are carried in the overflow series, which never goes down.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from otel_netlat.collect.addr_maps import AddrMap
from otel_netlat.collect.maps import PercpuHashReader
from otel_netlat.collect.snapshot import Attributes, CounterPoint, HistogramSeries

CPU = "cpu.logical_number"
#: The overflow series' attributes (the kernel reader folds into the same series).
OVERFLOW: Attributes = (("otel.metric.overflow", "true"),)

#: The CPU of a row that is the sum of every CPU's copy (no CPU label).
ALL_CPUS = -1

CpuRows = list[tuple[int, list[int]]]
"""A key's value: (cpu, its ``words`` u64s) for each CPU whose copy is not all zero; or,
without CPU labels, one row, (:data:`ALL_CPUS`, the sum)."""


def cpu_rows(raw: bytes, words: int) -> CpuRows:
    """A per-CPU value (``words`` u64s per CPU, CPU after CPU) split by CPU, zeros left out."""
    if raw.count(0) == len(raw):
        return []
    flat = memoryview(raw).cast("Q")
    rows = (flat[c * words : (c + 1) * words].tolist() for c in range(len(flat) // words))
    return [(cpu, row) for cpu, row in enumerate(rows) if any(row)]


def summed(rows: list[list[int]]) -> dict[int, CpuRows]:
    """Rows already summed across CPUs (:func:`~otel_netlat.collect.maps.read_percpu_u64`), each
    as the one row of its key."""
    return {i: [(ALL_CPUS, row)] for i, row in enumerate(rows)}


def total(rows: CpuRows) -> list[int]:
    """The sum of a key's rows."""
    if len(rows) == 1:
        return rows[0][1]
    return [sum(col) for col in zip(*(row for _, row in rows), strict=True)]


def with_cpu(attributes: Attributes, cpu: int) -> Attributes:
    """``attributes`` plus ``cpu.logical_number`` (none for :data:`ALL_CPUS`)."""
    return attributes if cpu == ALL_CPUS else tuple(sorted((*attributes, (CPU, str(cpu)))))


class PercpuArray:
    """Every key of a per-CPU array, CPU by CPU: one batch syscall (arrays take the same
    ``BPF_MAP_LOOKUP_BATCH`` walk as hashes), buffers kept from read to read."""

    def __init__(self, table, words: int) -> None:
        self.words = words
        self._reader = PercpuHashReader(table, words)

    def read(self) -> dict[int, CpuRows]:
        """Key index → its non-zero CPUs' values (keys all zero are left out)."""
        out = {}
        for key, raw in self._reader.read():
            rows = cpu_rows(raw, self.words)
            if rows:
                out[int.from_bytes(key, "little")] = rows
        return out


class CpuAddrMap(AddrMap):
    """An address map whose ``build`` gets the per-CPU rows (:data:`CpuRows`), not their sums."""

    def _points(self, info: object, raw: bytes):
        return self._build(info, cpu_rows(raw, self.words))  # type: ignore[arg-type]


T = TypeVar("T", HistogramSeries, CounterPoint)


def merge_hist(attributes: Attributes, parts: Iterable[HistogramSeries]) -> HistogramSeries:
    """One histogram of ``parts`` (the same bounds), under ``attributes``."""
    parts = list(parts)
    counts = [sum(c) for c in zip(*(p.bucket_counts for p in parts), strict=True)]
    sum_ns, count = sum(p.sum_ns for p in parts), sum(p.count for p in parts)
    return HistogramSeries(attributes, tuple(counts), sum_ns, count)


def merge_counters(attributes: Attributes, parts: Iterable[CounterPoint]) -> CounterPoint:
    return CounterPoint(attributes, sum(p.value for p in parts))


class CpuCap(Generic[T]):
    """The per-CPU series of one metric, at most ``limit`` of them; the rest folded.

    ``merge`` adds series up (:func:`merge_hist`, :func:`merge_counters`); ``weight`` is what
    a folded series counts in ``netlat.agent.series.folded`` (its samples), by ``group``.
    """

    def __init__(
        self,
        limit: int,
        merge: Callable[[Attributes, Iterable[T]], T],
        group: Callable[[T], str] = lambda s: "",
        weight: Callable[[T], int] = lambda s: 0,
    ) -> None:
        self.limit = limit
        self._merge = merge
        self._group = group
        self._weight = weight
        self._admitted: set[Attributes] = set()
        self._folded: set[Attributes] = set()
        self._carry: list[T] = []  # last counts of folded series whose entry was removed
        self._carried: Counter[str] = Counter()

    def apply(self, series: list[T], retired: Iterable[T] = ()) -> tuple[list[T], list[T], Counter[str]]:
        """(series capped, ``retired`` of admitted series, folded weight by group so far).

        ``series`` may hold the kernel's own overflow series: the folded ones join it.
        """
        kept_retired = []
        for r in retired:  # before forgetting absent series: a removed entry's are absent now
            if r.attributes in self._folded:
                self._carry = [self._merge(OVERFLOW, [*self._carry, r])]
                self._carried[self._group(r)] += self._weight(r)
            else:
                kept_retired.append(r)
        live = {s.attributes for s in series}
        self._admitted &= live
        self._folded &= live
        kept: list[T] = []
        folded: list[T] = []
        weights = Counter(self._carried)
        for s in series:
            a = s.attributes
            if a == OVERFLOW:
                folded.append(s)
            elif a in self._admitted or (a not in self._folded and len(self._admitted) < self.limit):
                self._admitted.add(a)
                kept.append(s)
            else:
                self._folded.add(a)
                folded.append(s)
                weights[self._group(s)] += self._weight(s)
        if folded or self._carry:
            kept.append(self._merge(OVERFLOW, [*folded, *self._carry]))
        return kept, kept_retired, weights
