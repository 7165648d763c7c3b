"""The loader's pure parts: flags derived from the kernel's offsets."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from otel_netlat.kernel.offsets import KernelInfo
from otel_netlat.kernel.shim import Shim
from otel_netlat.program import build as program
from otel_netlat.program.build import ProgramSpec, build_cflags, skb_span
from otel_netlat.stages.table import BACKLOG, FUNCTION_STAGES
from tests.support.kernel import hist_of, value_of
from tests.support.netns import udp_lockstep

SPAN_6_18 = {"OFF_SKB_PROTOCOL": 176, "OFF_SKB_NETWORK_HEADER": 180, "OFF_SKB_HEAD": 192, "OFF_SKB_DATA": 200}


def test_skb_fields_in_one_read_when_close():
    assert skb_span(SPAN_6_18) == (176, 32)  # 176..208: protocol to the end of data


def test_skb_fields_read_one_by_one_when_far_apart():
    far = {**SPAN_6_18, "OFF_SKB_DATA": 400}
    assert skb_span(far) is None


def test_span_is_rounded_to_whole_words():
    odd = {"OFF_SKB_PROTOCOL": 170, "OFF_SKB_NETWORK_HEADER": 172, "OFF_SKB_HEAD": 176, "OFF_SKB_DATA": 184}
    assert skb_span(odd) == (170, 24)  # 170..192 is 22 bytes


def list_path_flags(stages) -> dict[str, str]:
    info = KernelInfo(offsets=SPAN_6_18, drop_reasons={0: "UNKNOWN"}, max_drop_reason=0, kernel_types_c="")
    spec = ProgramSpec(stages=tuple(stages), drops=False, bounds_ns=(1000,))
    flags = build_cflags(spec, info, Shim(Path("/nonexistent")))
    return dict(f.removeprefix("-D").split("=", 1) for f in flags if f.startswith("-DNETLAT_LIST_"))


def test_list_path_counted_for_each_stage_that_misses_it_by_family():
    """The stage table says which stages GRO's list path bypasses, and their IP version."""
    assert list_path_flags(FUNCTION_STAGES) == {
        f"NETLAT_LIST_{s.family.upper()}_STAGE": str(s.id) for s in FUNCTION_STAGES if s.family
    }
    assert list_path_flags(FUNCTION_STAGES) == {"NETLAT_LIST_IPV4_STAGE": "4", "NETLAT_LIST_IPV6_STAGE": "5"}
    # The plan drops the counters where the kernel lacks the list-path tracepoints.
    assert list_path_flags([replace(s, list_path_hooks=()) for s in FUNCTION_STAGES]) == {}
    assert list_path_flags([BACKLOG]) == {}


def test_field_by_field_reads_count_the_same(veth_pair, load_agent_program, monkeypatch):
    """The fallback for kernels whose fields lie apart: same exact counts, field by field."""
    monkeypatch.setattr(program, "SKB_SPAN_MAX", 8)
    loaded = load_agent_program(netns=veth_pair.netns_inodes)
    assert udp_lockstep(veth_pair, 300) == 300
    snap = loaded.read()
    udp = {"network_type": "ipv4", "network_transport": "udp"}
    for stage in ("backlog", "qdisc"):
        assert value_of(snap.packets, netlat_stage=stage, **udp) == 300, stage
        assert hist_of(snap, netlat_stage=stage, **udp)[1] == 300, stage
    assert value_of(snap.packets, netlat_stage="stack", **udp) == 300
