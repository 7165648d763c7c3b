"""Build and load the BPF program: offsets from BTF, flags from the stage table, BCC headerless.

Nothing here guesses at kernel layouts: each struct field the C reads is resolved from the
running kernel's BTF and passed as ``-DOFF_*``; the C types BCC needs from the kernel
(``enum skb_drop_reason``) are written out from BTF into the shim.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from otel_netlat import layout
from otel_netlat.btf import Btf, BtfError
from otel_netlat.shim import Shim, build_shim
from otel_netlat.stages import DROP_HOOK, FREE_HOOK, Hook, Stage

log = logging.getLogger(__name__)

BPF_DIR = Path(__file__).resolve().parent.parent / "bpf"
if not (BPF_DIR / "netlat.c").is_file():  # installed as a wheel: sources shipped as package data
    BPF_DIR = Path(__file__).resolve().parent / "bpf"

#: -D name → (struct, dotted field path, size in bytes the C reads it as).
#: The C reads each of these with a fixed width; a kernel whose field has another size is refused.
OFFSETS: dict[str, tuple[str, str, int]] = {
    "OFF_SKB_HEAD": ("sk_buff", "head", 8),
    "OFF_SKB_DATA": ("sk_buff", "data", 8),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header", 2),
    "OFF_SKB_PROTOCOL": ("sk_buff", "protocol", 2),
    "OFF_SKB_DEV": ("sk_buff", "dev", 8),
    "OFF_SKB_SKB_IIF": ("sk_buff", "skb_iif", 4),
    "OFF_SKB_HEAD_PREV": ("sk_buff_head", "prev", 8),
    "OFF_DEV_IFINDEX": ("net_device", "ifindex", 4),
    "OFF_DEV_ND_NET": ("net_device", "nd_net.net", 8),
    "OFF_NET_NS_INUM": ("net", "ns.inum", 4),
    "OFF_SK_NET": ("sock", "__sk_common.skc_net.net", 8),
    "OFF_SK_RECEIVE_QUEUE": ("sock", "sk_receive_queue", 24),
    "OFF_SK_SOCKET": ("sock", "sk_socket", 8),
}

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
    selftest: bool = False
    n_stage_ids: int = 4
    ipv6_ext_max: int = 4

    @property
    def hooks(self) -> tuple[Hook, ...]:
        """Distinct hooks the program attaches, in a stable order."""
        seen: dict[str, Hook] = {}
        for stage in self.stages:
            for hook in stage.hooks:
                seen.setdefault(hook.target, hook)
        skb_stages = [s for s in self.stages if s.start.obj == "skb"]
        if self.drops or skb_stages:
            seen.setdefault(DROP_HOOK.target, DROP_HOOK)
        if skb_stages:
            seen.setdefault(FREE_HOOK.target, FREE_HOOK)
        return tuple(seen.values())


@dataclass
class KernelInfo:
    """What the loader learned from BTF: offsets and the drop reason names."""

    offsets: dict[str, int]
    drop_reasons: dict[int, str]
    max_drop_reason: int
    kernel_types_c: str
    extra: dict[str, int] = field(default_factory=dict)


def resolve_offsets(btf: Btf) -> dict[str, int]:
    """Every struct offset the C uses, from BTF, checked for the width the C reads."""
    out: dict[str, int] = {}
    for name, (struct, path, size) in OFFSETS.items():
        out[name] = btf.offsetof(struct, path)
        actual = btf.field_size(struct, path)
        if actual != size:
            raise ProgramError(
                f"struct {struct}.{path} is {actual} bytes on this kernel, otel-netlat reads {size}"
            )
    # The inode number of a socket: struct socket_alloc { struct socket socket; struct inode vfs_inode; }.
    out["OFF_SOCKET_INODE_INO"] = btf.offsetof("socket_alloc", "vfs_inode") + btf.offsetof("inode", "i_ino")
    return out


def drop_reason_names(btf: Btf) -> dict[int, str]:
    """Index → reason name without its prefix (``NO_SOCKET``), from ``enum skb_drop_reason``."""
    names: dict[int, str] = {}
    for name, value in btf.enum_values("skb_drop_reason").items():
        if name == "SKB_DROP_REASON_MAX" or value >= 0x10000:
            continue
        short = name.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_")
        names.setdefault(value, short)
    return names


def read_kernel_info(btf_path: str = "/sys/kernel/btf/vmlinux") -> KernelInfo:
    """Load BTF and derive what the program needs; BtfError/ProgramError on failure."""
    btf = Btf.load(btf_path)
    offsets = resolve_offsets(btf)
    reasons = drop_reason_names(btf)
    max_reason = max(reasons) + 1  # one more index: reasons this BTF does not name
    reasons[max_reason] = "UNKNOWN"
    kernel_types = "/* written from the running kernel's BTF by otel-netlat */\n"
    kernel_types += btf.c_enum("skb_drop_reason") + "\n"
    return KernelInfo(offsets, reasons, max_reason, kernel_types)


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


def _or_list(var: str, values: tuple[int, ...]) -> str:
    return "(" + "||".join(f"(({var})=={v}U)" for v in values) + ")"


def build_cflags(spec: ProgramSpec, info: KernelInfo, shim: Shim) -> list[str]:
    """The compiler flags that carry the stage table, layout and offsets into the C."""
    defs: dict[str, str | int] = dict(layout.c_defines())
    defs.update(info.offsets)
    defs["NETLAT_N_STAGES"] = spec.n_stage_ids
    defs["NETLAT_N_BOUNDS"] = len(spec.bounds_ns)
    defs["NETLAT_SLOTS_SHIFT"] = spec.slots_shift
    defs["NETLAT_MAX_DROP_REASON"] = info.max_drop_reason
    defs["NETLAT_IPV6_EXT_MAX"] = spec.ipv6_ext_max
    for stage in spec.stages:
        defs[f"NETLAT_START_{stage.start.macro_suffix}"] = stage.id
        defs[f"NETLAT_END_{stage.end.macro_suffix}"] = stage.id
    skb_stages = [s.id for s in spec.stages if s.start.obj == "skb"]
    if skb_stages:
        defs["NETLAT_SKB_STAGES"] = ",".join(map(str, skb_stages))
    if spec.drops:
        defs["NETLAT_DROPS"] = 1
    if spec.addr_labels:
        defs["NETLAT_ADDR_LABELS"] = 1
        defs["NETLAT_IPV4_PREFIX"] = spec.ipv4_prefix
        defs["NETLAT_IPV6_PREFIX"] = spec.ipv6_prefix
        defs["NETLAT_MAX_SERIES"] = spec.max_series
    if spec.selftest:
        defs["NETLAT_SELFTEST"] = 1
        defs["NETLAT_SELFTEST_PID"] = SELFTEST_PID
    flags = [f"-D{k}={v}" for k, v in defs.items()]
    flags.append(f"-DNETLAT_SLOT(v)={slot_expression(spec.bounds_ns)}")
    if spec.filter_netns:
        flags.append(f"-DNETLAT_FILTER_NETNS(x)={_or_list('x', spec.filter_netns)}")
    if spec.filter_ifindex:
        flags.append(f"-DNETLAT_FILTER_IFINDEX(x)={_or_list('x', spec.filter_ifindex)}")
    flags += shim.cflags
    flags.append(f"-I{BPF_DIR}")
    flags.append("-Wno-unused-function")
    return flags


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
    shim = build_shim({"kernel_types.h": info.kernel_types_c})
    os.environ["BCC_KERNEL_SOURCE"] = str(shim.kernel_source)
    try:
        from bcc import BPF  # noqa: PLC0415 — imported late: tracefs must be mounted first
    except ImportError as e:
        raise ProgramError(f"BCC's Python bindings are missing ({e}): apt-get install python3-bpfcc") from e
    cflags = build_cflags(spec, info, shim)
    try:
        bpf = _compile(BPF, str(BPF_DIR / "netlat.c"), cflags)
    finally:
        shim.remove()
    if spec.addr_labels:
        _reserve_overflow_keys(bpf)
    return LoadedProgram(bpf=bpf, spec=spec, info=info, attached=spec.hooks)


def _compile(bpf_cls, src: str, cflags: list[str]):
    """BCC prints compiler errors to stderr and raises a bare Exception: make it one line."""
    try:
        return bpf_cls(src_file=src.encode(), cflags=cflags)
    except Exception as e:  # BCC raises plain Exception for compile/load/attach failures
        msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        if "Operation not permitted" in msg or "Permission denied" in msg or "super-user" in msg:
            msg += " (run as root, or with CAP_BPF and CAP_PERFMON)"
        raise ProgramError(f"cannot load the BPF program: {msg}") from e


def _reserve_overflow_keys(bpf) -> None:
    """Insert the overflow series first, so a full address map still has room to fold into."""
    for name in ("hist_addr", "drops_addr"):
        table = bpf[name.encode()]
        key = table.Key()
        key.overflow = 1
        table[key] = table.Leaf() if not hasattr(table, "sLeaf") else table.Leaf()


__all__ = [
    "BtfError",
    "KernelInfo",
    "LoadedProgram",
    "ProgramError",
    "ProgramSpec",
    "build_cflags",
    "load_program",
    "read_kernel_info",
    "slot_expression",
]
