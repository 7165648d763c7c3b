"""Fast reads of the BPF maps: one syscall per map, not one per key.

BCC's table API does one ``bpf()`` call per key and builds a ctypes object per CPU; at a
few thousand keys that is what would make a collection slow. Our per-CPU maps hold only
u64 words, so one ``BPF_MAP_LOOKUP_BATCH`` into a flat buffer and a sum across CPUs is all
a read needs. The start table is mmap-ed and scanned in C speed through ``array``.
"""

from __future__ import annotations

import ctypes as ct
import errno
import mmap
import os
from array import array
from functools import cache


class MapReadError(Exception):
    """A map could not be read (kernel without batch ops, vanished map, …)."""


@cache
def possible_cpus() -> int:
    """Per-CPU maps hold one value per *possible* CPU, not per online one."""
    from bcc.utils import get_possible_cpus  # noqa: PLC0415

    return len(get_possible_cpus())


def _lib():
    from bcc.libbcc import lib  # noqa: PLC0415

    return lib


def read_percpu_u64(table, n_keys: int, words: int) -> list[list[int]]:
    """Sum a per-CPU array of ``n_keys`` values, each ``words`` u64s, across CPUs.

    Returns ``n_keys`` lists of ``words`` integers.
    """
    ncpu = possible_cpus()
    stride = words * ncpu
    keys = (ct.c_uint32 * n_keys)()
    values = (ct.c_uint64 * (n_keys * stride))()
    count = ct.c_uint32(n_keys)
    out_batch = ct.c_uint32(0)
    lib = _lib()
    res = lib.bpf_lookup_batch(
        table.map_fd, None, ct.byref(out_batch), ct.byref(keys), ct.byref(values), ct.byref(count)
    )
    err = ct.get_errno()
    if res != 0 and err != errno.ENOENT:
        raise MapReadError(f"cannot read map {table.name!r}: {os.strerror(err)}")
    flat = memoryview(values).cast("B").cast("Q")
    result: list[list[int]] = [[0] * words for _ in range(n_keys)]
    got = count.value
    for i in range(got):
        key = keys[i]
        base = i * stride
        row = flat[base : base + stride]
        result[key] = [sum(row[w::words]) for w in range(words)]
    return result


class SlotScanner:
    """Counts occupied start slots per stage through an mmap of the start table."""

    def __init__(self, table, n_stages: int, slots: int, slot_size: int) -> None:
        self.n_stages = n_stages
        self.slots = slots
        self.slot_size = slot_size
        size = n_stages * slots * slot_size
        page = mmap.PAGESIZE
        self._mm = mmap.mmap(table.map_fd, (size + page - 1) // page * page, mmap.MAP_SHARED, mmap.PROT_READ)

    def pending(self) -> list[int]:
        """Occupied slots (obj != 0) per stage id."""
        words = self.slot_size // 8
        out = []
        per_stage = self.slots * self.slot_size
        for stage in range(self.n_stages):
            chunk = array("Q", self._mm[stage * per_stage : (stage + 1) * per_stage])
            objs = chunk[0::words]
            out.append(len(objs) - objs.count(0))
        return out

    def close(self) -> None:
        self._mm.close()
