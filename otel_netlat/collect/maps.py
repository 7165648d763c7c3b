"""Fast reads of the BPF maps: one syscall per map, not one per key.

BCC's table API does one ``bpf()`` call per key and builds a ctypes object per CPU; at a
few thousand keys that is what would make a collection slow. Our per-CPU maps hold only
u64 words, so one ``BPF_MAP_LOOKUP_BATCH`` into a flat buffer and a sum across CPUs is all
a read needs. The start table is mmap-ed and scanned in C speed through ``array``. The
address-keyed hashes are read the same way (one batch for every key and value), and an
entry is removed with its last value in one step (``BPF_MAP_LOOKUP_AND_DELETE_ELEM``).
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


class PercpuHashReader:
    """Every (key, per-CPU value) of a per-CPU hash whose values are ``words`` u64s, raw.

    One ``BPF_MAP_LOOKUP_BATCH`` walks the whole map into buffers of ``max_entries`` kept
    from read to read (a fresh megabyte per read would fragment the heap); entries added
    during the walk to a bucket already passed are simply read next time.
    """

    def __init__(self, table, words: int) -> None:
        self.table = table
        self.key_size = ct.sizeof(table.Key)
        self.value_size = words * 8 * possible_cpus()
        self.n = table.max_entries
        self._keys = ct.create_string_buffer(self.n * self.key_size)
        self._values = ct.create_string_buffer(self.n * self.value_size)

    def read(self) -> list[tuple[bytes, bytes]]:
        ks, vs, n = self.key_size, self.value_size, self.n
        keys, values = self._keys, self._values
        cursor, count = ct.c_uint32(0), ct.c_uint32(0)
        lib, total = _lib(), 0
        while total < n:
            count.value = n - total
            res = lib.bpf_lookup_batch(
                self.table.map_fd,
                ct.byref(cursor) if total else None,
                ct.byref(cursor),
                ct.byref(keys, ks * total),
                ct.byref(values, vs * total),
                ct.byref(count),
            )
            err = ct.get_errno()
            total += count.value
            if res != 0 and err != errno.ENOENT:
                raise MapReadError(f"cannot read map {self.table.name!r}: {os.strerror(err)}")
            if res != 0:  # ENOENT: the walk is done
                break
        kv, vv = memoryview(keys), memoryview(values)
        return [(bytes(kv[i * ks : (i + 1) * ks]), bytes(vv[i * vs : (i + 1) * vs])) for i in range(total)]


def take_percpu(table, key: bytes, words: int) -> bytes | None:
    """Remove ``key`` from a per-CPU hash and return its last per-CPU value (None: absent).

    One syscall, under the map bucket's lock: every increment that completed before the
    removal is in the returned value (Linux >= 5.14 for hash maps; the agent needs 5.17).
    """
    value = ct.create_string_buffer(words * 8 * possible_cpus())
    res = _lib().bpf_lookup_and_delete(table.map_fd, ct.create_string_buffer(key, len(key)), value)
    if res != 0:
        err = ct.get_errno()
        if err == errno.ENOENT:
            return None
        raise MapReadError(f"cannot remove an entry of map {table.name!r}: {os.strerror(err)}")
    return value.raw


def sum_percpu(raw: bytes, words: int) -> list[int]:
    """A per-CPU value (``words`` u64s per CPU, CPU after CPU) summed across CPUs."""
    flat = memoryview(raw).cast("Q")
    return [sum(flat[w::words]) for w in range(words)]


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
