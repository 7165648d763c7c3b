"""Function hooks: which backend attaches them here (fentry or kprobe), and to which symbol.

The stage table names kernel functions (kind ``function``). What can attach them depends
on the running kernel, and the cheap questions give wrong answers: BCC's
``BPF.support_kfunc()`` only looks for a trampoline symbol in ``/proc/kallsyms`` and says
yes on kernels where fentry programs cannot load. So fentry is decided by loading (and
attaching) a two-instruction fentry program through the bpf(2) syscall — no compiler
involved, a few milliseconds — and kprobes by the kernel's kprobe PMU.

Functions the compiler renamed (``ip_rcv_finish.isra.0``) are attached by kprobe under
their exact symbol; fentry needs the function in BTF under its own name. A function that
is in neither (inlined, not built) makes its stage unavailable with a one-line reason.
"""

from __future__ import annotations

import ctypes
import errno
import gzip
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from otel_netlat.kernel.btf import FUNC, Btf
from otel_netlat.kernel.tracepoints import prototype_problem
from otel_netlat.stages.table import FENTRY, FUNCTION, KPROBE, RETURN_ARGS, TRACEPOINT, Hook, Stage

KALLSYMS = Path("/proc/kallsyms")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
#: Functions tried, in order, as the target of the probe fentry program.
FENTRY_PROBE_TARGETS = ("ip_rcv", "bpf_fentry_test1", "do_sys_openat2")

_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_BPF_PROG_TYPE_TRACING = 26
_BPF_TRACE_FENTRY = 24
_ENOTSUPP = 524  # the kernel's internal 'not supported', seen by bpf(2) callers


class HookError(Exception):
    """A forced backend (``--hooks fentry|kprobe``) cannot work on this kernel."""


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _config_says_unset(option: str) -> bool:
    """Whether /proc/config.gz shows ``# OPTION is not set`` (False when unknown)."""
    try:
        text = gzip.decompress(Path("/proc/config.gz").read_bytes()).decode(errors="replace")
    except OSError:
        return False
    return f"# {option} is not set" in text


def kprobe_problem() -> str | None:
    """Why kprobes cannot attach here, or None. BCC attaches them through the kprobe PMU."""
    if KPROBE_PMU.exists():
        return None
    if _config_says_unset("CONFIG_KPROBES"):
        return "kprobes: not supported by this kernel (CONFIG_KPROBES unset)"
    return f"kprobes: not supported by this kernel (no {KPROBE_PMU})"


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_BPF), ctypes.c_long(cmd), attr, ctypes.c_uint(len(attr)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _func_id(btf: Btf, name: str) -> int | None:
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
        tid = _func_id(btf, name)
        if tid is None:
            continue
        try:
            load_fentry_probe(tid)
        except OSError as e:
            why = "not supported" if e.errno == _ENOTSUPP else e.strerror or errno.errorcode.get(e.errno, "?")
            return f"fentry: BPF trampolines not available (a probe fentry program on {name} failed: {why})"
        return None
    return f"fentry: none of {', '.join(targets)} is in this kernel's BTF to probe fentry with"


def kallsyms_variants(path: Path = KALLSYMS) -> dict[str, list[str]]:
    """Text symbols by base name: ``ip_rcv_finish`` → [``ip_rcv_finish``] or [``…isra.0``]."""
    out: dict[str, list[str]] = {}
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in ("t", "T"):
            continue
        sym = parts[2]
        variants = out.setdefault(sym.split(".", 1)[0], [])
        if sym not in variants:
            variants.append(sym)
    return out


@dataclass
class Backends:
    """What this kernel allows for function hooks; computed once, lazily."""

    mode: str
    btf: Btf
    _kprobe: str | None = None
    _fentry: str | None = None
    _checked: set[str] = field(default_factory=set)
    _syms: dict[str, list[str]] | None = None

    @property
    def kprobe(self) -> str | None:
        """Problem with kprobes, or None."""
        if "kprobe" not in self._checked:
            self._kprobe = kprobe_problem()
            self._checked.add("kprobe")
        return self._kprobe

    @property
    def fentry(self) -> str | None:
        """Problem with fentry, or None."""
        if "fentry" not in self._checked:
            self._fentry = fentry_problem(self.btf)
            self._checked.add("fentry")
        return self._fentry

    @property
    def syms(self) -> dict[str, list[str]]:
        if self._syms is None:
            self._syms = kallsyms_variants()
        return self._syms

    def candidates(self) -> tuple[str, ...]:
        """Backends to try for a function stage, best first."""
        return {"auto": (FENTRY, KPROBE), FENTRY: (FENTRY,), KPROBE: (KPROBE,)}.get(self.mode, ())

    def forced_problem(self) -> str | None:
        """For ``--hooks fentry|kprobe``: why that backend cannot work here, or None."""
        if self.mode == FENTRY:
            return self.fentry
        if self.mode == KPROBE:
            return self.kprobe
        return None

    def summary(self) -> str:
        """One line for ``check`` and the log: each backend's verdict and the chosen one."""
        fentry = self.fentry or "fentry: available (probe program loaded and attached)"
        kprobe = self.kprobe or "kprobes: available"
        chosen = self.default_backend()
        return f"--hooks {self.mode}: function hooks use {chosen or 'none'}; {fentry}; {kprobe}"

    def default_backend(self) -> str | None:
        """The backend function hooks get when nothing about a function forbids it."""
        for backend in self.candidates():
            if (self.fentry if backend == FENTRY else self.kprobe) is None:
                return backend
        return None

    def resolve_hook(self, hook: Hook, backend: str) -> tuple[Hook | None, str | None]:
        """``hook`` resolved for ``backend`` (kind and exact symbol), or a reason it cannot be."""
        name = hook.target
        variants = self.syms.get(name, [])
        if hook.at_return and backend != FENTRY:
            return None, (
                f"kprobe: the return of {name} needs fexit (a kretprobe holds one of its few "
                "instances for every reader blocked there, and misses reads)"
            )
        if backend == FENTRY:
            if name not in variants:
                renamed = f" (only {', '.join(variants)}: renamed by the compiler)" if variants else ""
                return None, f"fentry: function {name} is not in /proc/kallsyms{renamed}"
            if _func_id(self.btf, name) is None:
                return None, f"fentry: function {name} is not in this kernel's BTF (inlined or renamed)"
            if hook.at_return:
                args = self.btf.function_args(name) or []
                problem = prototype_problem(f"fexit: {name}", args, RETURN_ARGS.get(name, ()))
                if problem:
                    return None, problem
            return replace(hook, kind=FENTRY, symbol=name), None
        if name in variants:
            return replace(hook, kind=KPROBE, symbol=name), None
        if len(variants) == 1:
            return replace(hook, kind=KPROBE, symbol=variants[0]), None
        if variants:
            copies = ", ".join(variants)
            return None, f"kprobe: function {name} exists only as several compiler copies ({copies})"
        return None, f"function {name} is not in /proc/kallsyms (inlined or not built into this kernel)"

    def resolve_stage(self, stage: Stage) -> tuple[Stage | None, str | None]:
        """A function stage with both hooks resolved to one backend, or the reason why not."""
        if self.mode == TRACEPOINT:
            return None, "--hooks tracepoint: this stage needs function hooks (fentry or kprobe)"
        reasons: list[str] = []
        for backend in self.candidates():
            problem = self.fentry if backend == FENTRY else self.kprobe
            if problem:
                reasons.append(problem)
                continue
            hooks: list[Hook] = []
            for hook in stage.hooks:
                if hook.kind != FUNCTION:
                    hooks.append(hook)
                    continue
                resolved, why = self.resolve_hook(hook, backend)
                if resolved is None:
                    reasons.append(why or "")
                    break
                hooks.append(resolved)
            else:
                return replace(stage, start=hooks[0], end=hooks[1], extra_ends=tuple(hooks[2:])), None
        return None, "; ".join(reasons) or "no function-hook backend selected"


def needs_functions(stage: Stage) -> bool:
    return any(h.kind == FUNCTION for h in stage.hooks)


__all__ = [
    "Backends",
    "HookError",
    "fentry_problem",
    "kallsyms_variants",
    "kprobe_problem",
    "load_fentry_probe",
    "needs_functions",
]
