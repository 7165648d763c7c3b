"""What ``run`` will load here, and every finding behind that decision.

``make_plan(config, features)`` is pure: it judges one ``KernelFeatures`` (the machine,
probed once by ``otel_netlat.kernel.features``) against the configuration and returns the
stages to attach, resolved to their hooks, with one finding per check. ``check`` prints the
findings; ``run`` and ``watch`` (``plan_for_this_kernel``) stop at the first fatal one with
its one-line message. Nothing here loads a BPF program or looks at the system.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from otel_netlat.config import Config
from otel_netlat.kernel.backends import Backends, needs_functions
from otel_netlat.kernel.features import (
    CAP_BPF,
    CAP_PERFMON,
    CAP_SYS_ADMIN,
    KernelFeatures,
    cluster,
    ensure_tracefs,
    probe_kernel,
)
from otel_netlat.kernel.offsets import KernelInfo
from otel_netlat.kernel.tracepoints import hook_problem, stage_problem
from otel_netlat.program.build import SLOW_OBJECTS, ProgramSpec
from otel_netlat.stages.table import (
    ALL_STAGES,
    DROP_HOOK,
    DROPS,
    FREE_HOOK,
    N_STAGE_IDS,
    OPT_IN_STAGES,
    SOFTIRQ,
    SOFTIRQ_HOOKS,
    STAGES_BY_NAME,
    TRACEPOINT,
    Hook,
    Stage,
    custom_stage,
)

log = logging.getLogger(__name__)

#: What check says about tracefs when nothing needs it.
TRACEFS_NOT_NEEDED = "not needed: the built-in hooks are raw tracepoints, described by BTF"
#: Pod attribution asked for outside a cluster: not fatal (the same manifest runs anywhere).
POD_ATTRIBUTION_OFF = "off: not running in a Kubernetes cluster"
#: Selectable like stages, but no stage of a packet: their own maps and metrics.
EXTRAS = (DROPS, SOFTIRQ)
#: Attached only when named in --stages: softirq until its cost is measured and it is
#: exported, and the table's opt-in stages.
OPT_IN = (SOFTIRQ, *(s.name for s in OPT_IN_STAGES))


class StartupError(Exception):
    """The agent cannot start here; the message is one actionable line."""


@dataclass(frozen=True)
class Finding:
    """One line of ``check``'s report; ``error`` is the line ``run`` stops with, if it must."""

    name: str
    ok: bool
    detail: str
    error: str | None = None

    @property
    def fatal(self) -> bool:
        return self.error is not None


@dataclass(frozen=True)
class Plan:
    """What ``run`` will load (the program spec: stages resolved, in the order asked for), what
    was left out and why, and every finding behind it."""

    spec: ProgramSpec
    #: Offsets and drop reasons; None only when the ``btf`` finding is fatal.
    info: KernelInfo | None
    unavailable: dict[str, str]
    findings: tuple[Finding, ...]
    #: One line: the function-hook backend chosen and why (``check``, start-up log).
    hooks_summary: str = ""
    #: Pod attribution is on (asked for, and running inside a cluster).
    pod_attribution: bool = False

    @property
    def fatal(self) -> Finding | None:
        """The first finding that stops ``run``, or None."""
        return next((f for f in self.findings if f.fatal), None)


def make_plan(config: Config, features: KernelFeatures) -> Plan:
    """The stages to attach on a kernel with ``features``, and a finding for each check."""
    findings = _system_findings(config, features)
    backends = Backends(config.hooks, features)
    findings.append(_hooks_finding(config, features, backends))
    conflict = custom_stage_conflict(config)
    if conflict:
        findings.append(Finding("custom stages", False, conflict, conflict))
    chosen, extras, unavailable, stage_findings = _select(config, features, backends)
    findings += stage_findings
    filters, netns, ifindexes = _filters(config, features)
    pods, pods_finding = _pod_attribution(config, features.in_cluster, features.node_name)
    slow, slow_finding = _slow_thresholds(config, chosen)
    findings += [f for f in (filters, pods_finding, slow_finding) if f is not None]
    spec = ProgramSpec(
        stages=tuple(chosen),
        drops=DROPS in extras,
        softirq=SOFTIRQ in extras,
        cpu_labels=config.cpu_labels,
        bounds_ns=config.bounds_ns,
        slots_shift=config.start_slots.bit_length() - 1,
        filter_netns=netns,
        filter_ifindex=ifindexes,
        addr_labels=config.address_labels or pods,
        ipv4_prefix=32 if pods else config.ipv4_prefix,
        ipv6_prefix=128 if pods else config.ipv6_prefix,
        max_series=config.max_series,
        latency_sample=config.latency_sample,
        n_stage_ids=N_STAGE_IDS + len(config.custom_stages),
        slow_ns=slow,
        slow_rate=config.slow_rate,
    )
    return Plan(
        spec=spec,
        info=features.info,
        unavailable=unavailable,
        findings=tuple(findings),
        hooks_summary=backends.summary(),
        pod_attribution=pods,
    )


# -- the machine ------------------------------------------------------------------------------


def privilege_problem(caps: int) -> str | None:
    """Which capability is missing for BCC to compile, load and attach, or None."""
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


def _system_findings(config: Config, features: KernelFeatures) -> list[Finding]:
    """Privileges, kernel, BTF and its offsets, kernel headers, tracefs."""
    problem = privilege_problem(features.caps)
    findings = [
        Finding(
            "privileges", problem is None, problem or "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)", problem
        ),
        Finding("kernel", True, features.release),
    ]
    problem = features.btf_error or features.info_error
    info = features.info
    if problem or info is None:
        problem = problem or "BTF offsets were not read"
        findings.append(Finding("btf", False, problem, problem))
    else:
        offsets = info.offsets
        findings.append(
            Finding(
                "btf",
                True,
                f"{features.btf_path}; sk_buff.data at {offsets['OFF_SKB_DATA']}, "
                f"sock.sk_receive_queue at {offsets['OFF_SK_RECEIVE_QUEUE']}; "
                f"{len(info.drop_reasons) - 1} drop reasons",
            )
        )
    headers = "present" if features.headers else "absent"
    not_needed = "not needed: otel-netlat compiles against its own shim and BTF offsets"
    findings.append(Finding("kernel headers", True, f"{headers} ({not_needed})"))
    findings.append(_tracefs_finding(config, features))
    return findings


def tracefs_needed(config: Config) -> bool:
    """Whether this configuration reads tracefs: only a user-defined stage on a tracepoint does
    (it names a field of the classic record, whose offset is in the tracepoint's format file).
    The built-in hooks attach as raw tracepoints by name; kprobes go through the kprobe PMU."""
    return any(h.attach_type == TRACEPOINT for h in candidate_hooks(config))


def _tracefs_finding(config: Config, features: KernelFeatures) -> Finding:
    if not tracefs_needed(config):
        return Finding("tracefs", True, f"{features.tracefs or 'not mounted'}; {TRACEFS_NOT_NEEDED}")
    problem = features.tracefs_error
    if problem:
        problem += " (a custom stage hooks a tracepoint)"
    return Finding("tracefs", problem is None, problem or str(features.tracefs), problem)


def _hooks_finding(config: Config, features: KernelFeatures, backends: Backends) -> Finding:
    """The function-hook backends; ``--hooks fentry|kprobe`` that cannot work here is fatal."""
    if features.btf_error:
        return Finding("hooks", False, f"function hooks cannot be judged: {features.btf_error}")
    forced = backends.forced_problem()
    error = f"--hooks {config.hooks} is not possible on this kernel: {forced}" if forced else None
    return Finding("hooks", forced is None, backends.summary(), error)


# -- the stages -------------------------------------------------------------------------------


def stage_table(config: Config) -> dict[str, Stage]:
    """Built-in stages, then the config's custom stages (ids after the built-in ones)."""
    table = dict(STAGES_BY_NAME)
    for i, c in enumerate(config.custom_stages):
        table[c.name] = custom_stage(c.name, c.direction, c.start, c.end, N_STAGE_IDS + i)
    return table


def custom_stage_conflict(config: Config) -> str | None:
    """A custom tracepoint hook gets its own generated probe, so it may not be a tracepoint the
    built-in probes already use (one BPF program cannot define that probe twice)."""
    builtin = {h.target for s in ALL_STAGES for h in s.hooks if h.kind == TRACEPOINT}
    builtin |= {DROP_HOOK.target, FREE_HOOK.target}
    for c in config.custom_stages:
        for h in (c.start, c.end):
            if h.kind == TRACEPOINT and h.target in builtin:
                return (
                    f"custom stage {c.name}: tracepoint {h.target} is already used by otel-netlat's "
                    "built-in stages; hook another tracepoint or a function"
                )
    return None


def candidate_hooks(config: Config) -> tuple[Hook, ...]:
    """Every hook a stage of this configuration may attach, for ``probe_kernel``: each stage's,
    its function fallback's, its list-path counters', and drops'."""
    hooks: list[Hook] = []
    for stage in stage_table(config).values():
        for variant in (stage, stage.fallback):
            if variant is not None:
                hooks += [*variant.hooks, *variant.list_path_hooks]
    hooks += [DROP_HOOK, *SOFTIRQ_HOOKS]
    return tuple(dict.fromkeys(hooks))


def resolve_stage(
    stage: Stage, features: KernelFeatures, backends: Backends
) -> tuple[Stage | None, str | None]:
    """A stage ready to load (function hooks bound to a backend and symbol), or why not.

    A stage whose tracepoints this kernel lacks uses its function-hook fallback if it has one;
    list-path counters the kernel lacks are left out (the gap is then not counted).
    """
    problem = stage_problem(stage, features)
    if problem:
        if stage.fallback is None or features.btf_error:
            return None, problem
        resolved, why = resolve_stage(stage.fallback, features, backends)
        return (resolved, None) if resolved else (None, f"{problem}; function fallback: {why}")
    if needs_functions(stage):
        if features.btf_error:
            return None, "function hooks cannot be judged without BTF"
        resolved, why = backends.resolve_stage(stage)
        if resolved is None:
            return None, why
        stage = resolved
    if any(hook_problem(h, features) for h in stage.list_path_hooks):
        stage = replace(stage, list_path_hooks=())
    return stage, None


@dataclass(frozen=True)
class _Verdict:
    """Whether one selectable name (a stage, or drops) can attach here."""

    name: str
    hooks: str
    resolved: Stage | None
    problem: str | None
    user_defined: bool = False


def _verdicts(config: Config, features: KernelFeatures, backends: Backends) -> dict[str, _Verdict]:
    """Every stage of the table (custom ones too) and drops, judged, in table order."""
    out: dict[str, _Verdict] = {}
    for stage in stage_table(config).values():
        resolved, problem = resolve_stage(stage, features, backends)
        hooks = (resolved or stage).describe()
        out[stage.name] = _Verdict(stage.name, hooks, resolved, problem, stage.user_defined)
    out[DROPS] = _Verdict(DROPS, DROP_HOOK.target, None, hook_problem(DROP_HOOK, features))
    softirq = next((p for h in SOFTIRQ_HOOKS if (p := hook_problem(h, features))), None)
    out[SOFTIRQ] = _Verdict(SOFTIRQ, " | ".join(h.target for h in SOFTIRQ_HOOKS), None, softirq)
    return out


def _availability(config: Config, v: _Verdict) -> Finding:
    """The fatal rule, the one place it is written: a stage that cannot attach stops ``run``
    when it was asked for by name (``--stages``) or declared by the user (a custom stage);
    one merely defaulted is left out and reported."""
    selected = v.name in config.stages if config.stages is not None else v.name not in OPT_IN
    detail = f"{v.hooks}: {v.problem or 'attachable'}" + ("" if selected else " (not selected)")
    error = None
    if v.problem and selected and (config.stages_explicit or v.user_defined):
        what = "custom stage" if v.user_defined else "stage"
        error = f"{what} {v.name} cannot attach on this kernel: {v.problem}"
    return Finding(f"stage {v.name}", v.problem is None, detail, error)


def _select(
    config: Config, features: KernelFeatures, backends: Backends
) -> tuple[list[Stage], set[str], dict[str, str], list[Finding]]:
    """The stages to load in the order asked for, the other selectable names on (drops,
    softirq), the stages left out (and why), and the stage findings (table order; drops and
    softirq after the list-path note)."""
    verdicts = _verdicts(config, features, backends)
    stages = [v for name, v in verdicts.items() if name not in EXTRAS]
    findings = [_availability(config, v) for v in stages]
    note = list_path_note([s for s in ALL_STAGES if s.list_path])
    if note:  # what the table's stages cannot see, whether or not they attach here
        findings.append(Finding("list path", True, note))
    findings += [_availability(config, verdicts[name]) for name in EXTRAS]
    default = [n for n in verdicts if n not in OPT_IN]
    wanted = list(config.stages) if config.stages is not None else default
    unavailable = {n: p for n in wanted if (p := verdicts[n].problem)}
    chosen = [r for n in wanted if n not in EXTRAS and (r := verdicts[n].resolved) is not None]
    extras = {n for n in EXTRAS if n in wanted and verdicts[n].problem is None}
    chosen, handoff = _handoffs(config, chosen, unavailable)
    findings += handoff
    if not chosen and not extras and not any(f.fatal for f in findings):  # else: said already
        reasons = "; ".join(f"{k}: {v}" for k, v in unavailable.items())
        message = f"no stage can attach on this kernel ({reasons})"
        findings.append(Finding("selection", False, message, message))
    return chosen, extras, unavailable, findings


def _handoffs(
    config: Config, chosen: list[Stage], unavailable: dict[str, str]
) -> tuple[list[Stage], list[Finding]]:
    """A stage that ends another's start (forward ends stack's) runs only beside it.

    Without it, the stage is left out: unavailable with the other's reason when that one
    cannot attach here, an error when the user asked for the one without the other.
    """
    names = {s.name for s in chosen}
    kept, findings = [], []
    for s in chosen:
        source = s.starts_from
        if not source or source in names:
            kept.append(s)
            continue
        if source in unavailable:
            why = f"needs the {source} stage's start, unavailable here: {unavailable[source]}"
            unavailable[s.name] = why
            explicit = config.stages is not None and s.name in config.stages
            findings.append(Finding(s.name, False, why, f"stage {s.name}: {why}" if explicit else None))
            continue
        message = (
            f"stage {s.name} measures from the {source} stage's start: select {source} too "
            f"(--stages ...,{source},{s.name})"
        )
        findings.append(Finding(s.name, False, message, message))
    return kept, findings


def list_path_note(stages: list[Stage]) -> str | None:
    """What packets the stages bound to one receive path cannot see (GRO's list path), or None."""
    if not stages:
        return None
    names = " and ".join(s.name for s in stages)
    return (
        f"not covered: packets received in batches (GRO; {'/'.join(s.list_path or '' for s in stages)}) "
        f"never pass {'/'.join(s.start.target for s in stages)}, so the {names} "
        f"stage{'s' if len(stages) > 1 else ''} see{'' if len(stages) > 1 else 's'} only the "
        "single-packet path; those packets are counted in "
        'netlat_agent_skipped_total{netlat_skip_reason="list_path"}'
    )


# -- slow records ---------------------------------------------------------------------------


def _slow_thresholds(
    config: Config, chosen: list[Stage]
) -> tuple[tuple[tuple[int, int], ...], Finding | None]:
    """(stage id, threshold ns) of each running stage that writes slow records, and a finding
    when slow records are asked for. A stage named in ``slow.stages`` that does not run is
    fatal (a typo would silently record nothing)."""
    overrides = dict(config.slow_stages)
    if config.slow_threshold is None and not overrides:
        return (), None
    names = {s.name for s in chosen}
    unknown = sorted(set(overrides) - names)
    if unknown:
        error = (
            f"slow.stages names {', '.join(unknown)}, which {'is' if len(unknown) == 1 else 'are'} not "
            f"among the running stages ({', '.join(sorted(names))})"
        )
        return (), Finding("slow records", False, error, error)
    out = []
    for stage in chosen:
        seconds = overrides.get(stage.name, config.slow_threshold)
        if seconds is not None and stage.start.obj in SLOW_OBJECTS:
            out.append((stage.id, round(seconds * 1e9)))
    by_id = {s.id: s.name for s in chosen}
    shown = ", ".join(f"{by_id[i]} > {ns / 1e9:g}s" for i, ns in out)
    return tuple(out), Finding("slow records", True, f"{shown}; at most {config.slow_rate}/s per CPU")


# -- filters and pods -------------------------------------------------------------------------


def _filters(
    config: Config, features: KernelFeatures
) -> tuple[Finding | None, tuple[int, ...], tuple[int, ...]]:
    """The namespace inodes and interface indexes the program filters on (a finding only when
    filters are set); a name not found is fatal."""
    if not config.netns and not config.interfaces:
        return None, (), ()
    inodes: set[int] = set()
    indexes: set[int] = set()
    shown: list[str] = []
    for name in config.netns:
        inode = features.netns.get(name, f"network namespace {name!r} was not looked up")
        if isinstance(inode, str):
            return Finding("filters", False, inode, inode), (), ()
        inodes.add(inode)
        shown.append(f"netns {name} (inode {inode})")
    for name in config.interfaces:
        found = features.interfaces.get(name, f"interface {name!r} was not looked up")
        if isinstance(found, str):
            return Finding("filters", False, found, found), (), ()
        indexes.update(found)
        shown.append(f"interface {name} (index {', '.join(map(str, found))})")
    return Finding("filters", True, "; ".join(shown)), tuple(sorted(inodes)), tuple(sorted(indexes))


def _pod_attribution(config: Config, in_cluster: bool, node_name: str | None) -> tuple[bool, Finding | None]:
    """Pod attribution needs a cluster and full-length address keys; outside a cluster it is off.

    The kernel keys series by exact local address (/32, /128) so an address can name a pod.
    """
    if not config.pod_attribution:
        return False, None
    name = "pod attribution"
    if not in_cluster:
        return False, Finding(name, True, POD_ATTRIBUTION_OFF)
    if config.address_labels and (config.ipv4_prefix, config.ipv6_prefix) != (32, 128):
        error = (
            "--pod-attribution with --address-labels needs full-length prefixes "
            "(--ipv4-prefix 32 --ipv6-prefix 128): a network prefix cannot name a pod"
        )
        return False, Finding(name, False, error, error)
    if not node_name:
        error = "--pod-attribution needs NODE_NAME (the downward API's spec.nodeName)"
        return False, Finding(name, False, error, error)
    return True, Finding(name, True, f"on: the pods of node {node_name}")


def pod_attribution_wanted(config: Config) -> bool:
    """Pod attribution for ``config`` in this process's environment; StartupError if it cannot be."""
    on, finding = _pod_attribution(config, *cluster())
    if finding is not None and finding.error:
        raise StartupError(finding.error)
    if config.pod_attribution and not on:
        log.warning("pod attribution is %s", POD_ATTRIBUTION_OFF)
    return on


# -- on this machine --------------------------------------------------------------------------


def probe_for(config: Config) -> KernelFeatures:
    """Probe this machine for everything ``config`` may use (the one impure step)."""
    return probe_kernel(candidate_hooks(config), netns=config.netns, interfaces=config.interfaces)


def plan_for_this_kernel(config: Config) -> Plan:
    """``make_plan`` on this machine, as ``run`` and ``watch`` use it: StartupError with the
    first fatal finding's line; otherwise the choices are logged and the plan returned."""
    plan = make_plan(config, probe_for(config))
    fatal = plan.fatal
    if fatal is not None:
        raise StartupError(fatal.error)
    log.info("hooks: %s", plan.hooks_summary)
    for stage in plan.spec.stages:
        if any(h.kind != TRACEPOINT for h in stage.hooks):
            log.info("stage %s: %s", stage.name, stage.describe())
    note = list_path_note([s for s in plan.spec.stages if s.list_path])
    if note:
        log.info("list path: %s", note)
    if config.pod_attribution and not plan.pod_attribution:  # asked for, not fatal: not in a cluster
        log.warning("pod attribution is %s", POD_ATTRIBUTION_OFF)
    return plan


__all__ = [
    "Finding",
    "Plan",
    "StartupError",
    "candidate_hooks",
    "ensure_tracefs",  # re-exported for tests/support/kernel.py; lives in otel_netlat.kernel.features
    "make_plan",
    "plan_for_this_kernel",
    "pod_attribution_wanted",
    "probe_for",
    "resolve_stage",
    "stage_table",
]
