"""The address-keyed maps: read in one batch each, entries that idle for the TTL removed.

With address labels (and so with pod attribution) every address pair a stage sees gets an
entry of its own in a per-CPU hash (``hist_addr``, ``drops_addr``) of ``--max-series``
entries; when it is full, new pairs fold into the overflow series. On a node where pods
come and go, pairs that will never be seen again would fill it for good, so an entry whose
value has not changed for ``--series-ttl`` seconds (its value compared read after read) is
removed from the kernel map, and its series from the exporters (``export/expiry.py``).

Removing an entry the kernel may be updating. A hook finds its entry (``lookup``, or
``update`` then ``lookup`` for a new pair) and then adds to it with atomic instructions; we
remove an entry with ``BPF_MAP_LOOKUP_AND_DELETE_ELEM``, which copies its per-CPU values
and unlinks it under the bucket's lock. So:

* Every increment that completed before the removal is in the value we get back. That
  last value is handed on (:class:`~otel_netlat.collect.snapshot.Retired`) and stays in the
  exported series as long as that series lives: an exported count never goes down.
* A packet after the removal finds no entry and creates a new one from zero: the series
  comes back as a new series (a new start time), or, if its exported series is still alive
  (the last value is being carried), it simply continues it.
* The one inexact case is an increment in flight: a hook that looked the entry up just
  before the removal and adds just after it. Its add goes to the removed entry and is lost
  from the address series, or — the maps are preallocated, so a freed entry can be reused
  at once — lands in the entry's next user. The window is the few instructions between the
  lookup and the add, and it only opens for an entry that was idle for the whole TTL, at
  the moment a packet makes it busy again. The per-stage totals (``netlat.agent.entries``,
  the accounting identity) are separate maps and stay exact.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from otel_netlat.collect.maps import PercpuHashReader, sum_percpu, take_percpu

log = logging.getLogger(__name__)

T = TypeVar("T")

#: What a key decodes to: the series' points builder input (None: not exported) and the
#: group it counts in (the stage name, or "drops").
Decoded = tuple[object, str]


@dataclass
class _Entry(Generic[T]):
    """What we keep of one kernel entry between reads (bounded by the map's size)."""

    raw: bytes  # its per-CPU values at the last read: any difference is an update
    changed_ns: int
    key: object  # what ``decode`` made of the key, reused while the entry lives
    group: str
    points: T | None  # built from ``raw``, reused while it does not change


class AddrMap(Generic[T]):
    """One address-keyed per-CPU hash: live entries as points, idle ones removed.

    ``decode(key)`` turns a raw key into (key info, group) once per entry; ``build(info,
    sums)`` makes its points from the per-CPU sums, only when the value changed (None: the
    entry is not exported, e.g. still all zero). ``ttl_ns`` None: nothing is ever removed.
    """

    def __init__(
        self,
        table,
        words: int,
        decode: Callable[[bytes], Decoded],
        build: Callable[[object, list[int]], T | None],
        ttl_ns: int | None,
    ) -> None:
        self.table = table
        self.words = words
        self._reader = PercpuHashReader(table, words)
        self._decode = decode
        self._build = build
        self.ttl_ns = ttl_ns
        self._entries: dict[bytes, _Entry[T]] = {}
        self.expired: Counter[str] = Counter()  # entries removed so far, by group

    def read(self, now_ns: int) -> tuple[list[T], list[T], Counter[str]]:
        """(points of live entries, last points of entries removed now, entries in use by group)."""
        live: list[T] = []
        retired: list[T] = []
        in_use: Counter[str] = Counter()
        seen: dict[bytes, _Entry[T]] = {}
        for key, raw in self._reader.read():
            entry = self._entries.get(key)
            if entry is None:
                info, group = self._decode(key)
                entry = _Entry(raw, now_ns, info, group, self._points(info, raw))
            elif entry.raw != raw:
                entry.raw, entry.changed_ns = raw, now_ns
                entry.points = self._points(entry.key, raw)
            elif self.ttl_ns is not None and now_ns - entry.changed_ns >= self.ttl_ns:
                last = self._remove(key, entry)
                if last is not None:
                    retired.append(last)
                continue
            seen[key] = entry
            in_use[entry.group] += 1
            if entry.points is not None:
                live.append(entry.points)
        self._entries = seen  # entries gone from the map are forgotten with it
        return live, retired, in_use

    def _points(self, info: object, raw: bytes) -> T | None:
        return self._build(info, sum_percpu(raw, self.words))

    def _remove(self, key: bytes, entry: _Entry[T]) -> T | None:
        """Remove an idle entry; its last value as points (it may have moved since our read)."""
        last = take_percpu(self.table, key, self.words)
        self.expired[entry.group] += 1
        if last is None:
            return None
        return entry.points if last == entry.raw else self._points(entry.key, last)
