"""User-defined stages (``custom_stages`` in the config file), loaded into the running kernel.

The tracepoint pair here is one the built-in stages do not use: with a tbf qdisc on the
sending veth, a packet is queued at ``qdisc:qdisc_enqueue`` and taken at
``qdisc:qdisc_dequeue``. Function-hook custom stages are exercised by the same
generated probes as ip_rcv (tests/kernel/test_backends_kernel.py, inside the test VMs).
"""

from __future__ import annotations

import pytest

from otel_netlat.config import Config, CustomHook, CustomStage
from otel_netlat.program.build import load_program
from otel_netlat.program.plan import StartupError, plan_for_this_kernel
from tests.support.kernel import Loaded, assert_identity, hist_of, value_of
from tests.support.netns import udp_lockstep

N = 300
TBF = CustomStage(
    "tbf",
    "transmit",
    CustomHook("tracepoint", "qdisc:qdisc_enqueue", skb_field="skbaddr"),
    CustomHook("tracepoint", "qdisc:qdisc_dequeue", skb_field="skbaddr"),
)


def test_custom_tracepoint_stage_counts_exactly(veth_pair, require_root):
    veth_pair.add_tbf(veth_pair.a, veth_pair.dev_a, "100mbit")
    config = Config(stages=("tbf", "qdisc"), custom_stages=(TBF,), netns=(veth_pair.a,))
    plan = plan_for_this_kernel(config)
    assert [s.name for s in plan.spec.stages] == ["tbf", "qdisc"]
    loaded = Loaded(load_program(plan.spec, plan.info))
    try:
        assert udp_lockstep(veth_pair, N) == N
        snap = loaded.read()
        udp = {"netlat_stage": "tbf", "network_type": "ipv4", "network_transport": "udp"}
        assert value_of(snap.packets, **udp) == N
        assert hist_of(snap, **udp)[1] == N
        # the built-in qdisc stage (net_dev_queue -> net_dev_start_xmit) saw the same packets
        assert hist_of(snap, netlat_stage="qdisc", network_transport="udp")[1] == N
        assert_identity(snap, "tbf")
    finally:
        loaded.close()


def test_custom_stage_with_missing_field_is_a_startup_error(require_root):
    bad = CustomStage(
        "bad",
        "receive",
        CustomHook("tracepoint", "qdisc:qdisc_enqueue", skb_field="nosuchfield"),
        CustomHook("tracepoint", "qdisc:qdisc_dequeue", skb_field="skbaddr"),
    )
    with pytest.raises(StartupError, match="custom stage bad cannot attach.*lacks field.*nosuchfield"):
        plan_for_this_kernel(Config(custom_stages=(bad,)))
