"""The stage table's availability checks, judged from the running kernel's BTF."""

from __future__ import annotations

import pytest

from otel_netlat.kernel import tracepoints
from otel_netlat.kernel.tracepoints import raw_tracepoint_problem, stage_problem
from otel_netlat.stages import table as stages
from otel_netlat.stages.table import BACKLOG, RAW_ARGS, STAGES_BY_NAME


@pytest.mark.parametrize("target", ["net:netif_rx", "net:netif_receive_skb", "skb:kfree_skb"])
def test_builtin_raw_tracepoints_attachable_here(target):
    assert raw_tracepoint_problem(target) is None


def test_a_prototype_that_differs_is_reported_with_the_kernels_signature(monkeypatch):
    monkeypatch.setitem(RAW_ARGS, "net:netif_rx", ("struct sock *",))
    problem = raw_tracepoint_problem("net:netif_rx")
    assert problem == (
        "tracepoint net:netif_rx takes (struct sk_buff *) on this kernel; otel-netlat reads (struct sock *)"
    )
    assert stage_problem(BACKLOG) == problem  # the stage is unavailable, with that reason


def test_a_missing_tracepoint_is_reported(monkeypatch):
    monkeypatch.setitem(RAW_ARGS, "net:otel_netlat_nope", ("struct sk_buff *",))
    problem = raw_tracepoint_problem("net:otel_netlat_nope")
    assert problem == "tracepoint net:otel_netlat_nope does not exist on this kernel"


def test_builtin_hooks_need_no_tracefs(monkeypatch):
    """Raw tracepoints are judged by BTF alone: no tracefs root is even looked at."""
    monkeypatch.setattr(tracepoints, "tracefs_root", lambda: pytest.fail("tracefs consulted"))
    for name in ("backlog", "qdisc"):
        assert stage_problem(STAGES_BY_NAME[name]) is None
    for hook in (h for s in stages.BUILTIN_STAGES for h in s.hooks):
        assert hook.attach_type == "raw_tracepoint"
