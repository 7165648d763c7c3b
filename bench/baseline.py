"""The naive per-packet path, for contrast: a ring-buffer event per packet → Python → SDK.

A BCC ring buffer event at ``net:netif_receive_skb`` for every packet of the benchmark's
receiving namespace, a Python callback per event, an OpenTelemetry SDK ``Histogram.record``
per event (one in-memory reader). Reservation failures (events the kernel had to drop
because Python was behind) are counted in a per-CPU map. Same saturating load as the rest.
"""

from __future__ import annotations

import ctypes as ct
import os
import threading
import time

from bench.stats import summary
from bench.traffic import Traffic, settle
from otel_netlat.kernel.btf import kernel_btf
from otel_netlat.kernel.shim import build_shim
from otel_netlat.program.plan import Plan

RING_PAGES = 256  # 1 MiB: 64 k events of 16 bytes in flight

SOURCE = """
struct event { u64 ts; u32 len; u32 pad; };
BPF_RINGBUF_OUTPUT(events, %(pages)d);
BPF_PERCPU_ARRAY(counts, u64, 2); /* 0: submitted, 1: reservation failed */

RAW_TRACEPOINT_PROBE(netif_receive_skb) { /* attached as the agent's hooks are */
    u64 skb = ctx->args[0], dev = 0, net = 0;
    u32 inum = 0, len = 0;
    bpf_probe_read_kernel(&dev, 8, (void *)(skb + %(off_dev)d));
    if (!dev)
        return 0;
    bpf_probe_read_kernel(&net, 8, (void *)(dev + %(off_nd_net)d));
    if (!net)
        return 0;
    bpf_probe_read_kernel(&inum, 4, (void *)(net + %(off_inum)d));
    if (inum != %(inum)dU)
        return 0;
    struct event *e = events.ringbuf_reserve(sizeof(struct event));
    u32 k = e ? 0 : 1;
    u64 *c = counts.lookup(&k);
    if (c)
        *c += 1;
    if (!e)
        return 0;
    e->ts = bpf_ktime_get_ns();
    bpf_probe_read_kernel(&len, 4, (void *)(skb + %(off_len)d));
    e->len = len;
    events.ringbuf_submit(e, 0);
    return 0;
}
"""


class Event(ct.Structure):
    _fields_ = [("ts", ct.c_uint64), ("len", ct.c_uint32), ("pad", ct.c_uint32)]


def per_event(traffic: Traffic, plan: Plan, rounds: int, seconds: float) -> dict:
    from bcc import BPF  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: PLC0415

    off = plan.info.offsets
    text = SOURCE % {
        "pages": RING_PAGES,
        "off_dev": off["OFF_SKB_DEV"],
        "off_nd_net": off["OFF_DEV_ND_NET"],
        "off_inum": off["OFF_NET_NS_INUM"],
        "inum": traffic.netns_inodes[1],
        "off_len": kernel_btf().offsetof("sk_buff", "len"),
    }
    shim = build_shim({"kernel_types.h": plan.info.kernel_types_c})
    os.environ["BCC_KERNEL_SOURCE"] = str(shim.kernel_source)
    try:
        bpf = BPF(text=text.encode(), cflags=shim.cflags)
    finally:
        shim.remove()
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False)
    hist = provider.get_meter("baseline").create_histogram("netlat.packet.latency", unit="s")
    attrs = {"netlat.stage": "stack", "network.type": "ipv4", "network.transport": "udp"}
    handled = [0]

    def callback(ctx, data, size):
        ev = ct.cast(data, ct.POINTER(Event)).contents
        hist.record((time.monotonic_ns() - ev.ts) / 1e9, attrs)
        handled[0] += 1
        return 0

    bpf[b"events"].open_ring_buffer(callback)
    counts = bpf[b"counts"]
    rates, lost, received = [], [], []
    try:
        for _ in range(rounds):
            stop = threading.Event()

            def poll(stop=stop):
                while not stop.is_set():
                    bpf.ring_buffer_poll(100)

            c0 = [sum(counts[ct.c_int(k)]) for k in (0, 1)]
            h0 = handled[0]
            poller = threading.Thread(target=poll, daemon=True)
            t0 = time.monotonic()
            poller.start()
            load = traffic.run(seconds)
            settle()
            stop.set()
            poller.join(5)
            wall = time.monotonic() - t0
            sub, fail = (sum(counts[ct.c_int(k)]) - c0[k] for k in (0, 1))
            rates.append((handled[0] - h0) / wall)
            lost.append(fail / (sub + fail) if sub + fail else None)
            received.append(load.rate)
            bpf.ring_buffer_consume()  # drain what is left before the next round
    finally:
        bpf.cleanup()
        provider.shutdown()
    return {
        "events_per_s": summary(rates, 0),
        "lost_share": summary(lost, 4),
        "load_pps": summary(received, 0),
        "ring_buffer_bytes": RING_PAGES * 4096,
        "note": "lost_share: events the kernel could not reserve because Python was behind",
    }
