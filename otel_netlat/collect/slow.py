"""Slow-packet records: drained from the kernel's ring buffer (bpf/slow.h) on a thread.

The kernel writes a record for each sample over its stage's threshold, at most
--slow-rate a second per CPU, so the Python cost here is bounded by the rate limit, not by
the packet rate. The drain thread decodes each record into a :class:`SlowRecord`, hands it
to the listeners (``otel-netlat slow`` prints it at once) and keeps two bounded sets for the
snapshot: the newest records, and per (stage, network type, transport, bucket) the newest
few — the exemplars of every histogram bucket, which must outlive a burst of other records.
Records that arrive faster than they are drained are lost in the kernel and counted there
(ring full, rate-limited); nothing here grows without bound.
"""

from __future__ import annotations

import bisect
import ctypes
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from otel_netlat.collect.snapshot import CounterPoint, SlowRecord, attrs
from otel_netlat.program.build import LoadedProgram
from otel_netlat.program.layout import NET_TYPE_NAMES, TRANSPORT_NAMES, NetType, Transport

log = logging.getLogger("otel_netlat")

RING = "slow_events"
LOST_REASONS = ("rate_limited", "ring_full")  # the kernel's slow_lost indexes
RECENT = 256  # newest records kept for watch and the snapshot
PER_BUCKET = 4  # newest records kept per (stage, type, transport, bucket): exemplars
POLL_MS = 100


class _Rec(ctypes.Structure):
    """struct slow_rec (bpf/netlat.h)."""

    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("latency_ns", ctypes.c_uint64),
        ("stage", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("net_type", ctypes.c_uint8),
        ("transport", ctypes.c_uint8),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("from_sock", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
    ]


def _address(raw: bytes, ipv4: bool) -> str:
    """The address, or "" when the kernel could not name it (all zero)."""
    raw = raw[:4] if ipv4 else raw
    if not any(raw):
        return ""
    return socket.inet_ntop(socket.AF_INET if ipv4 else socket.AF_INET6, raw)


class SlowReader:
    """Drains slow records on its own thread; :meth:`retained` and :meth:`lost` feed snapshots."""

    def __init__(self, program: LoadedProgram) -> None:
        self._bpf = program.bpf
        self._names = {s.id: s.name for s in program.spec.stages}
        self._bounds_ns = program.spec.bounds_ns
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()  # bpf_ktime_get_ns is CLOCK_MONOTONIC
        self._lock = threading.Lock()
        self._recent: deque[SlowRecord] = deque(maxlen=RECENT)
        self._by_bucket: dict[tuple[str, str, str, int], deque[SlowRecord]] = {}
        self._listeners: list[Callable[[SlowRecord], None]] = []
        self.received = 0
        self._stop = threading.Event()
        self._lost_map = self._bpf.get_table(b"slow_lost")  # type: ignore[attr-defined]
        self._bpf[RING.encode()].open_ring_buffer(self._on_event)  # type: ignore[index]
        self._thread = threading.Thread(target=self._drain, name="netlat-slow", daemon=True)
        self._thread.start()

    def listen(self, listener: Callable[[SlowRecord], None]) -> None:
        """Call ``listener`` with each record as it is drained (on the drain thread)."""
        self._listeners.append(listener)

    def _drain(self) -> None:
        while not self._stop.is_set():
            try:
                self._bpf.ring_buffer_poll(POLL_MS)  # type: ignore[attr-defined]
            except Exception as e:  # a decode bug must not stop the drain, nor flood the log
                log.warning("reading slow records failed: %s", e)
                self._stop.wait(1.0)

    def _on_event(self, _ctx: object, data: int, size: int) -> int:
        if size < ctypes.sizeof(_Rec):
            return 0
        record = self.decode(_Rec.from_address(data))
        with self._lock:
            self.received += 1
            self._recent.append(record)
            key = (record.stage, record.network_type, record.transport, self.bucket_of(record.latency_ns))
            kept = self._by_bucket.get(key)
            if kept is None:
                kept = self._by_bucket[key] = deque(maxlen=PER_BUCKET)
            kept.append(record)
        for listener in self._listeners:
            listener(record)
        return 0

    def bucket_of(self, latency_ns: int) -> int:
        """The histogram bucket of a latency: bucket i holds (bounds[i-1], bounds[i]]."""
        return bisect.bisect_left(self._bounds_ns, latency_ns)

    def decode(self, r: _Rec) -> SlowRecord:
        ipv4 = r.net_type == NetType.IPV4
        return SlowRecord(
            stage=self._names.get(r.stage, str(r.stage)),
            latency_ns=r.latency_ns,
            time_unix_ns=r.ts + self._wall_offset_ns,
            cpu=r.cpu,
            network_type=NET_TYPE_NAMES[NetType(r.net_type)],
            transport=TRANSPORT_NAMES[Transport(r.transport)],
            source_address=_address(bytes(r.saddr), ipv4),
            source_port=r.sport,
            destination_address=_address(bytes(r.daddr), ipv4),
            destination_port=r.dport,
            ifindex=r.ifindex,
            netns=r.netns,
            record_id=random.getrandbits(128) | 1,  # bit 0: a span ID is never 0
        )

    def retained(self) -> tuple[SlowRecord, ...]:
        """The newest records and every bucket's newest few, oldest first, each once."""
        with self._lock:
            kept = {id(r): r for r in self._recent}
            for records in self._by_bucket.values():
                kept.update((id(r), r) for r in records)
        return tuple(sorted(kept.values(), key=lambda r: r.time_unix_ns))

    def lost(self) -> tuple[CounterPoint, ...]:
        """Records the kernel could not write, by reason (summed over CPUs), cumulative."""
        out = []
        for i, reason in enumerate(LOST_REASONS):
            values = self._lost_map[ctypes.c_uint32(i)]
            out.append(CounterPoint(attrs(netlat__slow__lost_reason=reason), int(sum(values))))
        return tuple(out)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * POLL_MS / 1000 + 1)


def slow_reader(program: LoadedProgram) -> SlowReader | None:
    """The drain of ``program``'s slow records, or None when it writes none."""
    return SlowReader(program) if program.spec.slow_ns else None
