"""What this machine allows, decided before anything is loaded: privileges, BTF, tracefs, stages.

``check`` prints these findings; ``run`` and ``watch`` stop on the fatal ones with the same
one-line reason. Nothing here loads a BPF program.
"""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from otel_netlat.config import Config
from otel_netlat.kernel.backends import Backends, needs_functions
from otel_netlat.kernel.btf import BtfError, kernel_btf
from otel_netlat.kernel.tracepoints import stage_problem, tracefs_root, tracepoint_problem
from otel_netlat.program.build import KernelInfo, ProgramError, ProgramSpec, read_kernel_info
from otel_netlat.stages.table import (
    ALL_STAGES,
    DROP_HOOK,
    DROPS,
    FREE_HOOK,
    N_STAGE_IDS,
    STAGES_BY_NAME,
    Stage,
    custom_stage,
)

log = logging.getLogger(__name__)

#: What check prints about packets the ip_rcv/ipv6_rcv stages cannot see.
LIST_PATH_NOTE = (
    "not covered: packets received in batches (GRO; ip_list_rcv/ipv6_list_rcv) never pass "
    "ip_rcv/ipv6_rcv, so the ip_rcv and ipv6_rcv stages see only the single-packet path; those "
    'packets are counted in netlat_agent_skipped_total{netlat_skip_reason="list_path"}'
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
    #: One line: the function-hook backend chosen and why (``check``, start-up log).
    hooks_summary: str = ""
    #: Pod attribution is on (asked for, and running inside a cluster).
    pod_attribution: bool = False


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
    wanted = ((CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON"))
    missing = [name for bit, name in wanted if not caps & (1 << bit)]
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
            "(mount -t tracefs tracefs /sys/kernel/tracing) or, in a pod, mount the host's "
            "/sys/kernel/tracing"
        )
    return None if tracefs_root() else f"tracefs mounted at {target} but has no events/"


#: What check says about tracefs when nothing needs it.
TRACEFS_NOT_NEEDED = "not needed: the built-in hooks are raw tracepoints, described by BTF"


def tracefs_needed(config: Config) -> bool:
    """Whether this configuration reads tracefs: only a user-defined stage on a tracepoint does
    (it names a field of the classic record, whose offset is in the tracepoint's format file).
    The built-in hooks attach as raw tracepoints by name; kprobes go through the kprobe PMU."""
    return any(h.kind == "tracepoint" for c in config.custom_stages for h in (c.start, c.end))


def _backends(config: Config) -> Backends:
    return Backends(config.hooks, kernel_btf(BTF_PATH))


def select_stages(
    config: Config, backends: Backends | None = None
) -> tuple[list[Stage], bool, dict[str, str]]:
    """The stages to load (function hooks resolved), whether drops are on, and the unavailable ones.

    A stage the user named that cannot attach is fatal; one merely defaulted is reported.
    ``--hooks fentry|kprobe`` that this kernel cannot honour is fatal too.
    """
    table = stage_table(config)
    wanted = list(config.stages) if config.stages is not None else [*table, DROPS]
    needs_backend = config.hooks in ("kprobe", "fentry") or any(
        name != DROPS and _may_need_functions(table[name]) for name in wanted
    )
    if needs_backend and backends is None:
        try:
            backends = _backends(config)
        except BtfError as e:
            raise StartupError(str(e)) from e
    if backends is not None:
        forced = backends.forced_problem()
        if forced:
            raise StartupError(f"--hooks {config.hooks} is not possible on this kernel: {forced}")
    chosen: list[Stage] = []
    drops = False
    unavailable: dict[str, str] = {}
    for name in wanted:
        resolved: Stage | None = None
        if name == DROPS:
            problem = tracepoint_problem(DROP_HOOK.target)
        else:
            resolved, problem = _resolve(table[name], backends)
        if problem:
            if name not in STAGES_BY_NAME and name != DROPS:  # declared by the user: fatal
                raise StartupError(f"custom stage {name} cannot attach on this kernel: {problem}")
            if config.stages_explicit:
                raise StartupError(f"stage {name} cannot attach on this kernel: {problem}")
            unavailable[name] = problem
            continue
        if name == DROPS:
            drops = True
        elif resolved is not None:
            chosen.append(resolved)
    if not chosen and not drops:
        reasons = "; ".join(f"{k}: {v}" for k, v in unavailable.items())
        raise StartupError(f"no stage can attach on this kernel ({reasons})")
    return chosen, drops, unavailable


def stage_table(config: Config) -> dict[str, Stage]:
    """Built-in stages, then the config's custom stages (ids after the built-in ones).

    A custom tracepoint hook gets its own generated probe, so it may not be a tracepoint the
    built-in probes already use (one BPF program cannot define that probe twice).
    """
    table = dict(STAGES_BY_NAME)
    builtin_tps = {h.target for s in ALL_STAGES for h in s.hooks if h.kind == "tracepoint"}
    builtin_tps |= {DROP_HOOK.target, FREE_HOOK.target}
    for i, c in enumerate(config.custom_stages):
        for h in (c.start, c.end):
            if h.kind == "tracepoint" and h.target in builtin_tps:
                raise StartupError(
                    f"custom stage {c.name}: tracepoint {h.target} is already used by otel-netlat's "
                    "built-in stages; hook another tracepoint or a function"
                )
        table[c.name] = custom_stage(c.name, c.direction, c.start, c.end, N_STAGE_IDS + i)
    return table


def _may_need_functions(stage: Stage) -> bool:
    """Whether resolving ``stage`` may need a function-hook backend (itself or its fallback)."""
    return needs_functions(stage) or (stage.fallback is not None and stage_problem(stage) is not None)


def _resolve(stage: Stage, backends: Backends | None) -> tuple[Stage | None, str | None]:
    """A stage ready to load (function hooks bound to a backend and symbol), or why not.

    A stage whose tracepoints this kernel lacks uses its function-hook fallback if it has one.
    """
    problem = stage_problem(stage)
    if problem:
        if stage.fallback is None or backends is None:
            return None, problem
        resolved, why = _resolve(stage.fallback, backends)
        return (resolved, None) if resolved else (None, f"{problem}; function fallback: {why}")
    if not needs_functions(stage):
        return stage, None
    if backends is None:
        return None, "function hooks cannot be judged without BTF"
    return backends.resolve_stage(stage)


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


def pod_attribution_wanted(config: Config) -> bool:
    """Pod attribution needs a cluster and full-length address keys; outside a cluster it is off.

    The kernel keys series by exact local address (/32, /128) so an address can name a pod.
    """
    if not config.pod_attribution:
        return False
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        log.warning("pod attribution is off: not running in a Kubernetes cluster")
        return False
    if config.address_labels and (config.ipv4_prefix, config.ipv6_prefix) != (32, 128):
        raise StartupError(
            "--pod-attribution with --address-labels needs full-length prefixes "
            "(--ipv4-prefix 32 --ipv6-prefix 128): a network prefix cannot name a pod"
        )
    if not os.environ.get("NODE_NAME"):
        raise StartupError("--pod-attribution needs NODE_NAME (the downward API's spec.nodeName)")
    return True


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
    if tracefs_needed(config):
        problem = ensure_tracefs()
        if problem:
            raise StartupError(f"{problem} (a custom stage hooks a tracepoint)")
        findings.append(Finding("tracefs", True, str(tracefs_root())))
    else:
        findings.append(Finding("tracefs", True, TRACEFS_NOT_NEEDED))
    try:
        backends = _backends(config)
    except BtfError as e:
        raise StartupError(str(e)) from e
    stages, drops, unavailable = select_stages(config, backends)
    summary = backends.summary()
    log.info("hooks: %s", summary)
    for stage in stages:
        if any(h.kind != "tracepoint" for h in stage.hooks):
            log.info("stage %s: %s", stage.name, stage.describe())
    if any(s.name in ("ip_rcv", "ipv6_rcv") for s in stages):
        log.info("list path: %s", LIST_PATH_NOTE)
    netns, ifindexes = resolve_filters(config)
    slots_shift = config.start_slots.bit_length() - 1
    pods = pod_attribution_wanted(config)
    spec = ProgramSpec(
        stages=tuple(stages),
        drops=drops,
        bounds_ns=config.bounds_ns,
        slots_shift=slots_shift,
        filter_netns=netns,
        filter_ifindex=ifindexes,
        addr_labels=config.address_labels or pods,
        ipv4_prefix=32 if pods else config.ipv4_prefix,
        ipv6_prefix=128 if pods else config.ipv6_prefix,
        max_series=config.max_series,
        n_stage_ids=N_STAGE_IDS + len(config.custom_stages),
    )
    findings.append(Finding("hooks", True, summary))
    return Plan(
        spec=spec,
        info=info,
        unavailable=unavailable,
        findings=findings,
        hooks_summary=summary,
        pod_attribution=pods,
    )


def check_report(config: Config) -> tuple[list[Finding], bool]:
    """Every finding ``check`` prints, and whether ``run`` with this config would start."""
    findings: list[Finding] = []
    ok = True
    problem = privilege_problem()
    findings.append(
        Finding("privileges", problem is None, problem or "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)")
    )
    ok &= problem is None
    release = os.uname().release
    findings.append(Finding("kernel", True, release))
    try:
        info = read_kernel_info(BTF_PATH)
        findings.append(
            Finding(
                "btf",
                True,
                f"{BTF_PATH}; sk_buff.data at {info.offsets['OFF_SKB_DATA']}, "
                f"sock.sk_receive_queue at {info.offsets['OFF_SK_RECEIVE_QUEUE']}; "
                f"{len(info.drop_reasons) - 1} drop reasons",
            )
        )
    except (BtfError, ProgramError) as e:
        findings.append(Finding("btf", False, str(e)))
        ok = False
    headers = Path(f"/lib/modules/{release}/build")
    findings.append(
        Finding(
            "kernel headers",
            True,
            f"{'present' if headers.exists() else 'absent'} (not needed: "
            "otel-netlat compiles against its own shim and BTF offsets)",
        )
    )
    if tracefs_needed(config):
        problem = (
            ensure_tracefs()
            if effective_caps() & (1 << CAP_SYS_ADMIN)
            else (
                None
                if tracefs_root()
                else "tracefs is not mounted (mount -t tracefs tracefs /sys/kernel/tracing)"
            )
        )
        if problem:
            problem += " (a custom stage hooks a tracepoint)"
        findings.append(Finding("tracefs", problem is None, problem or str(tracefs_root())))
        ok &= problem is None
    else:
        findings.append(Finding("tracefs", True, f"{tracefs_root() or 'not mounted'}; {TRACEFS_NOT_NEEDED}"))
    backends: Backends | None = None
    try:
        backends = _backends(config)
        findings.append(Finding("hooks", backends.forced_problem() is None, backends.summary()))
    except BtfError as e:
        findings.append(Finding("hooks", False, f"function hooks cannot be judged: {e}"))
    try:
        stages = list(stage_table(config).values())
    except StartupError as e:
        findings.append(Finding("custom stages", False, str(e)))
        stages, ok = list(ALL_STAGES), False
    for stage in stages:
        resolved, problem = _resolve(stage, backends)
        hooks = (resolved or stage).describe()
        selected = config.stages is None or stage.name in config.stages
        findings.append(
            Finding(
                f"stage {stage.name}",
                problem is None,
                (f"{hooks}: " + (problem or "attachable")) + ("" if selected else " (not selected)"),
            )
        )
        if problem and selected and (config.stages_explicit or stage.id >= N_STAGE_IDS):
            ok = False
    findings.append(Finding("list path", True, LIST_PATH_NOTE))
    problem = tracepoint_problem(DROP_HOOK.target)
    findings.append(Finding("stage drops", problem is None, f"{DROP_HOOK.target}: {problem or 'attachable'}"))
    if problem and config.stages_explicit and DROPS in (config.stages or ()):
        ok = False
    try:
        select_stages(config, backends)
        resolve_filters(config)
    except StartupError as e:
        findings.append(Finding("selection", False, str(e)))
        ok = False
    return findings, ok
