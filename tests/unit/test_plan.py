"""The plan's decisions, on made-up kernels: no kernel, no root, nothing probed.

``make_plan(config, features)`` is pure, so every rule ``run`` and ``check`` share (what is
fatal, what falls back, what is left out and reported) is exercised here by building the
``KernelFeatures`` of the kernel in question.
"""

from __future__ import annotations

import builtins
import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from otel_netlat.commands.check import report
from otel_netlat.config import Config, CustomHook, CustomStage
from otel_netlat.kernel.features import CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN, KernelFeatures
from otel_netlat.kernel.offsets import KernelInfo
from otel_netlat.program.plan import Finding, Plan, candidate_hooks, make_plan, tracefs_needed
from otel_netlat.stages.table import (
    ALL_STAGES,
    DEFAULT_STAGES,
    DROP_HOOK,
    FUNCTION_STAGES,
    LIST_HOOKS,
    OPT_IN_STAGES,
    RAW_ARGS,
    RECVMSG_ARGS,
    SOCKET_FALLBACK,
    STACK_FALLBACK,
)

NO_FENTRY = "fentry: BPF trampolines not available (a probe fentry program on ip_rcv failed: x)"
NO_KPROBES = "kprobes: not supported by this kernel (CONFIG_KPROBES unset)"
BPF_CAPS = (1 << CAP_BPF) | (1 << CAP_PERFMON)
INFO = KernelInfo(
    offsets={"OFF_SKB_DATA": 200, "OFF_SK_RECEIVE_QUEUE": 168},
    drop_reasons={0: "NOT_SPECIFIED", 1: "NO_SOCKET", 2: "UNKNOWN"},
    max_drop_reason=2,
    kernel_types_c="",
)
#: Every function any stage or fallback hooks, under its own name in kallsyms and BTF.
FUNCTIONS = {
    h.target for s in (*FUNCTION_STAGES, STACK_FALLBACK, SOCKET_FALLBACK) for h in s.hooks if h.is_function
}
TBF = CustomStage(
    "tbf",
    "transmit",
    CustomHook("tracepoint", "qdisc:qdisc_enqueue", skb_field="skbaddr"),
    CustomHook("tracepoint", "qdisc:qdisc_dequeue", skb_field="skbaddr"),
)
UDP4 = CustomStage(
    "udp4_queue",
    "receive",
    CustomHook("function", "udp_rcv", skb_arg=0),
    CustomHook("function", "__udp_enqueue_schedule_skb", skb_arg=1),
)


def kernel(**changes) -> KernelFeatures:
    """Like this machine: root, BTF, tracefs, every tracepoint; neither fentry nor kprobes."""
    base = KernelFeatures(
        caps=BPF_CAPS | (1 << CAP_SYS_ADMIN),
        release="6.18.0-test",
        info=INFO,
        tracefs="/sys/kernel/tracing",
        raw_tracepoints=dict(RAW_ARGS),
        tracepoint_fields={"qdisc:qdisc_enqueue": {"skbaddr": 8}, "qdisc:qdisc_dequeue": {"skbaddr": 8}},
        fentry_error=NO_FENTRY,
        kprobe_error=NO_KPROBES,
    )
    return replace(base, **changes)


def with_fentry(**changes) -> KernelFeatures:
    """A kernel whose fentry works and whose BTF and kallsyms know every hooked function."""
    functions = FUNCTIONS | {"udp_rcv", "__udp_enqueue_schedule_skb"}
    return kernel(
        fentry_error=None,
        symbols={f: (f,) for f in functions},
        btf_functions=frozenset(functions),
        function_args={
            "inet_recvmsg": RECVMSG_ARGS,
            "inet6_recvmsg": RECVMSG_ARGS,
            "inet_csk_accept": ("struct sock *", "struct proto_accept_arg *"),
        },
        **changes,
    )


def without(*tracepoints: str, **changes) -> KernelFeatures:
    """``kernel()`` lacking these raw tracepoints."""
    return kernel(raw_tracepoints={**RAW_ARGS, **dict.fromkeys(tracepoints)}, **changes)


def finding(plan: Plan, name: str) -> Finding:
    (found,) = [f for f in plan.findings if f.name == name]
    return found


def names(plan: Plan) -> list[str]:
    return [s.name for s in plan.spec.stages]


# -- the default ----------------------------------------------------------------------------------


def test_default_config_on_a_tracepoint_kernel():
    plan = make_plan(Config(), kernel())
    assert plan.fatal is None
    assert names(plan) == [s.name for s in DEFAULT_STAGES] and plan.spec.drops
    assert set(plan.unavailable) == {s.name for s in FUNCTION_STAGES}
    assert plan.unavailable["ip_rcv"] == f"{NO_FENTRY}; {NO_KPROBES}"
    assert plan.info is INFO
    assert plan.hooks_summary == f"--hooks auto: function hooks use none; {NO_FENTRY}; {NO_KPROBES}"


def test_findings_are_checks_lines_in_order():
    plan = make_plan(Config(), kernel())
    fixed = ["privileges", "kernel", "btf", "kernel headers", "tracefs", "hooks"]
    stage_lines = [f"stage {s.name}" for s in ALL_STAGES]
    assert [f.name for f in plan.findings] == [
        *fixed,
        *stage_lines,
        "list path",
        "stage drops",
        "stage softirq",
    ]
    assert finding(plan, "btf").detail == (
        "/sys/kernel/btf/vmlinux; sk_buff.data at 200, sock.sk_receive_queue at 168; 2 drop reasons"
    )
    assert finding(plan, "kernel headers").detail.startswith("absent (not needed")
    assert make_plan(Config(), kernel(headers=True)).findings[3].detail.startswith("present")
    assert finding(plan, "tracefs").detail == (
        "/sys/kernel/tracing; not needed: the built-in hooks are raw tracepoints, described by BTF"
    )
    assert finding(plan, "stage backlog").detail == (
        "raw_tracepoint net:netif_rx | net:napi_gro_receive_entry | net:netif_receive_skb_entry | "
        "net:netif_receive_skb_list_entry -> raw_tracepoint net:netif_receive_skb | "
        "net:napi_gro_receive_exit: attachable"
    )
    assert finding(plan, "stage drops").detail == "skb:kfree_skb: attachable"


def test_program_shape_follows_the_config():
    config = Config(start_slots=1 << 20, bounds_ns=(1000, 5000), max_series=7)
    spec = make_plan(config, kernel()).spec
    assert (spec.slots_shift, spec.bounds_ns, spec.max_series) == (20, (1000, 5000), 7)
    assert (spec.addr_labels, spec.ipv4_prefix, spec.ipv6_prefix) == (False, 24, 64)
    assert spec.n_stage_ids == len(ALL_STAGES)
    assert make_plan(Config(custom_stages=(TBF,)), kernel()).spec.n_stage_ids == len(ALL_STAGES) + 1


# -- available, unavailable, fatal ------------------------------------------------------------------


def test_a_defaulted_stage_that_cannot_attach_is_reported_not_fatal():
    plan = make_plan(Config(), without("net:net_dev_queue"))
    qdisc = finding(plan, "stage qdisc")
    assert not qdisc.ok and not qdisc.fatal
    assert qdisc.detail.endswith(": tracepoint net:net_dev_queue does not exist on this kernel")
    assert "qdisc" not in names(plan)
    assert plan.unavailable["qdisc"] == "tracepoint net:net_dev_queue does not exist on this kernel"
    assert plan.fatal is None


def test_a_named_stage_that_cannot_attach_is_fatal():
    plan = make_plan(Config(stages=("backlog", "qdisc")), without("net:net_dev_queue"))
    assert plan.fatal == finding(plan, "stage qdisc")
    assert plan.fatal.error == (
        "stage qdisc cannot attach on this kernel: tracepoint net:net_dev_queue does not exist on this kernel"
    )
    # the stages not named are listed, not fatal, whatever their state
    ip_rcv = finding(plan, "stage ip_rcv")
    assert not ip_rcv.ok and not ip_rcv.fatal and ip_rcv.detail.endswith(" (not selected)")
    assert finding(plan, "stage stack").detail.endswith(": attachable (not selected)")
    assert "selection" not in [f.name for f in plan.findings]  # the stage line says it already


def test_named_stages_load_in_the_order_named():
    plan = make_plan(Config(stages=("qdisc", "backlog")), kernel())
    assert names(plan) == ["qdisc", "backlog"] and not plan.spec.drops


def test_no_stage_attachable_is_fatal():
    kernel_without_any = without(*RAW_ARGS)
    plan = make_plan(Config(), kernel_without_any)
    selection = finding(plan, "selection")
    assert plan.fatal == selection
    assert selection.error.startswith("no stage can attach on this kernel (backlog: tracepoint net:netif_rx ")
    assert "drops: tracepoint skb:kfree_skb does not exist" in selection.error


def test_drops_alone_is_a_selection():
    plan = make_plan(Config(stages=("drops",)), kernel())
    assert plan.fatal is None and names(plan) == [] and plan.spec.drops


def test_drops_needs_the_reason_argument_of_kfree_skb():
    """Before Linux 5.17 kfree_skb has no drop reason: the C reads it as the third argument."""
    old = kernel(raw_tracepoints={**RAW_ARGS, DROP_HOOK.target: ("struct sk_buff *", "void *")})
    why = (
        "tracepoint skb:kfree_skb takes (struct sk_buff *, void *) on this kernel; "
        "otel-netlat reads (struct sk_buff *, void *, enum skb_drop_reason)"
    )
    plan = make_plan(Config(), old)
    assert not plan.spec.drops and plan.unavailable["drops"] == why and plan.fatal is None
    assert finding(plan, "stage drops").detail == f"skb:kfree_skb: {why}"
    named = make_plan(Config(stages=("backlog", "drops")), old)
    assert named.fatal is not None and named.fatal.error == f"stage drops cannot attach on this kernel: {why}"


# -- function hooks ----------------------------------------------------------------------------------


def test_function_stages_attach_where_fentry_works():
    plan = make_plan(Config(), with_fentry())
    assert names(plan) == [s.name for s in ALL_STAGES if s not in OPT_IN_STAGES] and not plan.unavailable
    ip_rcv = plan.spec.stages[names(plan).index("ip_rcv")]
    assert {h.attach_type for h in ip_rcv.hooks} == {"fentry"}
    assert ip_rcv.list_path_hooks == LIST_HOOKS  # the list path is counted for it
    assert "function hooks use fentry" in plan.hooks_summary


def test_list_path_counters_left_out_where_the_kernel_lacks_them():
    plan = make_plan(Config(), with_fentry(raw_tracepoints={**RAW_ARGS, LIST_HOOKS[0].target: None}))
    assert plan.fatal is None
    assert all(s.list_path_hooks == () for s in plan.spec.stages)


def test_the_list_path_note_names_the_stages_it_concerns():
    note = finding(make_plan(Config(), kernel()), "list path").detail
    assert note.startswith("not covered: packets received in batches (GRO; ip_list_rcv/ipv6_list_rcv)")
    assert "never pass ip_rcv/ipv6_rcv, so the ip_rcv and ipv6_rcv stages see only" in note


def test_tracepoint_stages_fall_back_to_function_hooks():
    """Linux < 6.6 has no sock:* tracepoints: stack and socket run on their function fallbacks."""
    old = ("sock:sk_data_ready", "sock:sock_recv_length")
    plan = make_plan(Config(), with_fentry(raw_tracepoints={**RAW_ARGS, **dict.fromkeys(old)}))
    stages = {s.name: s for s in plan.spec.stages}
    assert stages["stack"].end.attach_name == "sock_def_readable"
    assert [h.attach_type for h in stages["socket"].hooks] == ["fentry", "fexit", "fexit", "raw_tracepoint"]
    assert finding(plan, "stage socket").detail.startswith("fentry sock_def_readable -> fexit inet_recvmsg")


def test_no_fallback_without_function_hooks_says_both_reasons():
    plan = make_plan(Config(), without("sock:sk_data_ready"))
    assert plan.unavailable["stack"] == (
        "tracepoint sock:sk_data_ready does not exist on this kernel; "
        f"function fallback: {NO_FENTRY}; {NO_KPROBES}"
    )
    assert plan.fatal is None


def test_forced_backend_this_kernel_lacks_is_fatal():
    plan = make_plan(Config(hooks="kprobe"), kernel())
    assert plan.fatal == finding(plan, "hooks")
    assert plan.fatal.error == f"--hooks kprobe is not possible on this kernel: {NO_KPROBES}"
    assert make_plan(Config(hooks="fentry"), with_fentry()).fatal is None


def test_tracepoint_mode_leaves_function_stages_out():
    plan = make_plan(Config(hooks="tracepoint"), with_fentry())
    assert plan.fatal is None and names(plan) == [s.name for s in DEFAULT_STAGES]
    assert (
        plan.unavailable["ip_rcv"] == "--hooks tracepoint: this stage needs function hooks (fentry or kprobe)"
    )


# -- the machine --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caps,missing",
    [(0, "CAP_BPF and CAP_PERFMON"), (1 << CAP_BPF, "CAP_PERFMON"), (1 << CAP_PERFMON, "CAP_BPF")],
)
def test_missing_privileges_stop_run_first(caps, missing):
    plan = make_plan(Config(), kernel(caps=caps, btf_error="also broken"))
    assert plan.fatal == plan.findings[0]
    assert plan.fatal.error.startswith(f"missing capability {missing}: BCC needs CAP_BPF and CAP_PERFMON")


@pytest.mark.parametrize("caps", [BPF_CAPS, 1 << CAP_SYS_ADMIN])
def test_enough_privileges(caps):
    assert finding(make_plan(Config(), kernel(caps=caps)), "privileges").ok


def test_unreadable_btf_is_fatal_and_explains_the_rest():
    error = (
        "kernel BTF not found at /sys/kernel/btf/vmlinux: this kernel was built without CONFIG_DEBUG_INFO_BTF"
    )
    plan = make_plan(Config(), kernel(btf_error=error, info=None, raw_tracepoints={}))
    assert plan.fatal == finding(plan, "btf") and plan.fatal.error == error
    assert finding(plan, "hooks").detail == f"function hooks cannot be judged: {error}"
    assert finding(plan, "stage backlog").detail.endswith(f": {error}")
    assert plan.unavailable["ip_rcv"] == "function hooks cannot be judged without BTF"


def test_offsets_the_c_cannot_read_are_fatal():
    error = "struct sk_buff.protocol is 4 bytes on this kernel, otel-netlat reads 2"
    plan = make_plan(Config(), kernel(info=None, info_error=error))
    assert plan.fatal == finding(plan, "btf") and plan.fatal.error == error


# -- custom stages and tracefs ---------------------------------------------------------------------------


def test_custom_tracepoint_stage_needs_tracefs():
    assert not tracefs_needed(Config()) and not tracefs_needed(Config(custom_stages=(UDP4,)))
    assert tracefs_needed(Config(custom_stages=(TBF,)))
    plan = make_plan(Config(custom_stages=(TBF,)), kernel())
    assert plan.fatal is None and finding(plan, "tracefs").detail == "/sys/kernel/tracing"
    tbf = plan.spec.stages[-1]
    assert (tbf.name, tbf.id, tbf.user_defined) == ("tbf", len(ALL_STAGES), True)
    why = "tracefs is not mounted and could not be mounted at /sys/kernel/tracing: mount it"
    plan = make_plan(Config(custom_stages=(TBF,)), kernel(tracefs=None, tracefs_error=why))
    assert plan.fatal == finding(plan, "tracefs")
    assert plan.fatal.error == f"{why} (a custom stage hooks a tracepoint)"


@pytest.mark.parametrize(
    "fields,why",
    [
        ({"skbaddr": 8}, None),
        ({}, "tracepoint qdisc:qdisc_enqueue lacks field(s) skbaddr on this kernel"),
        ({"skbaddr": 4}, "tracepoint qdisc:qdisc_enqueue: field skbaddr is not a pointer (not 8 bytes)"),
        ("tracepoint qdisc:qdisc_enqueue does not exist on this kernel", None),
    ],
)
def test_a_custom_stage_that_cannot_attach_is_fatal_even_when_defaulted(fields, why):
    why = why or (fields if isinstance(fields, str) else None)
    features = kernel(
        tracepoint_fields={"qdisc:qdisc_enqueue": fields, "qdisc:qdisc_dequeue": {"skbaddr": 8}}
    )
    plan = make_plan(Config(custom_stages=(TBF,)), features)
    if why is None:
        assert plan.fatal is None and "tbf" in names(plan)
        return
    assert plan.fatal == finding(plan, "stage tbf")
    assert plan.fatal.error == f"custom stage tbf cannot attach on this kernel: {why}"


def test_a_custom_stage_not_selected_is_only_listed():
    plan = make_plan(Config(stages=("backlog",), custom_stages=(UDP4,)), kernel())
    assert plan.fatal is None
    assert finding(plan, "stage udp4_queue").detail.endswith(" (not selected)")


def test_custom_function_stage_attaches_with_a_backend():
    plan = make_plan(Config(stages=("udp4_queue",), custom_stages=(UDP4,)), with_fentry())
    assert plan.fatal is None and names(plan) == ["udp4_queue"]
    assert [h.attach_type for h in plan.spec.stages[0].hooks] == ["fentry", "fentry"]


def test_a_custom_stage_on_a_builtin_tracepoint_is_fatal():
    clash = CustomStage(
        "mine", "receive", CustomHook("tracepoint", "net:netif_rx", skb_field="skbaddr"), TBF.end
    )
    plan = make_plan(Config(custom_stages=(clash,)), kernel())
    assert plan.fatal == finding(plan, "custom stages")
    assert plan.fatal.error == (
        "custom stage mine: tracepoint net:netif_rx is already used by otel-netlat's built-in stages; "
        "hook another tracepoint or a function"
    )


def test_candidate_hooks_cover_fallbacks_list_path_drops_and_custom_stages():
    hooks = candidate_hooks(Config(custom_stages=(TBF, UDP4)))
    targets = {h.target for h in hooks}
    assert {h.target for s in ALL_STAGES for h in s.hooks} <= targets
    assert {"sock_def_readable", "inet_recvmsg", "inet6_recvmsg"} <= targets  # fallbacks
    assert {h.target for h in LIST_HOOKS} | {DROP_HOOK.target} <= targets
    assert {"qdisc:qdisc_enqueue", "udp_rcv", "__udp_enqueue_schedule_skb"} <= targets
    assert len(hooks) == len(set(hooks))


# -- filters and pods --------------------------------------------------------------------------------


def test_filters_resolve_to_sorted_inodes_and_indexes():
    features = kernel(netns={"blue": 4026532900, "/proc/1/ns/net": 4026531840}, interfaces={"eth0": (3, 2)})
    plan = make_plan(Config(netns=("blue", "/proc/1/ns/net"), interfaces=("eth0",)), features)
    assert plan.spec.filter_netns == (4026531840, 4026532900)
    assert plan.spec.filter_ifindex == (2, 3)
    assert finding(plan, "filters").detail == (
        "netns blue (inode 4026532900); netns /proc/1/ns/net (inode 4026531840); interface eth0 (index 3, 2)"
    )
    assert "filters" not in [f.name for f in make_plan(Config(), kernel()).findings]


def test_a_filter_naming_nothing_is_fatal():
    missing = "network namespace 'nope' not found (/run/netns/nope: No such file or directory)"
    plan = make_plan(Config(netns=("nope",)), kernel(netns={"nope": missing}))
    assert plan.fatal == finding(plan, "filters") and plan.fatal.error == missing
    missing = "interface 'eth9' not found in this network namespace"
    plan = make_plan(Config(interfaces=("eth9",)), kernel(interfaces={"eth9": missing}))
    assert plan.fatal is not None and plan.fatal.error == missing


def test_pod_attribution_is_off_outside_a_cluster():
    plan = make_plan(Config(pod_attribution=True), kernel())
    assert plan.fatal is None and not plan.pod_attribution and not plan.spec.addr_labels
    assert finding(plan, "pod attribution").detail == "off: not running in a Kubernetes cluster"
    assert "pod attribution" not in [f.name for f in make_plan(Config(), kernel()).findings]


def test_pod_attribution_in_a_cluster():
    plan = make_plan(Config(pod_attribution=True), kernel(in_cluster=True, node_name="n1"))
    assert plan.fatal is None and plan.pod_attribution
    assert (plan.spec.addr_labels, plan.spec.ipv4_prefix, plan.spec.ipv6_prefix) == (True, 32, 128)
    no_node = make_plan(Config(pod_attribution=True), kernel(in_cluster=True))
    assert no_node.fatal is not None and "needs NODE_NAME" in no_node.fatal.error
    labels = Config(pod_attribution=True, address_labels=True)
    prefixes = make_plan(labels, kernel(in_cluster=True, node_name="n1"))
    assert prefixes.fatal is not None and "needs full-length prefixes" in prefixes.fatal.error
    full = replace(labels, ipv4_prefix=32, ipv6_prefix=128)
    assert make_plan(full, kernel(in_cluster=True, node_name="n1")).pod_attribution


# -- what check prints, and purity ----------------------------------------------------------------------


def test_check_report_ends_with_whether_run_would_start():
    lines = report(make_plan(Config(), kernel()).findings)
    assert lines[0].split(None, 2) == ["ok", "privileges", "CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN)"]
    assert lines[-1] == "run would start"
    lines = report(make_plan(Config(hooks="kprobe"), kernel()).findings)
    assert any(line.startswith("NO  hooks ") for line in lines)
    assert lines[-1] == f"run would NOT start: --hooks kprobe is not possible on this kernel: {NO_KPROBES}"


def test_the_plan_touches_nothing(monkeypatch):
    """make_plan only reads its arguments: no file, process, or environment is consulted."""
    looked: list[str] = []

    def refuse(name: str):
        def call(*_, **__):
            looked.append(name)
            raise AssertionError(f"make_plan called {name}")

        return call

    config = Config(custom_stages=(TBF, UDP4), netns=("blue",), pod_attribution=True)
    features = with_fentry(netns={"blue": 1}, in_cluster=True, node_name="n1")
    with monkeypatch.context() as m:
        for owner, name in [
            (builtins, "open"),
            (Path, "read_text"),
            (Path, "exists"),
            (Path, "is_dir"),
            (os, "stat"),
            (subprocess, "run"),
            (os.environ, "get"),
        ]:
            m.setattr(owner, name, refuse(name))
        plan = make_plan(config, features)
    assert looked == []
    assert plan.fatal is None and plan.pod_attribution
