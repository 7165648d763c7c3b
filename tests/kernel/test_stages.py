"""The stage table's shape, and its availability checks judged from the running kernel's BTF."""

from __future__ import annotations

from dataclasses import replace

import pytest

from otel_netlat.config import Config, CustomHook, CustomStage
from otel_netlat.kernel import features as features_mod
from otel_netlat.kernel.features import probe_kernel
from otel_netlat.kernel.tracepoints import hook_problem, stage_problem
from otel_netlat.program.plan import stage_table
from otel_netlat.stages import table as stages
from otel_netlat.stages.table import ALL_STAGES, BACKLOG, RAW_ARGS, STAGES_BY_NAME, check_stage_ids, tp


@pytest.mark.parametrize("target", ["net:netif_rx", "net:netif_receive_skb", "skb:kfree_skb"])
def test_builtin_raw_tracepoints_attachable_here(target):
    hook = tp(target)
    assert hook_problem(hook, probe_kernel([hook])) is None


def test_a_prototype_that_differs_is_reported_with_the_kernels_signature(monkeypatch):
    monkeypatch.setitem(RAW_ARGS, "net:netif_rx", ("struct sock *",))
    kernel = probe_kernel(BACKLOG.hooks)
    problem = hook_problem(BACKLOG.start, kernel)
    assert problem == (
        "tracepoint net:netif_rx takes (struct sk_buff *) on this kernel; otel-netlat reads (struct sock *)"
    )
    assert stage_problem(BACKLOG, kernel) == problem  # the stage is unavailable, with that reason


def test_a_missing_tracepoint_is_reported(monkeypatch):
    monkeypatch.setitem(RAW_ARGS, "net:otel_netlat_nope", ("struct sk_buff *",))
    hook = tp("net:otel_netlat_nope")
    problem = hook_problem(hook, probe_kernel([hook]))
    assert problem == "tracepoint net:otel_netlat_nope does not exist on this kernel"


def test_builtin_hooks_need_no_tracefs(monkeypatch):
    """Raw tracepoints are judged by BTF alone: no format file is read, tracefs is not mounted."""
    monkeypatch.setattr(features_mod, "read_format", lambda *_: pytest.fail("tracefs format read"))
    monkeypatch.setattr(features_mod, "_mount_tracefs", lambda *_: pytest.fail("tracefs mounted"))
    chosen = [STAGES_BY_NAME[name] for name in ("backlog", "qdisc")]
    kernel = replace(probe_kernel([h for s in chosen for h in s.hooks]), tracefs=None)
    for stage in chosen:
        assert stage_problem(stage, kernel) is None
    for hook in (h for s in stages.BUILTIN_STAGES for h in s.hooks):
        assert hook.attach_type == "raw_tracepoint"


def test_stage_ids_are_unique_and_contiguous_from_zero():
    check_stage_ids(ALL_STAGES)  # also checked when the table is imported
    with pytest.raises(ValueError, match="stage ids must be 0..1"):
        check_stage_ids((ALL_STAGES[0], replace(ALL_STAGES[1], id=2)))
    with pytest.raises(ValueError, match="stage ids must be"):
        check_stage_ids((ALL_STAGES[0], replace(ALL_STAGES[1], id=0)))
    with pytest.raises(ValueError, match="names must be unique"):
        check_stage_ids((ALL_STAGES[0], replace(ALL_STAGES[1], name=ALL_STAGES[0].name)))
    stack = STAGES_BY_NAME["stack"]
    assert stack.fallback is not None
    with pytest.raises(ValueError, match="its fallback must keep its id"):
        check_stage_ids((ALL_STAGES[0], replace(stack, fallback=replace(stack.fallback, id=7))))


def test_custom_stages_continue_the_ids():
    hook = CustomHook("tracepoint", "qdisc:qdisc_enqueue", skb_field="skbaddr")
    custom = tuple(CustomStage(f"c{i}", "transmit", hook, hook) for i in range(2))
    table = stage_table(Config(custom_stages=custom))
    check_stage_ids(tuple(table.values()))
    assert [s.user_defined for s in table.values()] == [False] * len(ALL_STAGES) + [True, True]


def test_list_path_is_a_property_of_the_stage():
    """The stages bound to one receive path say which list path bypasses them, and its family."""
    bound = {s.name: (s.family, s.list_path) for s in ALL_STAGES if s.list_path}
    assert bound == {"ip_rcv": ("ipv4", "ip_list_rcv"), "ipv6_rcv": ("ipv6", "ipv6_list_rcv")}
    for stage in ALL_STAGES:
        assert bool(stage.list_path_hooks) == bool(stage.list_path)
        assert all(h.target in RAW_ARGS for h in stage.list_path_hooks)
