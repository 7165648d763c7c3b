"""Whether fentry programs load and attach here, decided by loading one.

The cheap questions give wrong answers: BCC's ``BPF.support_kfunc()`` only looks for a
trampoline symbol in ``/proc/kallsyms`` and says yes on kernels where fentry programs cannot
load. So a two-instruction fentry program is loaded and attached through the bpf(2) syscall
— no compiler involved, a few milliseconds — and closed at once. Only
``otel_netlat.kernel.features`` calls this.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

from otel_netlat.kernel.btf import FUNC, Btf

#: Functions tried, in order, as the target of the probe fentry program.
FENTRY_PROBE_TARGETS = ("ip_rcv", "bpf_fentry_test1", "do_sys_openat2")

#: bpf(2)'s number by architecture (the generic table's 280 serves arm64, riscv and loongarch).
SYS_BPF = {
    "x86_64": 321,
    "i686": 357,
    "aarch64": 280,
    "riscv64": 280,
    "loongarch64": 280,
    "armv7l": 386,
    "ppc64le": 361,
    "ppc64": 361,
    "s390x": 351,
}
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_FENTRY = 24
_ENOTSUPP = 524  # the kernel's internal 'not supported', seen by bpf(2) callers


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    nr = SYS_BPF.get(platform.machine())
    if nr is None:
        raise OSError(errno.ENOSYS, f"bpf(2) number unknown for {platform.machine()}")
    fd = libc.syscall(ctypes.c_long(nr), ctypes.c_long(cmd), attr, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def func_id(btf: Btf, name: str) -> int | None:
    """BTF id of kernel function ``name`` (the fentry attach point), or None."""
    for tid in btf._ids_named(name):  # noqa: SLF001 — the id index is Btf's own lookup
        if btf.kind(tid) == FUNC:
            return tid
    return None


def load_fentry_probe(btf_id: int) -> None:
    """Load and attach ``r0 = 0; exit`` as fentry on BTF function ``btf_id``; OSError if not.

    Loading alone is not enough on every kernel: the trampoline is built at attach time.
    Both fds are closed at once, which detaches it.
    """
    insns = bytes.fromhex("b7000000000000009500000000000000")  # mov r0, 0; exit
    insn_buf = ctypes.create_string_buffer(insns, len(insns))
    license_buf = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(4096)
    attr = (ctypes.c_uint8 * 116)()  # bpf_attr up to attach_prog_fd: known to 5.5+ kernels

    def put(off: int, fmt: type, value: int) -> None:
        fmt.from_buffer(attr, off).value = value

    put(0, ctypes.c_uint32, _BPF_PROG_TYPE_TRACING)
    put(4, ctypes.c_uint32, len(insns) // 8)
    put(8, ctypes.c_uint64, ctypes.addressof(insn_buf))
    put(16, ctypes.c_uint64, ctypes.addressof(license_buf))
    put(24, ctypes.c_uint32, 1)  # log_level
    put(28, ctypes.c_uint32, len(log_buf))
    put(32, ctypes.c_uint64, ctypes.addressof(log_buf))
    ctypes.memmove(ctypes.addressof(attr) + 48, b"netlat_probe", 12)
    put(68, ctypes.c_uint32, _BPF_TRACE_FENTRY)
    put(108, ctypes.c_uint32, btf_id)
    prog_fd = _bpf(_BPF_PROG_LOAD, attr)
    try:
        link_attr = (ctypes.c_uint8 * 16)()
        ctypes.c_uint32.from_buffer(link_attr, 8).value = prog_fd  # raw_tracepoint.prog_fd
        os.close(_bpf(_BPF_RAW_TRACEPOINT_OPEN, link_attr))
    finally:
        os.close(prog_fd)


def fentry_problem(btf: Btf, targets: tuple[str, ...] = FENTRY_PROBE_TARGETS) -> str | None:
    """Why fentry programs cannot load and attach here, or None (decided by doing it)."""
    for name in targets:
        tid = func_id(btf, name)
        if tid is None:
            continue
        try:
            load_fentry_probe(tid)
        except OSError as e:
            why = "not supported" if e.errno == _ENOTSUPP else e.strerror or errno.errorcode.get(e.errno, "?")
            return f"fentry: BPF trampolines not available (a probe fentry program on {name} failed: {why})"
        return None
    return f"fentry: none of {', '.join(targets)} is in this kernel's BTF to probe fentry with"
