"""Build and load the BPF program: offsets from BTF, flags from the stage table, BCC headerless.

The struct offsets the C reads come from the running kernel's BTF
(``otel_netlat.kernel.offsets``) and are passed as ``-DOFF_*``; each stage's role at each
hook is a ``-D`` flag from the stage table. Function hooks (fentry/kprobe, resolved by
``otel_netlat.kernel.backends``) become one generated line each in the shim's
``netlat_hooks.h``: the C has one macro per backend.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from otel_netlat.kernel.btf import BtfError, kernel_btf
from otel_netlat.kernel.offsets import KernelInfo, read_kernel_info
from otel_netlat.kernel.shim import Shim, build_shim
from otel_netlat.kernel.tracepoints import tracepoint_field_offset
from otel_netlat.program import layout
from otel_netlat.stages.table import (
    DROP_HOOK,
    FENTRY,
    FREE_HOOK,
    FUNCTION,
    KPROBE,
    N_STAGE_IDS,
    RETURN_ARGS,
    SOFTIRQ_HOOKS,
    TRACEPOINT,
    Hook,
    Stage,
)

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent.parent
BPF_DIR = PACKAGE_DIR.parent / "bpf"
if not (BPF_DIR / "netlat.c").is_file():  # installed as a wheel: sources shipped as package data
    BPF_DIR = PACKAGE_DIR / "bpf"

#: sk_buff fields every start hook reads (bpf/parse.h: read_skb_fields), with the width the C
#: reads: where they lie within SKB_SPAN_MAX bytes (all kernels seen) one helper call reads them.
SKB_SPAN_FIELDS = {"OFF_SKB_HEAD": 8, "OFF_SKB_DATA": 8, "OFF_SKB_PROTOCOL": 2, "OFF_SKB_NETWORK_HEADER": 2}
SKB_SPAN_MAX = 64
#: Entries in each filter set (bpf/filters.h): namespaces, or interfaces × namespaces.
FILTER_MAX = 256

#: The C handler of a function hook, by the object its argument is.
HANDLERS = {
    "skb": "skb_function_hook",
    "skb_nh": "skb_nh_function_hook",
    "sock": "sock_function_hook",
    "sock_queue_tail": "sock_function_hook",
    "socket_read": "socket_read_return",  # at the return of inet(6)_recvmsg (fexit)
    "accepted_sock": "accept_return",  # at the return of inet_csk_accept (fexit)
}
#: Hook objects that are skbs: their pending starts end when the skb is freed.
SKB_OBJECTS = ("skb", "skb_nh")
#: A start handed an skb at a socket (the queued skb a notification is about): the socket stage.
QUEUED_SKB_OBJECTS = ("sock_queue_tail",)
#: Stages whose start object is an skb (or that take over another stage's skb start) can
#: name their packet's 5-tuple in a slow record.
SLOW_OBJECTS = (*SKB_OBJECTS, *QUEUED_SKB_OBJECTS, "handoff")

SELFTEST_PID = 0x6E65746C  # "netl": getpgid(pid) with this pid runs the self-test probe


class ProgramError(Exception):
    """The BPF program cannot be built or loaded here (one line, actionable)."""


@dataclass(frozen=True)
class ProgramSpec:
    """Everything that shapes the compiled program."""

    stages: tuple[Stage, ...]
    drops: bool
    bounds_ns: tuple[int, ...]
    slots_shift: int = 16
    filter_netns: tuple[int, ...] = ()
    filter_ifindex: tuple[int, ...] = ()
    addr_labels: bool = False
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    max_series: int = 2000
    #: --latency-sample: one start in N is timed (bpf/slots.h start_time); 1: every one.
    latency_sample: int = 1
    selftest: bool = False
    n_stage_ids: int = N_STAGE_IDS
    ipv6_ext_max: int = 4
    #: The NET_RX/NET_TX softirq histograms (bpf/softirq.h).
    softirq: bool = False
    #: --cpu-labels: the reader keeps each CPU's copy of the per-CPU maps as a series of its
    #: own. Not a compile flag: the kernel side is the same either way.
    cpu_labels: bool = False
    #: (stage id, ns): samples over the threshold write a slow record (bpf/slow.h).
    slow_ns: tuple[tuple[int, int], ...] = ()
    #: Slow records per second per CPU (the token bucket's rate and burst).
    slow_rate: int = 100

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """Distinct hooks the program attaches, in a stable order."""
        seen: dict[str, Hook] = {}
        for stage in self.stages:
            for hook in stage.hooks:
                seen.setdefault(hook.attach_name, hook)
        skb_stages = [s for s in self.stages if s.start.obj in SKB_OBJECTS]
        socket_stages = [s for s in self.stages if s.start.obj in QUEUED_SKB_OBJECTS]
        if self.drops or skb_stages or socket_stages:  # an skb freed unread ends its entry
            seen.setdefault(DROP_HOOK.target, DROP_HOOK)
        if skb_stages:
            seen.setdefault(FREE_HOOK.target, FREE_HOOK)
        if self.softirq:
            for hook in SOFTIRQ_HOOKS:
                seen.setdefault(hook.target, hook)
        return tuple(seen.values())


def skb_span(offsets: dict[str, int]) -> tuple[int, int] | None:
    """(offset, length) of one read covering SKB_SPAN_FIELDS, or None when they lie too far
    apart (the C then reads each field on its own)."""
    lo = min(offsets[k] for k in SKB_SPAN_FIELDS)
    hi = max(offsets[k] + width for k, width in SKB_SPAN_FIELDS.items())
    length = (hi - lo + 7) // 8 * 8
    return (lo, length) if length <= SKB_SPAN_MAX else None


def slot_expression(bounds_ns: tuple[int, ...]) -> str:
    """A branch-only binary search: value v → bucket index, upper-inclusive bounds.

    Bucket i holds (b[i-1], b[i]]; the last bucket (index len(bounds)) holds (b[-1], inf).
    """

    def build(lo: int, hi: int) -> str:
        # Buckets lo..hi are possible; bounds[lo..hi-1] separate them.
        if lo == hi:
            return str(lo)
        mid = (lo + hi) // 2
        return f"((v)<={bounds_ns[mid]}ULL?{build(lo, mid)}:{build(mid + 1, hi)})"

    return build(0, len(bounds_ns))


@dataclass(frozen=True)
class FunctionProbe:
    """One generated BPF probe (a kernel function, or a user-defined stage's tracepoint) and
    its roles in every stage."""

    hook: Hook
    handler: str
    start_stage: int = -1
    end_stage: int = -1

    @property
    def kprobe_fn(self) -> str:
        """The C function name of a kprobe probe (identifier-safe, unique per symbol)."""
        return "netlat_kprobe_" + self.hook.attach_name.replace(".", "_")


def function_probes(spec: ProgramSpec) -> list[FunctionProbe]:
    """Generated probes grouped by symbol: one probe may end one stage and start another."""
    probes: dict[str, FunctionProbe] = {}
    for stage in spec.stages:
        for role, hook in stage.roles:
            if (hook.kind == TRACEPOINT and hook.field is None) or hook.obj == "handoff":
                continue  # built-in probes in netlat.c; a handoff ends another stage's start there
            if hook.kind == FUNCTION or hook.kind not in (FENTRY, KPROBE, TRACEPOINT):
                raise ProgramError(f"hook {hook.target} of stage {stage.name} has no backend resolved")
            handler = HANDLERS[hook.obj]
            key = hook.attach_name + (":return" if hook.at_return else "")
            current = probes.get(key, FunctionProbe(hook, handler))
            same = (current.hook.kind, current.hook.arg, current.hook.field, current.handler) == (
                hook.kind,
                hook.arg,
                hook.field,
                handler,
            )
            if not same:
                raise ProgramError(f"{key} is hooked twice with different backends or arguments")
            if role == "start":
                current = replace(current, start_stage=stage.id)
            else:
                current = replace(current, end_stage=stage.id)
            probes[key] = current
    return list(probes.values())


def function_hooks_header(spec: ProgramSpec) -> str:
    """netlat_hooks.h: one macro line per hooked kernel function (see bpf/netlat.c)."""
    lines = ["/* generated by otel_netlat.program.build from the stage table: one line per function hook */"]
    for probe in function_probes(spec):
        hook = probe.hook
        roles = f"{probe.handler}, {probe.start_stage}, {probe.end_stage}"
        if hook.kind == TRACEPOINT:
            group, event = hook.target.split(":", 1)
            try:
                offset = tracepoint_field_offset(hook.target, hook.field or "")
            except (KeyError, OSError) as e:
                raise ProgramError(f"tracepoint {hook.target}: {e}") from e
            lines.append(f"NETLAT_TRACEPOINT_HOOK({group}, {event}, {offset}, {roles})")
            continue
        if hook.at_return:
            if hook.kind != FENTRY or probe.handler not in ("socket_read_return", "accept_return"):
                raise ProgramError(f"{hook.attach_name}: only a read's or an accept's return is hooked")
            args = kernel_btf().function_args(hook.attach_name)
            if not args:
                raise ProgramError(f"fexit: function {hook.attach_name} is not in this kernel's BTF")
            if probe.handler == "accept_return":
                lines.append(f"NETLAT_FEXIT_ACCEPT_HOOK({hook.attach_name}, {len(args)}, {probe.end_stage})")
                continue
            # fexit's ctx: the arguments, then the return value at index len(args).
            flags = len(RETURN_ARGS[hook.attach_name]) - 1  # the read's flags: the last one checked
            roles = f"{len(args)}, {flags}, {probe.end_stage}"
            lines.append(f"NETLAT_FEXIT_READ_HOOK({hook.attach_name}, {roles})")
            continue
        arg = hook.arg if hook.arg is not None else 0
        if not 0 <= arg < 6:
            raise ProgramError(f"function {hook.target}: skb argument {arg} is not one of the first six")
        if hook.kind == FENTRY:
            lines.append(f"NETLAT_FENTRY_HOOK({hook.attach_name}, {arg}, {roles})")
        else:
            n = probe.kprobe_fn.removeprefix("netlat_kprobe_")
            lines.append(f"NETLAT_KPROBE_HOOK({n}, PT_REGS_PARM{arg + 1}, {roles})")
    return "\n".join(lines) + "\n"


def build_cflags(spec: ProgramSpec, info: KernelInfo, shim: Shim) -> list[str]:
    """The compiler flags that carry the stage table, layout and offsets into the C."""
    defs: dict[str, str | int] = dict(layout.c_defines())
    defs.update(info.offsets)
    defs["NETLAT_N_STAGES"] = spec.n_stage_ids
    defs["NETLAT_N_BOUNDS"] = len(spec.bounds_ns)
    defs["NETLAT_SLOTS_SHIFT"] = spec.slots_shift
    defs["NETLAT_MAX_DROP_REASON"] = info.max_drop_reason
    defs["NETLAT_IPV6_EXT_MAX"] = spec.ipv6_ext_max
    span = skb_span(info.offsets)
    if span:
        defs["NETLAT_SKB_SPAN_OFF"], defs["NETLAT_SKB_SPAN"] = span
    for stage in spec.stages:
        for role, hook in stage.roles:
            if hook.obj == "handoff":  # no start of its own: it ends another stage's start
                continue
            if hook.kind == TRACEPOINT and hook.field is None:  # built-in probes in netlat.c
                defs[f"NETLAT_{role.upper()}_{hook.macro_suffix}"] = stage.id
    for stage in spec.stages:  # a stage that ends another's start: its id for that code
        if stage.starts_from:
            defs[f"NETLAT_STAGE_{stage.name.upper()}"] = stage.id
    socket_stage = next((s.id for s in spec.stages if s.start.obj in QUEUED_SKB_OBJECTS), None)
    if socket_stage is not None:
        defs["NETLAT_SOCKET_STAGE"] = socket_stage
    skb_stages = [s.id for s in spec.stages if s.start.obj in SKB_OBJECTS]
    if skb_stages:
        defs["NETLAT_SKB_STAGES"] = ",".join(map(str, skb_stages))
    # Packets that bypass a stage's start (GRO's list path) are counted for it, by IP version,
    # where the plan kept its list-path hooks (the kernel has them).
    for stage in spec.stages:
        if stage.list_path_hooks and stage.family:
            defs[f"NETLAT_LIST_{stage.family.upper()}_STAGE"] = stage.id
    if spec.drops:
        defs["NETLAT_DROPS"] = 1
    if spec.softirq:
        defs["NETLAT_SOFTIRQ"] = 1
    if spec.addr_labels:
        defs["NETLAT_ADDR_LABELS"] = 1
        defs["NETLAT_IPV4_PREFIX"] = spec.ipv4_prefix
        defs["NETLAT_IPV6_PREFIX"] = spec.ipv6_prefix
        defs["NETLAT_MAX_SERIES"] = spec.max_series
    if spec.latency_sample > 1:
        defs["NETLAT_SAMPLE_EVERY"] = spec.latency_sample
    if spec.slow_ns:
        defs.update(slow_defines(spec))
    if spec.selftest:
        defs["NETLAT_SELFTEST"] = 1
        defs["NETLAT_SELFTEST_PID"] = SELFTEST_PID
    flags = [f"-D{k}={v}" for k, v in defs.items()]
    flags.append(f"-DNETLAT_SLOT(v)={slot_expression(spec.bounds_ns)}")
    if spec.slow_ns:
        chain = "".join(f"(s)=={i}U?{ns}ULL:" for i, ns in spec.slow_ns)
        flags.append(f"-DNETLAT_SLOW_NS(s)=({chain}~0ULL)")
    if spec.filter_netns or spec.filter_ifindex:
        flags.append(f"-DNETLAT_FILTER_MAX={FILTER_MAX}")
    if spec.filter_netns:
        flags.append("-DNETLAT_FILTER_NETNS=1")
    if spec.filter_ifindex:
        flags.append("-DNETLAT_FILTER_IFINDEX=1")
    flags += shim.cflags
    flags.append(f"-I{BPF_DIR}")
    flags.append("-Wno-unused-function")
    return flags


#: The slow-record ring: 64 pages (256 KiB on 4 KiB pages) hold ~3,600 records, more than a
#: second's worth at the default --slow-rate on 32 CPUs; the reader drains it every 100 ms.
SLOW_RING_PAGES = 64


def slow_defines(spec: ProgramSpec) -> dict[str, int]:
    """The -D values of bpf/slow.h: the token bucket and the stage whose end reads skb->data."""
    rx = next((s.id for s in spec.stages if s.name == "backlog"), 0xFFFFFFFF)
    socket = next((s.id for s in spec.stages if s.start.obj in QUEUED_SKB_OBJECTS), None)
    source = {"NETLAT_SLOW_SOURCE": 1} if socket in dict(spec.slow_ns) else {}
    return source | {
        "NETLAT_SLOW": 1,
        "NETLAT_SLOW_PAGES": SLOW_RING_PAGES,
        "NETLAT_SLOW_RATE": spec.slow_rate,
        "NETLAT_SLOW_COST_NS": 1_000_000_000 // spec.slow_rate,
        "NETLAT_SLOW_BURST_NS": 1_000_000_000,
        "NETLAT_SLOW_RX_STAGE": rx,
    }


@dataclass
class LoadedProgram:
    """A compiled, loaded and attached program, with what it needs to be read back."""

    bpf: object
    spec: ProgramSpec
    info: KernelInfo
    attached: tuple[Hook, ...]

    def detach(self) -> None:
        """Detach every probe and free the maps (BCC's cleanup)."""
        cleanup = getattr(self.bpf, "cleanup", None)
        if cleanup:
            cleanup()


def load_program(spec: ProgramSpec, info: KernelInfo) -> LoadedProgram:
    """Compile bpf/netlat.c against the shim, load it and attach its tracepoints."""
    shim = build_shim({"kernel_types.h": info.kernel_types_c, "netlat_hooks.h": function_hooks_header(spec)})
    os.environ["BCC_KERNEL_SOURCE"] = str(shim.kernel_source)
    try:
        from bcc import BPF  # noqa: PLC0415 — imported late: tracefs must be mounted first
    except ImportError as e:
        raise ProgramError(f"BCC's Python bindings are missing ({e}): apt-get install python3-bpfcc") from e
    cflags = build_cflags(spec, info, shim)
    kernel_btf.cache_clear()  # every question to BTF is answered: not held through the compile
    try:
        bpf = _compile(BPF, str(BPF_DIR / "netlat.c"), cflags)
    finally:
        shim.remove()
    try:
        _attach_kprobes(bpf, spec)
    except ProgramError:
        bpf.cleanup()
        raise
    seed_filters(bpf, spec)
    return LoadedProgram(bpf=bpf, spec=spec, info=info, attached=spec.hooks)


def seed_filters(bpf, spec: ProgramSpec) -> None:
    """Fill the filter sets with the values resolved at start (collect/filters.py keeps them
    current). Tracepoints attach on load, so for the moment before this a filtered program
    passes nothing: no packet outside the filter is ever measured."""
    import ctypes  # noqa: PLC0415

    for table, values in (("filter_netns", spec.filter_netns), ("filter_ifindex", spec.filter_ifindex)):
        if values:
            m = bpf.get_table(table.encode())
            for v in values:
                m[ctypes.c_uint32(v)] = ctypes.c_uint8(1)


def _attach_kprobes(bpf, spec: ProgramSpec) -> None:
    """Attach each kprobe probe to its exact symbol (tracepoints and fentry attach on load)."""
    for probe in function_probes(spec):
        if probe.hook.kind != KPROBE:
            continue
        try:
            bpf.attach_kprobe(event=probe.hook.attach_name.encode(), fn_name=probe.kprobe_fn.encode())
        except Exception as e:  # BCC raises plain Exception
            raise ProgramError(f"cannot attach kprobe on {probe.hook.attach_name}: {e}") from e


def _compile(bpf_cls, src: str, cflags: list[str]):
    """BCC prints compiler errors to stderr and raises a bare Exception: make it one line."""
    try:
        return bpf_cls(src_file=src.encode(), cflags=cflags)
    except Exception as e:  # BCC raises plain Exception for compile/load/attach failures
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if "Operation not permitted" in msg or "Permission denied" in msg or "super-user" in msg:
            msg += " (run as root, or with CAP_BPF and CAP_PERFMON)"
        raise ProgramError(f"cannot load the BPF program: {msg}") from e


__all__ = [
    "BtfError",
    "KernelInfo",
    "LoadedProgram",
    "ProgramError",
    "ProgramSpec",
    "build_cflags",
    "function_hooks_header",
    "function_probes",
    "load_program",
    "read_kernel_info",
    "slot_expression",
]
