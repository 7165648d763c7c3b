"""Per-program BPF run time from the kernel's own statistics, and the floor program.

The kernel counts ``run_time_ns`` and ``run_cnt`` for every program while BPF statistics
are on. We turn them on with ``BPF_ENABLE_STATS``: the kernel keeps them on only while the
returned fd is open, so a crashed or killed benchmark cannot leave them on, and the
``kernel.bpf_stats_enabled`` sysctl (someone else's setting) is never written. When that
command is refused, the sysctl is set and restored to its previous value instead.

The floor is a program on each of the agent's tracepoints that only bumps a per-CPU
counter: the least any program there can cost, so each hook's cost above it is visible.
"""

from __future__ import annotations

import ctypes as ct
import os
from contextlib import contextmanager
from pathlib import Path

from otel_netlat.kernel.shim import build_shim
from otel_netlat.program.build import KernelInfo
from otel_netlat.stages.table import RAW_ARGS

SYS_BPF = 321  # x86_64
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0
SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
_libc = ct.CDLL(None, use_errno=True)


@contextmanager
def bpf_stats():
    """Kernel BPF run-time statistics on for the duration of the block."""
    attr = (ct.c_uint8 * 128)()  # union bpf_attr: enable_stats.type (u32) first, rest zero
    ct.c_uint32.from_buffer(attr).value = BPF_STATS_RUN_TIME
    fd = _libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ct.sizeof(attr))
    if fd >= 0:
        try:
            yield "BPF_ENABLE_STATS fd"
        finally:
            os.close(fd)
        return
    previous = SYSCTL.read_text().strip()
    SYSCTL.write_text("1\n")
    try:
        yield "sysctl kernel.bpf_stats_enabled"
    finally:
        SYSCTL.write_text(previous + "\n")


def prog_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program behind ``fd`` in this process."""
    fields = {}
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields.get("run_time_ns", 0)), int(fields.get("run_cnt", 0))


#: Raw tracepoint programs are named by event only: ``netif_rx`` → ``net:netif_rx``.
RAW_EVENTS = {t.split(":", 1)[1]: t for t in RAW_ARGS}


def hook_name(fn_name: str) -> str:
    """BCC function name → hook: ``tracepoint__net__netif_rx`` (classic) and
    ``raw_tracepoint__netif_rx`` (raw) → ``net:netif_rx``."""
    if fn_name.startswith("raw_tracepoint__"):
        event = fn_name.removeprefix("raw_tracepoint__")
        return RAW_EVENTS.get(event, event)
    if fn_name.startswith("tracepoint__"):
        group, event = fn_name.removeprefix("tracepoint__").split("__", 1)
        return f"{group}:{event}"
    return fn_name


def hook_stats(bpf) -> dict[str, tuple[int, int]]:
    """hook → (run_time_ns, run_cnt) for every program BCC loaded (attached or not)."""
    return {hook_name(name.decode()): prog_stats(fn.fd) for name, fn in bpf.funcs.items()}


def set_attached(bpf, hooks: list[str], on: bool) -> None:
    """Attach or detach a BCC object's tracepoint programs (raw or classic); the loaded code
    stays loaded."""
    attached = set(bpf.tracepoint_fds)
    raw_attached = set(bpf.raw_tracepoint_fds)
    for hook in hooks:
        event = hook.split(":", 1)[1].encode()
        raw_fn = b"raw_tracepoint__" + event
        if raw_fn in bpf.funcs:
            if on and event not in raw_attached:
                bpf.attach_raw_tracepoint(tp=event, fn_name=raw_fn)
            elif not on and event in raw_attached:
                bpf.detach_raw_tracepoint(tp=event)
            continue
        tp = hook.encode()
        fn = b"tracepoint__" + tp.replace(b":", b"__")
        if fn not in bpf.funcs and on:
            continue
        if on and tp not in attached:
            bpf.attach_tracepoint(tp=tp, fn_name=fn)
        elif not on and tp in attached:
            bpf.detach_tracepoint(tp)


Stats = dict[str, tuple[int, int]]


def delta(after: Stats, before: Stats) -> Stats:
    return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in after}


FLOOR_C = """
#include "kernel_types.h"
BPF_PERCPU_ARRAY(hits, u64, %(n)d);
%(probes)s
"""
RAW_FLOOR_PROBE = """
RAW_TRACEPOINT_PROBE(%(event)s) {
    u32 k = %(i)d;
    u64 *v = hits.lookup(&k);
    if (v)
        *v += %(add)s;
    return 0;
}
"""
FLOOR_PROBE = """
TRACEPOINT_PROBE(%(group)s, %(event)s) {
    u32 k = %(i)d;
    u64 *v = hits.lookup(&k);
    if (v)
        *v += %(add)s;
    return 0;
}
"""


def load_floor(hooks: list[str], info: KernelInfo, clock: bool = False, raw: bool = False):
    """The bare counting program on each ``group:event`` in ``hooks`` (compiled headerless).

    ``clock=True`` adds one ``bpf_ktime_get_ns()`` (the least a latency hook must do), so
    the price of reading the clock on this machine is visible on its own. ``raw=True``
    attaches as raw tracepoints: the program gets the tracepoint's arguments as they are,
    and the kernel skips building the perf trace record (copying fields and strings such
    as the device name) that a classic tracepoint program is handed.
    """
    add = "(bpf_ktime_get_ns() & 1) + 1" if clock else "1"
    probes = "".join(
        (RAW_FLOOR_PROBE if raw else FLOOR_PROBE)
        % {"group": h.split(":")[0], "event": h.split(":")[1], "i": i, "add": add}
        for i, h in enumerate(hooks)
    )
    shim = build_shim({"kernel_types.h": info.kernel_types_c})  # kfree_skb's format names the enum
    os.environ["BCC_KERNEL_SOURCE"] = str(shim.kernel_source)
    from bcc import BPF  # noqa: PLC0415

    try:
        return BPF(text=(FLOOR_C % {"n": len(hooks), "probes": probes}).encode(), cflags=shim.cflags)
    finally:
        shim.remove()
