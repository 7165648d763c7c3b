"""Give back what BCC's one compile left resident.

BCC links LLVM and clang (≈150 MB of code). The agent compiles once at start-up and never
again, yet every code page the compile touched stays in its RSS (≈90 MB) and in its
cgroup's memory, and glibc keeps the compiler's freed heap. After the program is loaded
we drop those code pages (``MADV_DONTNEED`` on the read-only executable mappings: they are
clean file pages, re-read from the library if ever run again) and trim the heap.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

MADV_DONTNEED = 4
COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def release_compiler_memory() -> int:
    """Drop the compiler's resident code pages and trim the heap; returns bytes advised."""
    libc = _libc()
    advised = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            # Only executable, never-written mappings: dropping a written page would lose data.
            if len(parts) < 6 or parts[1] != "r-xp":
                continue
            if not any(lib in parts[5] for lib in COMPILER_LIBRARIES):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if libc.madvise(lo, hi - lo, MADV_DONTNEED) == 0:
                advised += hi - lo
    libc.malloc_trim(0)
    log.debug("released %d MB of compiler code mappings", advised >> 20)
    return advised
