"""Where a hook's time goes: the agent's program against ablated copies of it.

Each variant is ``bpf/`` (every ``.c`` and ``.h``) with one piece taken out (a text patch applied to a copy:
the source in the repository is never touched) or the same source with another spec. The
variants take turns (in a rotating order), one attached at a time next to the floor, after
a short warm-up, round after round, so each is measured alone (no other variant's tables in
the cache) under the same load; the kernel times every program separately. A variant whose
patch no longer applies (the C changed) is reported as such instead of being measured wrongly.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from unittest import mock

from bench.bpfstats import bpf_stats, load_floor, set_attached
from bench.kernel import measure, tracepoints
from bench.stats import summary
from bench.traffic import Traffic
from otel_netlat.program import build as program
from otel_netlat.program.build import ProgramSpec
from otel_netlat.program.plan import Plan

WARMUP_S = 0.3

#: name → (what it removes, [(exact text, replacement, occurrences)], spec change)
VARIANTS: dict[str, tuple[str, list[tuple[str, str, int]], dict]] = {
    "agent": ("nothing: the program otel-netlat runs", [], {}),
    "no_clock": ("bpf_ktime_get_ns() (a constant instead)", [("bpf_ktime_get_ns()", "0ULL", 0)], {}),
    "plain_adds": (
        "atomic adds on per-CPU counters (bump() as a plain +=)",
        [("{ __sync_fetch_and_add(p, n); }", "{ *p += n; }", 1)],
        {},
    ),
    "plain_slot_stores": (
        "the locked exchange (start) and compare-exchange (end) on start slots: plain loads and "
        "stores, same cache lines",
        [
            ("__sync_lock_test_and_set(&s->obj, obj)", "({ u64 o_ = s->obj; s->obj = obj; o_; })", 1),
            ("__sync_val_compare_and_swap(&s->obj, obj, 0)", "({ u64 o_ = s->obj; s->obj = 0; o_; })", 1),
        ],
        {},
    ),
    "no_start_slot": (
        "writing and publishing the start slot (starts counted, so ends find nothing: no samples)",
        [("    /* Write the entry. */", "    return;\n    /* Write the entry. */", 1)],
        {},
    ),
    "no_header_parse": (
        "reading and parsing the L3 header at start hooks (fixed ipv4/udp)",
        [
            (
                "static __always_inline int parse_l3(u64 l3, u16 proto, struct pkt_meta *m) {\n",
                "static __always_inline int parse_l3(u64 l3, u16 proto, struct pkt_meta *m) {\n"
                "    m->net_type = NETLAT_NT_IPV4; m->transport = NETLAT_TR_UDP; if (l3) return 0;\n",
                1,
            )
        ],
        {},
    ),
    # The pieces of the two costliest hooks (issue 13): sk_data_ready and net_dev_queue.
    "walk_tail_only": (
        "sk_data_ready's walk back from the queue's tail over up to 8 skbs (the tail only)",
        [("#define NETLAT_QUEUE_WALK 8", "#define NETLAT_QUEUE_WALK 1", 1)],
        {},
    ),
    "no_socket_start": (
        "sk_data_ready's start of the socket stage (the stack stage still ends there)",
        [
            (
                "    stage_start(start_stage, skb, at, (u32)read_u64(skb + OFF_SKB_HEAD), &m);",
                "    (void)m;",
                1,
            )
        ],
        {},
    ),
    "no_udp_cursor": (
        "sk_data_ready's per-socket UDP read cursor (a direct-mapped slot, sealed)",
        [("    if (udp && start_stage >= 0)\n        udp_cursor_init(sk);", "", 1)],
        {},
    ),
    "no_forward_end": (
        "net_dev_queue's end of a forwarded packet's stack start (the forward stage)",
        [
            (
                "    forward_end(NETLAT_START_net_netif_receive_skb, NETLAT_END_net_net_dev_queue, skb);",
                "",
                1,
            )
        ],
        {},
    ),
    "no_noqueue_check": (
        "net_dev_queue's check that the transmit queue's qdisc queues (two pointer reads)",
        [("    if (!txq_queues(skb)) {", "    if (0) {", 1)],
        {},
    ),
    "sample_8": (
        "nothing; --latency-sample 8: one start in 8 timed (no clock read, no histogram update "
        "for the others; counts exact)",
        [],
        {"latency_sample": 8},
    ),
    "sample_64": (
        "nothing; --latency-sample 64",
        [],
        {"latency_sample": 64},
    ),
    "slots_4k": (
        "nothing; 4,096 start slots per stage instead of 65,536 (cache footprint)",
        [],
        {"slots_shift": 12},
    ),
    "slots_1k": (
        "nothing; 1,024 start slots per stage instead of 65,536 (cache footprint)",
        [],
        {"slots_shift": 10},
    ),
}


def _load_variant(plan: Plan, patches: list[tuple[str, str, int]], spec_change: dict):
    """Load a patched copy of bpf/ through program.load_program itself; None if stale.

    The loader is pointed at a temporary copy of the C (its ``BPF_DIR``) for the call, so
    a variant is built exactly as the agent's program is, whatever headers and flags the
    loader adds. ``occurrences`` is how often the text must appear (0: at least once).
    """
    tmp = Path(tempfile.mkdtemp(prefix="otel-netlat-variant-"))
    try:
        shutil.copytree(program.BPF_DIR, tmp, dirs_exist_ok=True)
        sources = {f: f.read_text() for f in sorted(tmp.iterdir()) if f.suffix in (".c", ".h")}
        for old, new, occurrences in patches:  # a piece may sit in any file of bpf/: count them all
            found = sum(text.count(old) for text in sources.values())
            if found == 0 or (occurrences and found != occurrences):
                return None
            sources = {f: text.replace(old, new) for f, text in sources.items()}
        for f, text in sources.items():
            f.write_text(text)
        spec: ProgramSpec = replace(plan.spec, **spec_change)
        with mock.patch.object(program, "BPF_DIR", tmp):
            return program.load_program(spec, plan.info).bpf
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def breakdown(traffic: Traffic, plan: Plan, rounds: int, seconds: float) -> dict:
    """ns per event of each variant on each hook (median over rounds) beside both floors."""
    hooks = tracepoints(plan)
    loaded, skipped = {}, {}
    series: dict[str, dict[str, list]] = {}
    above: dict[str, dict[str, list]] = {}
    with bpf_stats():
        try:
            for name, (_, patches, spec_change) in VARIANTS.items():
                bpf = _load_variant(plan, patches, spec_change)
                if bpf is None:
                    skipped[name] = "patch no longer applies to bpf/"
                    continue
                set_attached(bpf, hooks, False)
                loaded[name] = bpf
            loaded["floor_clock"] = load_floor(hooks, plan.info, clock=True, raw=True)
            set_attached(loaded["floor_clock"], hooks, False)
            floor = load_floor(hooks, plan.info, raw=True)
            series = {n: {h: [] for h in hooks} for n in [*loaded, "floor"]}
            above = {n: {h: [] for h in hooks} for n in loaded}
            names = list(loaded)
            for i in range(rounds):
                for name in names[i % len(names) :] + names[: i % len(names)]:  # no variant always first
                    bpf = loaded[name]
                    set_attached(bpf, hooks, True)
                    traffic.run(WARMUP_S)  # the variant's tables into the cache, as in a steady state
                    d, _ = measure(traffic, {name: bpf, "floor": floor}, seconds)
                    set_attached(bpf, hooks, False)
                    for h in hooks:
                        (ns, cnt), (fns, fcnt) = d[name][h], d["floor"][h]
                        if cnt and fcnt:
                            series[name][h].append(ns / cnt)
                            above[name][h].append(ns / cnt - fns / fcnt)
                            series["floor"][h].append(fns / fcnt)
        finally:
            for b in loaded.values():
                b.cleanup()
            if "floor" in series:
                floor.cleanup()
    return {
        "variants": {k: v[0] for k, v in VARIANTS.items()}
        | {"floor_clock": "floor + one bpf_ktime_get_ns()", "floor": "per-CPU counter only"},
        "ns_per_event": {
            n: {h: (summary(v, 1) or {}).get("median") for h, v in s.items()} for n, s in series.items()
        },
        "ns_above_floor": {
            n: {h: (summary(v, 1) or {}).get("median") for h, v in s.items()} for n, s in above.items()
        },
        "not_measured": skipped,
    }
