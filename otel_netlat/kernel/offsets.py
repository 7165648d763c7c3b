"""The kernel's layout as the BPF C reads it: struct offsets and drop reason names, from BTF.

Nothing here guesses at kernel layouts: each struct field the C reads is resolved from the
running kernel's BTF (and passed to the compiler as ``-DOFF_*``), checked for the width the C
reads it with. The C types BCC needs from the kernel (``enum skb_drop_reason``, ``struct
pt_regs`` for kprobes) are written out from BTF for the shim.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otel_netlat.kernel.btf import DEFAULT_PATH, Btf, BtfError, kernel_btf

BTF_PATH = DEFAULT_PATH

#: -D name → (struct, dotted field path, size in bytes the C reads it as).
#: The C reads each of these with a fixed width; a kernel whose field has another size is refused.
OFFSETS: dict[str, tuple[str, str, int]] = {
    "OFF_SKB_HEAD": ("sk_buff", "head", 8),
    "OFF_SKB_DATA": ("sk_buff", "data", 8),
    "OFF_SKB_NETWORK_HEADER": ("sk_buff", "network_header", 2),
    "OFF_SKB_PROTOCOL": ("sk_buff", "protocol", 2),
    "OFF_SKB_DEV": ("sk_buff", "dev", 8),
    "OFF_SKB_SKB_IIF": ("sk_buff", "skb_iif", 4),
    "OFF_SKB_HEAD_PREV": ("sk_buff_head", "prev", 8),
    "OFF_DEV_IFINDEX": ("net_device", "ifindex", 4),
    # A device on a bus (a NIC) has a parent; veth, lo, bridges and tunnels have none.
    "OFF_DEV_PARENT": ("net_device", "dev.parent", 8),
    "OFF_DEV_ND_NET": ("net_device", "nd_net.net", 8),
    "OFF_NET_NS_INUM": ("net", "ns.inum", 4),
    "OFF_SK_NET": ("sock", "__sk_common.skc_net.net", 8),
    # Only the queue's .prev is read (OFF_SKB_HEAD_PREV, checked itself): its size, which its
    # lock makes larger on PREEMPT_RT and lockdep kernels, does not matter (0: not checked).
    "OFF_SK_RECEIVE_QUEUE": ("sock", "sk_receive_queue", 0),
    "OFF_SK_SOCKET": ("sock", "sk_socket", 8),
    "OFF_SOCKET_SK": ("socket", "sk", 8),
    "OFF_SK_FAMILY": ("sock", "__sk_common.skc_family", 2),
    "OFF_SK_STATE": ("sock", "__sk_common.skc_state", 1),
    "OFF_SKB_PREV": ("sk_buff", "prev", 8),
    "OFF_SKB_NEXT": ("sk_buff", "next", 8),
    # A UDP socket's reader queue (udp_sock embeds its struct sock first): where reads take
    # datagrams from; only its first pointer is read (0: its size is not checked).
    "OFF_UDP_READER_QUEUE": ("udp_sock", "reader_queue", 0),
    # The qdisc of the skb's transmit queue (dev->_tx[skb->queue_mapping].qdisc->enqueue):
    # a noqueue queue has no enqueue and queues nothing. The device's root qdisc answers
    # first (dev->qdisc: its enqueue, or noqueue unless its flags say multiqueue root).
    "OFF_DEV_QDISC": ("net_device", "qdisc", 8),
    "OFF_QDISC_FLAGS": ("Qdisc", "flags", 4),
    "OFF_DEV_TX": ("net_device", "_tx", 8),
    "OFF_SKB_QUEUE_MAPPING": ("sk_buff", "queue_mapping", 2),
    "OFF_TXQ_QDISC": ("netdev_queue", "qdisc", 8),
    "OFF_QDISC_ENQUEUE": ("Qdisc", "enqueue", 8),
    # Whether an application holds a socket's lock (sock_owned_by_user): TCP then queues
    # arriving segments in the socket's backlog, processed at release_sock.
    "OFF_SK_LOCK_OWNED": ("sock", "sk_lock.owned", 4),
    # A TCP segment's sequence numbers (struct tcp_skb_cb in skb->cb): no payload when equal.
    "OFF_SKB_CB": ("sk_buff", "cb", 0),
    "OFF_TCP_CB_SEQ": ("tcp_skb_cb", "seq", 4),
    "OFF_TCP_CB_END_SEQ": ("tcp_skb_cb", "end_seq", 4),
    # Whether an skb is a GSO packet (skb_shinfo(skb)->gso_size; the shared info is at
    # head + end, end an offset on 64-bit kernels).
    "OFF_SKB_END": ("sk_buff", "end", 4),
    "OFF_SHINFO_GSO_SIZE": ("skb_shared_info", "gso_size", 2),
}

#: Offsets only some hooks need: absent ones make those hooks unavailable, not the program.
OPTIONAL_OFFSETS: dict[str, tuple[str, str, int]] = {
    "OFF_SK_PROTOCOL": ("sock", "sk_protocol", 2),
    # Whether a receive queue steers packets to other CPUs (RPS, RFS; CONFIG_RPS): without
    # them, backlog's RPS starts are not compiled.
    "OFF_DEV_RX": ("net_device", "_rx", 8),
    "OFF_RXQ_RPS_MAP": ("netdev_rx_queue", "rps_map", 8),
    "OFF_RXQ_RPS_FLOW_TABLE": ("netdev_rx_queue", "rps_flow_table", 8),
    # A socket's own addresses and ports: a slow record of a UDP read, whose datagram is
    # freed by the time the read returns, names the socket's ends (bpf/slow.h).
    "OFF_SK_RCV_SADDR": ("sock", "__sk_common.skc_rcv_saddr", 4),
    "OFF_SK_DADDR": ("sock", "__sk_common.skc_daddr", 4),
    "OFF_SK_NUM": ("sock", "__sk_common.skc_num", 2),
    "OFF_SK_DPORT": ("sock", "__sk_common.skc_dport", 2),
    "OFF_SK_V6_RCV_SADDR": ("sock", "__sk_common.skc_v6_rcv_saddr", 16),
    "OFF_SK_V6_DADDR": ("sock", "__sk_common.skc_v6_daddr", 16),
    # The socket owning a queued skb: its namespace, once the skb has no device any more.
    "OFF_SKB_SK": ("sk_buff", "sk", 8),
    # A TCP GSO packet split in software after it was queued: its sequence range and segment
    # count, so that each segment's qdisc wait is measured from its parent's (bpf/skb.h).
    "OFF_SKB_TRANSPORT_HEADER": ("sk_buff", "transport_header", 2),
    "OFF_SKB_HASH": ("sk_buff", "hash", 4),
    "OFF_SHINFO_GSO_SEGS": ("skb_shared_info", "gso_segs", 2),
}


@dataclass
class KernelInfo:
    """What the loader learned from BTF: offsets and the drop reason names."""

    offsets: dict[str, int]
    drop_reasons: dict[int, str]
    max_drop_reason: int
    kernel_types_c: str
    extra: dict[str, int] = field(default_factory=dict)


def resolve_offsets(btf: Btf) -> dict[str, int]:
    """Every struct offset the C uses, from BTF, checked for the width the C reads."""
    out: dict[str, int] = {}
    for name, (struct, path, size) in OFFSETS.items():
        out[name] = btf.offsetof(struct, path)
        actual = btf.field_size(struct, path)
        if size and actual != size:
            raise BtfError(
                f"struct {struct}.{path} is {actual} bytes on this kernel, otel-netlat reads {size}"
            )
    # sk_protocol is a bit field before Linux 5.6: there the C leaves the socket stage's
    # transport as "other" (such kernels have no sock:* tracepoints; the socket stage then
    # runs only on its fentry/fexit fallback).
    for name, (struct, path, size) in OPTIONAL_OFFSETS.items():
        try:
            if btf.field_size(struct, path) == size:
                out[name] = btf.offsetof(struct, path)
        except BtfError:
            pass
    out["SIZEOF_NETDEV_QUEUE"] = btf.sizeof("netdev_queue")
    out.update(_rps(btf, out))
    return out


def _rps(btf: Btf, offsets: dict[str, int]) -> dict[str, int]:
    """What backlog's RPS starts need beyond offsets, or nothing (then they are not compiled)."""
    if not {"OFF_DEV_RX", "OFF_RXQ_RPS_MAP", "OFF_RXQ_RPS_FLOW_TABLE"} <= offsets.keys():
        return {}
    try:
        gro = btf.enum_values("gro_result")  # what napi_gro_receive returned
        return {
            "SIZEOF_NETDEV_RX_QUEUE": btf.sizeof("netdev_rx_queue"),
            "NETLAT_GRO_MERGED": gro["GRO_MERGED"],  # merged into a held packet
            "NETLAT_GRO_MERGED_FREE": gro["GRO_MERGED_FREE"],  # merged, and freed
        }
    except (BtfError, KeyError):
        return {}


def drop_reason_names(btf: Btf) -> dict[int, str]:
    """Index → reason name without its prefix (``NO_SOCKET``), from ``enum skb_drop_reason``."""
    names: dict[int, str] = {}
    for name, value in btf.enum_values("skb_drop_reason").items():
        if name == "SKB_DROP_REASON_MAX" or value >= 0x10000:
            continue
        short = name.removeprefix("SKB_DROP_REASON_").removeprefix("SKB_")
        names.setdefault(value, short)
    return names


def read_kernel_info(btf_path: str = BTF_PATH) -> KernelInfo:
    """Load BTF and derive what the program needs; BtfError on failure."""
    btf = kernel_btf(btf_path)
    offsets = resolve_offsets(btf)
    reasons = drop_reason_names(btf)
    if not reasons:
        raise BtfError("kernel BTF enum skb_drop_reason has no drop reasons")
    max_reason = max(reasons) + 1  # one more index: reasons this BTF does not name
    reasons[max_reason] = "UNKNOWN"
    kernel_types = "/* written from the running kernel's BTF by otel-netlat */\n"
    kernel_types += btf.c_enum("skb_drop_reason") + "\n"
    # kprobes read arguments as ctx->di, ctx->si ... (BCC's PT_REGS_PARMn): the kernel's
    # own pt_regs, not the UAPI one (which names them rdi, rsi).
    kernel_types += btf.c_struct("pt_regs") + "\n"
    return KernelInfo(offsets, reasons, max_reason, kernel_types)
