"""What this machine allows, decided before anything is loaded: privileges, BTF, tracefs, stages.

``check`` prints these findings; ``run`` and ``watch`` stop on the fatal ones with the same
one-line reason. Nothing here loads a BPF program.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from otel_netlat.btf import BtfError
from otel_netlat.config import Config
from otel_netlat.program import KernelInfo, ProgramError, ProgramSpec, read_kernel_info
from otel_netlat.stages import (
    BUILTIN_STAGES,
    DROP_HOOK,
    DROPS,
    STAGES_BY_NAME,
    Stage,
    stage_problem,
    tracefs_root,
    tracepoint_problem,
)

CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39
BTF_PATH = "/sys/kernel/btf/vmlinux"


class StartupError(Exception):
    """The agent cannot start here; the message is one actionable line."""


@dataclass(frozen=True)
class Finding:
    """One line of ``check``'s report."""

    name: str
    ok: bool
    detail: str


@dataclass
class Plan:
    """What ``run`` will load: the program spec, plus what was left out and why."""

    spec: ProgramSpec
    info: KernelInfo
    unavailable: dict[str, str] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


def effective_caps() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def privilege_problem(caps: int | None = None) -> str | None:
    """Which capability is missing for BCC to compile, load and attach, or None."""
    caps = effective_caps() if caps is None else caps
    if caps & (1 << CAP_SYS_ADMIN):
        return None
    missing = [name for bit, name in ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")) if not caps & (1 << bit)]
    if not missing:
        return None
    return (
        f"missing capability {' and '.join(missing)}: BCC needs CAP_BPF and CAP_PERFMON "
        "(or CAP_SYS_ADMIN on kernels before 5.8); run as root or grant them"
    )


def ensure_tracefs() -> str | None:
    """Mount tracefs if it is not (needs CAP_SYS_ADMIN). Returns a problem or None."""
    if tracefs_root() is not None:
        return None
    target = "/sys/kernel/tracing"
    try:
        subprocess.run(["mount", "-t", "tracefs", "tracefs", target], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return (
            f"tracefs is not mounted and could not be mounted at {target}: mount it "
            "(mount -t tracefs tracefs /sys/kernel/tracing) or, in a pod, mount the host's /sys/kernel/tracing"
        )
    return None if tracefs_root() else f"tracefs mounted at {target} but has no events/"


def select_stages(config: Config) -> tuple[list[Stage], bool, dict[str, str]]:
    """The stages to load, whether drops are on, and the unavailable ones with reasons.

    A stage the user named that cannot attach is fatal; one merely defaulted is reported.
    """
    if config.custom_stages:
        names = ", ".join(c.name for c in config.custom_stages)
        raise StartupError(
            f"custom stages ({names}) are declared but this build cannot attach user-defined hooks yet; "
            "remove custom_stages from the configuration"
        )
    if config.hooks in ("kprobe", "fentry"):
        raise StartupError(
            f"--hooks {config.hooks}: every built-in stage uses tracepoints and this build has no "
            "function-hook stages; use --hooks auto or tracepoint"
        )
    wanted = list(config.stages) if config.stages is not None else [*STAGES_BY_NAME, DROPS]
    chosen: list[Stage] = []
    drops = False
    unavailable: dict[str, str] = {}
    for name in wanted:
        problem = tracepoint_problem(DROP_HOOK.target) if name == DROPS else stage_problem(STAGES_BY_NAME[name])
        if problem:
            if config.stages_explicit:
                raise StartupError(f"stage {name} cannot attach on this kernel: {problem}")
            unavailable[name] = problem
            continue
        if name == DROPS:
            drops = True
        else:
            chosen.append(STAGES_BY_NAME[name])
    if not chosen and not drops:
        reasons = "; ".join(f"{k}: {v}" for k, v in unavailable.items())
        raise StartupError(f"no stage can attach on this kernel ({reasons})")
    return chosen, drops, unavailable


def netns_inode(name_or_path: str) -> int:
    """The namespace inode the kernel reports as net->ns.inum."""
    path = name_or_path if name_or_path.startswith("/") else f"/run/netns/{name_or_path}"
    try:
        return os.stat(path).st_ino
    except OSError as e:
        raise StartupError(f"network namespace {name_or_path!r} not found ({path}: {e.strerror})") from e


def ifindex_of(name: str, netns: str | None) -> int:
    """An interface's index, inside ``netns`` when given (indexes are per namespace)."""
    if netns is None:
        try:
            return int(Path(f"/sys/class/net/{name}/ifindex").read_text())
        except OSError as e:
            raise StartupError(f"interface {name!r} not found in this network namespace") from e
    path = netns if netns.startswith("/") else f"/run/netns/{netns}"
    # /sys shows the agent's own namespace: ask ip(8) inside the target namespace instead.
    proc = subprocess.run(
        ["nsenter", f"--net={path}", "ip", "-o", "link", "show", "dev", name], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise StartupError(f"interface {name!r} not found in network namespace {netns!r}")
    return int(proc.stdout.split(":", 1)[0])


def resolve_filters(config: Config) -> tuple[tuple[int, ...], tuple[int, ...]]:
    inodes = tuple(sorted({netns_inode(n) for n in config.netns}))
    ifindexes: set[int] = set()
    for name in config.interfaces:
        if config.netns:
            ifindexes.update(ifindex_of(name, ns) for ns in config.netns)
        else:
            ifindexes.add(ifindex_of(name, None))
    return inodes, tuple(sorted(ifindexes))


def make_plan(config: Config) -> Plan:
    """Everything ``run`` needs before loading; StartupError on the first fatal problem."""
    findings: list[Finding] = []
    problem = privilege_problem()
    if problem:
        raise StartupError(problem)
    findings.append(Finding("privileges", True, "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN) present"))
    try:
        info = read_kernel_info(BTF_PATH)
    except (BtfError, ProgramError) as e:
        raise StartupError(str(e)) from e
    findings.append(Finding("btf", True, f"{BTF_PATH}: offsets resolved ({len(info.offsets)} fields)"))
    problem = ensure_tracefs()
    if problem:
        raise StartupError(problem)
    findings.append(Finding("tracefs", True, str(tracefs_root())))
    stages, drops, unavailable = select_stages(config)
    netns, ifindexes = resolve_filters(config)
    slots_shift = config.start_slots.bit_length() - 1
    spec = ProgramSpec(
        stages=tuple(stages),
        drops=drops,
        bounds_ns=config.bounds_ns,
        slots_shift=slots_shift,
        filter_netns=netns,
        filter_ifindex=ifindexes,
        addr_labels=config.address_labels,
        ipv4_prefix=config.ipv4_prefix,
        ipv6_prefix=config.ipv6_prefix,
        max_series=config.max_series,
        n_stage_ids=len(BUILTIN_STAGES),
    )
    return Plan(spec=spec, info=info, unavailable=unavailable, findings=findings)


def check_report(config: Config) -> tuple[list[Finding], bool]:
    """Every finding ``check`` prints, and whether ``run`` with this config would start."""
    findings: list[Finding] = []
    ok = True
    problem = privilege_problem()
    findings.append(Finding("privileges", problem is None, problem or "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)"))
    ok &= problem is None
    release = os.uname().release
    findings.append(Finding("kernel", True, release))
    try:
        info = read_kernel_info(BTF_PATH)
        findings.append(
            Finding("btf", True, f"{BTF_PATH}; sk_buff.data at {info.offsets['OFF_SKB_DATA']}, "
                    f"sock.sk_receive_queue at {info.offsets['OFF_SK_RECEIVE_QUEUE']}; "
                    f"{len(info.drop_reasons) - 1} drop reasons")
        )
    except (BtfError, ProgramError) as e:
        findings.append(Finding("btf", False, str(e)))
        ok = False
    headers = Path(f"/lib/modules/{release}/build")
    findings.append(
        Finding("kernel headers", True, f"{'present' if headers.exists() else 'absent'} (not needed: "
                "otel-netlat compiles against its own shim and BTF offsets)")
    )
    problem = ensure_tracefs() if effective_caps() & (1 << CAP_SYS_ADMIN) else (
        None if tracefs_root() else "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
    )
    findings.append(Finding("tracefs", problem is None, problem or str(tracefs_root())))
    ok &= problem is None
    for stage in BUILTIN_STAGES:
        problem = stage_problem(stage)
        hooks = f"{stage.start.target} -> {stage.end.target}"
        selected = config.stages is None or stage.name in config.stages
        findings.append(
            Finding(
                f"stage {stage.name}",
                problem is None,
                (f"{hooks}: " + (problem or "attachable")) + ("" if selected else " (not selected)"),
            )
        )
        if problem and selected and config.stages_explicit:
            ok = False
    problem = tracepoint_problem(DROP_HOOK.target)
    findings.append(Finding("stage drops", problem is None, f"{DROP_HOOK.target}: {problem or 'attachable'}"))
    if problem and config.stages_explicit and DROPS in (config.stages or ()):
        ok = False
    try:
        select_stages(config)
        resolve_filters(config)
    except StartupError as e:
        findings.append(Finding("selection", False, str(e)))
        ok = False
    return findings, ok
