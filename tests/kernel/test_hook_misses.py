"""Hook skips: parsing the kernel's per-program count and naming each program's hook."""

from __future__ import annotations

import socket
from pathlib import Path

from otel_netlat.collect.hook_misses import MissReader, function_hooks, recursion_misses
from otel_netlat.stages.table import FENTRY, KPROBE, Hook
from tests.support.netns import udp_lockstep

FDINFO = """pos:\t0
flags:\t02000002
mnt_id:\t15
ino:\t1057
prog_type:\t17
prog_jited:\t1
prog_tag:\t0123456789abcdef
memlock:\t4096
prog_id:\t42
run_time_ns:\t0
run_cnt:\t0
recursion_misses:\t7
verified_insns:\t120
"""


def test_recursion_misses_parsed(tmp_path: Path):
    (tmp_path / "5").write_text(FDINFO)
    (tmp_path / "6").write_text(FDINFO.replace("recursion_misses:\t7\n", ""))  # Linux < 5.12
    assert recursion_misses(5, tmp_path) == 7
    assert recursion_misses(6, tmp_path) is None
    assert recursion_misses(99, tmp_path) is None  # closed fd


def test_function_names_map_to_hooks():
    hooks = (
        Hook("tracepoint", "net:netif_rx", "skb"),
        Hook("tracepoint", "qdisc:qdisc_dequeue", "skb_nh", field="skbaddr"),
        Hook(FENTRY, "ip_rcv", "skb", arg=0),
        Hook(KPROBE, "ip_rcv_finish", "skb", arg=2, symbol="ip_rcv_finish.isra.0"),
    )
    names = function_hooks(hooks, {"ip_rcv_finish.isra.0": "netlat_kprobe_ip_rcv_finish_isra_0"})
    assert names["raw_tracepoint__netif_rx"] == ("net:netif_rx", "raw_tracepoint")
    assert names["raw_tracepoint__kfree_skb"] == ("skb:kfree_skb", "raw_tracepoint")
    assert names["tracepoint__qdisc__qdisc_dequeue"] == ("qdisc:qdisc_dequeue", "tracepoint")
    assert names["kfunc__ip_rcv"] == ("ip_rcv", "fentry")
    assert names["netlat_kprobe_ip_rcv_finish_isra_0"] == ("ip_rcv_finish.isra.0", "kprobe")


def test_every_attached_hook_reports_its_skips(veth_pair, load_agent_program):
    """One series per program the agent attached, read from the kernel (0 when nothing nested)."""
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    assert udp_lockstep(veth_pair, 200, socket.AF_INET) == 200
    snap = loaded.read()
    got = {dict(p.attributes)["netlat.hook"]: p for p in snap.missed}
    assert set(got) == {h.attach_name for h in loaded.program.attached}
    for hook, point in got.items():
        assert dict(point.attributes)["netlat.hook.type"] == "raw_tracepoint", hook
        assert point.value >= 0
    # The self-test probe is not a hook: it is not reported.
    assert MissReader({}, {}).read() == ()
