"""What this machine offers the agent, probed once into one plain value.

Every question start-up asks of the running system is asked here and nowhere else: the
process's capabilities, BTF and the offsets the C reads, tracefs (mounted if a hook needs
it), the prototype of each raw tracepoint and the record of each classic one, whether fentry
programs load (by loading one) and whether kprobes exist, which kernel functions kallsyms
and BTF know, the namespaces and interfaces the filters name, and whether this is a
Kubernetes node. ``otel_netlat.program.plan`` judges the result without touching the system,
so its decisions are tested with made-up values.
"""

from __future__ import annotations

import gzip
import os
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from otel_netlat.kernel.btf import Btf, BtfError, kernel_btf
from otel_netlat.kernel.fentry_probe import fentry_problem
from otel_netlat.kernel.netns import ifindexes, netns_inode
from otel_netlat.kernel.offsets import BTF_PATH, KernelInfo, read_kernel_info
from otel_netlat.kernel.tracepoints import read_format, tracefs_root
from otel_netlat.stages.table import RAW_TRACEPOINT, TRACEPOINT, Hook

KALLSYMS = Path("/proc/kallsyms")
KPROBE_PMU = Path("/sys/bus/event_source/devices/kprobe")
TRACEFS_TARGET = "/sys/kernel/tracing"
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass(frozen=True)
class KernelFeatures:
    """The running system as start-up sees it. Every field has a default, so a test builds
    the kernel it needs by naming only what matters (the defaults: nothing is available)."""

    #: Effective capabilities of this process (a bit mask, as /proc/self/status shows it).
    caps: int = 0
    release: str = ""
    #: Whether /lib/modules/<release>/build exists (reported; never needed).
    headers: bool = False
    btf_path: str = BTF_PATH
    #: Why BTF cannot be read at all (then nothing BTF-derived below is known), or None.
    btf_error: str | None = None
    #: Offsets and drop reasons; None when they cannot be resolved (``info_error`` says why).
    info: KernelInfo | None = None
    info_error: str | None = None
    #: The mounted tracefs, or None; ``tracefs_error``: why it could not be mounted when a hook
    #: needed it.
    tracefs: str | None = None
    tracefs_error: str | None = None
    #: Raw tracepoint ``group:event`` → its BTF prototype, None when this kernel has no such event.
    raw_tracepoints: Mapping[str, tuple[str, ...] | None] = field(default_factory=dict)
    #: Classic tracepoint → its record's fields (name → size in bytes), or why it cannot be read.
    tracepoint_fields: Mapping[str, Mapping[str, int] | str] = field(default_factory=dict)
    #: Why fentry programs cannot load and attach here, or None.
    fentry_error: str | None = "fentry: not probed"
    #: Why kprobes cannot attach here, or None.
    kprobe_error: str | None = "kprobes: not probed"
    #: Candidate kernel functions → their text symbols (``ip_rcv_finish.isra.0`` when renamed).
    symbols: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Candidate kernel functions BTF describes (fentry attaches by BTF id).
    btf_functions: frozenset[str] = frozenset()
    #: Candidate functions hooked at their return → their BTF argument types.
    function_args: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: Network namespace (name or path, as configured) → its inode, or why it was not found.
    netns: Mapping[str, int | str] = field(default_factory=dict)
    #: Interface → its index in each configured namespace (or in ours), or why it was not found.
    interfaces: Mapping[str, tuple[int, ...] | str] = field(default_factory=dict)
    #: Running in a Kubernetes cluster (KUBERNETES_SERVICE_HOST), and this node (NODE_NAME).
    in_cluster: bool = False
    node_name: str | None = None


def probe_kernel(
    hooks: Iterable[Hook],
    netns: tuple[str, ...] = (),
    interfaces: tuple[str, ...] = (),
    btf_path: str = BTF_PATH,
) -> KernelFeatures:
    """Probe everything ``hooks`` (every hook any candidate stage may use) and the filters need."""
    hooks = tuple(hooks)
    caps = effective_caps()
    release = os.uname().release
    btf, btf_error = _btf(btf_path)
    info, info_error = _info(btf_path) if btf else (None, btf_error)
    # User-defined tracepoint hooks read a field of the classic record: its format is in tracefs.
    classic = sorted({h.target for h in hooks if h.attach_type == TRACEPOINT})
    tracefs_error = _mount_tracefs(caps) if classic else None
    root = tracefs_root()
    functions = sorted({h.target for h in hooks if h.is_function})
    fentry_error = fentry_problem(btf) if btf else f"fentry: {btf_error}"
    kprobe_error = kprobe_problem()
    usable = functions and (fentry_error is None or kprobe_error is None)
    symbols = kallsyms_variants() if usable else {}
    in_cluster, node_name = cluster()
    return KernelFeatures(
        caps=caps,
        release=release,
        headers=Path(f"/lib/modules/{release}/build").exists(),
        btf_path=btf_path,
        btf_error=btf_error,
        info=info,
        info_error=info_error,
        tracefs=str(root) if root else None,
        tracefs_error=tracefs_error,
        raw_tracepoints=_raw_prototypes(btf, hooks),
        tracepoint_fields={t: _record_fields(t, root) for t in classic},
        fentry_error=fentry_error,
        kprobe_error=kprobe_error,
        symbols={f: tuple(symbols[f]) for f in functions if f in symbols},
        btf_functions=frozenset(f for f in functions if btf and btf.has_function(f)),
        function_args=_function_args(btf, hooks),
        netns={n: netns_inode(n) for n in netns},
        interfaces={i: ifindexes(i, netns) for i in interfaces},
        in_cluster=in_cluster,
        node_name=node_name,
    )


def cluster() -> tuple[bool, str | None]:
    """Whether this process runs in a Kubernetes pod (the kubelet sets KUBERNETES_SERVICE_HOST),
    and this node's name (NODE_NAME, from the downward API)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")), os.environ.get("NODE_NAME") or None


def effective_caps() -> int:
    """This process's effective capabilities, as /proc/self/status shows them."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


# -- BTF ------------------------------------------------------------------------------------


def _btf(path: str) -> tuple[Btf | None, str | None]:
    try:
        return kernel_btf(path), None
    except BtfError as e:
        return None, str(e)


def _info(path: str) -> tuple[KernelInfo | None, str | None]:
    try:
        return read_kernel_info(path), None
    except BtfError as e:
        return None, str(e)


def _raw_prototypes(btf: Btf | None, hooks: tuple[Hook, ...]) -> dict[str, tuple[str, ...] | None]:
    """Each raw tracepoint's prototype (unknown, hence absent, without BTF)."""
    if btf is None:
        return {}
    targets = {h.target for h in hooks if h.attach_type == RAW_TRACEPOINT}
    out: dict[str, tuple[str, ...] | None] = {}
    for target in sorted(targets):
        args = btf.tracepoint_args(target.split(":", 1)[1])
        out[target] = None if args is None else tuple(args)
    return out


def _function_args(btf: Btf | None, hooks: tuple[Hook, ...]) -> dict[str, tuple[str, ...]]:
    """Each hooked function's arguments as BTF declares them: what fexit sees before the
    result, and the proof a kprobe on a compiler copy (``.isra.0``) needs."""
    if btf is None:
        return {}
    names = {h.target for h in hooks if h.is_function}
    return {n: tuple(btf.function_args(n) or ()) for n in sorted(names)}


# -- tracefs --------------------------------------------------------------------------------


def tracefs_mount_problem(target: str) -> str:
    return (
        f"tracefs is not mounted and could not be mounted at {target}: mount it "
        "(mount -t tracefs tracefs /sys/kernel/tracing) or, in a pod, mount the host's "
        "/sys/kernel/tracing"
    )


def ensure_tracefs() -> str | None:
    """Mount tracefs if it is not (needs CAP_SYS_ADMIN). Returns a problem or None."""
    if tracefs_root() is not None:
        return None
    try:
        subprocess.run(["mount", "-t", "tracefs", "tracefs", TRACEFS_TARGET], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return tracefs_mount_problem(TRACEFS_TARGET)
    return None if tracefs_root() else f"tracefs mounted at {TRACEFS_TARGET} but has no events/"


def _mount_tracefs(caps: int) -> str | None:
    """A hook needs tracefs: mount it if it is not; why it is not there after that, or None."""
    if tracefs_root() is not None:
        return None
    if not caps & (1 << CAP_SYS_ADMIN):  # mount(2) would refuse: say what to do instead
        return tracefs_mount_problem(TRACEFS_TARGET)
    return ensure_tracefs()


def _record_fields(target: str, root: Path | None) -> dict[str, int] | str:
    """A classic tracepoint's fields (name → size), or why they cannot be read."""
    if root is None:
        return "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
    try:
        return {name: size for name, (_, size) in read_format(target, root).items()}
    except FileNotFoundError:
        return f"tracepoint {target} does not exist on this kernel"
    except OSError as e:
        group, event = target.split(":", 1)
        return f"cannot read {root / 'events' / group / event / 'format'}: {e.strerror}"


# -- function hooks -------------------------------------------------------------------------


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


def kallsyms_variants(path: Path = KALLSYMS) -> dict[str, list[str]]:
    """Text symbols by base name: ``ip_rcv_finish`` → [``ip_rcv_finish``] or [``…isra.0``]."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    return parse_kallsyms(text)


def parse_kallsyms(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[1] not in ("t", "T"):
            continue
        sym = parts[2]
        variants = out.setdefault(sym.split(".", 1)[0], [])
        if sym not in variants:
            variants.append(sym)
    return out
