"""One snapshot per collection, so a scrape never mixes two map reads.

A reader pins ``latest()`` when its collection starts; the observable callbacks (run on the
collecting thread) and the injected histograms then read that one snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from otel_netlat.collect.snapshot import Snapshot


class Pin:
    """The snapshot of one collection, and whether the reader has delivered it yet."""

    __slots__ = ("snapshot", "delivered")

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.delivered = False


class SnapshotSource:
    """Gives every instrument of one collection the same snapshot.

    Histogram counts from one map read and packet counters from the next would not add up,
    so everything a collection reads goes through the pin of its thread.
    """

    def __init__(self, latest: Callable[[], Snapshot]) -> None:
        self._latest = latest
        self._local = threading.local()

    def current(self) -> Snapshot:
        """The pinned snapshot of this thread's collection, else the latest one."""
        return self.current_pin().snapshot

    def current_pin(self) -> Pin:
        """This thread's pin, or a fresh one on the latest snapshot outside a collection."""
        pin: Pin | None = getattr(self._local, "pin", None)
        return pin if pin is not None else Pin(self._latest())

    @contextmanager
    def pinned(self) -> Iterator[Pin]:
        """Pin the latest snapshot for the collection running on this thread."""
        outer: Pin | None = getattr(self._local, "pin", None)
        if outer is not None:  # a nested collect keeps the outer snapshot
            yield outer
            return
        pin = Pin(self._latest())
        self._local.pin = pin
        try:
            yield pin
        finally:
            self._local.pin = None
