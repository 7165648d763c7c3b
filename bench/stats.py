"""Small helpers shared by the benchmark parts: summaries of rounds, process readings."""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def summary(values: Sequence[float | None], digits: int = 3) -> dict | None:
    """Median, min and max of the rounds (each kept), or None when no round produced one."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    r = lambda v: round(v, digits)  # noqa: E731
    return {
        "median": r(statistics.median(vals)),
        "min": r(min(vals)),
        "max": r(max(vals)),
        "rounds": [r(v) for v in vals],
    }


def cpu_seconds(pid: int) -> float:
    """user + sys CPU time of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def cpu_ns(pid: int) -> int:
    """On-CPU time of every live thread of a process in ns (``/proc/PID/task/*/schedstat``).

    The same quantity /proc/PID/stat reports as utime + stime, but at ns resolution rather
    than in 10 ms ticks: a 1-5 s window of an agent using ~0.5 % of a core is a few ticks.
    Threads that exit within the window are missed (the agent's are long-lived).
    """
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(stat.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def llvm_text_mb(pid: int) -> float:
    """Resident executable text of LLVM/clang (BCC's compiler) in a process, in MB.

    Those pages are clean and file-backed: touched once by the compile at start-up, never
    needed again by a running agent, yet counted in its RSS.
    """
    kb, current = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:
            current = fields[1] == "r-xp" and any(k in line for k in ("libLLVM", "libclang"))
        elif current and line.startswith("Rss:"):
            kb += int(fields[1])
    return kb / 1024


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (resident now), VmHWM (peak since start), RssAnon and RssFile, in MB.

    RssFile is mostly shared library text (BCC carries LLVM): resident, but clean pages
    the kernel can drop; RssAnon is the process's own heap.
    """
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) / 1024
    return out
