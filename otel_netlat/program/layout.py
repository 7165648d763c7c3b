"""Constants shared by the BPF C and Python: the one definition of the map layouts.

The C never spells these numbers itself: :func:`c_defines` turns them into ``-D`` flags,
so a stage id, an outcome index or a histogram key cannot disagree between the kernel
side and the reader.
"""

from __future__ import annotations

from enum import IntEnum


class NetType(IntEnum):
    """Network type of a packet (``network.type``)."""

    IPV4 = 0
    IPV6 = 1


class Transport(IntEnum):
    """Transport of a packet (``network.transport``)."""

    TCP = 0
    UDP = 1
    ICMP = 2
    OTHER = 3


class Outcome(IntEnum):
    """How a start entry ended; the terms of the accounting identity.

    starts = SAMPLE + DROPPED + NO_SOCKET + OVERWRITTEN + EVICTED + COALESCED + NEGATIVE
    + FORWARDED + BACKLOGGED + NOT_QUEUED + SEGMENTED + UNSAMPLED + pending.
    TAIL_NOT_MATCHED is counted at the end hook (an end whose object was not a recorded
    start): it is not a term of the identity but tells why samples are missing.
    """

    SAMPLE = 0
    DROPPED = 1
    NO_SOCKET = 2
    OVERWRITTEN = 3
    EVICTED = 4
    #: A packet GRO merged into one it held (net:napi_gro_receive_exit): it never reaches the
    #: stack on its own, so its backlog start ends there without a sample.
    COALESCED = 5
    TAIL_NOT_MATCHED = 6
    #: An end whose clock read came before its start's (a clock source that went back, or a
    #: start written after its end): counted, never put in bucket 0 as a zero wait.
    NEGATIVE = 7
    #: A receive start that left through net:net_dev_queue (routed or bridged to another
    #: device): its wait is the ``forward`` stage's sample, not the ``stack`` stage's.
    FORWARDED = 8
    #: A TCP segment processed from its socket's backlog (queued there while the application
    #: held the socket lock): its wait is the ``tcp_backlog`` stage's sample, not ``stack``'s.
    BACKLOGGED = 9
    #: A TCP segment with no payload (a pure ACK) reached its socket and was freed without
    #: being queued or traced: ended at tcp:tcp_probe, so its start never lingers.
    NOT_QUEUED = 10
    #: A GSO packet split into segments in software after it was queued (a tbf too small for
    #: it, a device without the offload): freed at consume_skb; its segments are new skbs
    #: that passed no start, and are not measured.
    SEGMENTED = 11
    #: An entry latency sampling (--latency-sample N) left untimed reached its end: counted,
    #: like a sample, but with no latency (about N - 1 of every N starts).
    UNSAMPLED = 12


class Skip(IntEnum):
    """Why a hook did not measure a packet (``netlat.agent.skipped``)."""

    NON_IP = 0
    FILTERED = 1
    #: Received through GRO's list path (ip_list_rcv/ipv6_list_rcv), which ip_rcv/ipv6_rcv never see.
    LIST_PATH = 2
    #: Sent on a transmit queue without a queueing qdisc (noqueue: veth and lo by default):
    #: net:net_dev_queue fires before that check, and nothing queues after it.
    NOQUEUE = 3
    #: Sent on a device with no parent (veth, lo, bridge, tunnel): no TX ring to wait in.
    VIRTUAL_DEVICE = 4


NET_TYPE_NAMES = {NetType.IPV4: "ipv4", NetType.IPV6: "ipv6"}
TRANSPORT_NAMES = {
    Transport.TCP: "tcp",
    Transport.UDP: "udp",
    Transport.ICMP: "icmp",
    Transport.OTHER: "other",
}
OUTCOME_NAMES = {o: o.name.lower() for o in Outcome}
SKIP_NAMES = {
    Skip.NON_IP: "non_ip",
    Skip.FILTERED: "filtered",
    Skip.LIST_PATH: "list_path",
    Skip.NOQUEUE: "noqueue",
    Skip.VIRTUAL_DEVICE: "virtual_device",
}

#: Identity terms that end a start entry (everything in Outcome but TAIL_NOT_MATCHED).
ENDING_OUTCOMES = tuple(o for o in Outcome if o is not Outcome.TAIL_NOT_MATCHED)

N_NET_TYPES = len(NetType)
N_TRANSPORTS = len(Transport)
N_OUTCOMES = len(Outcome)
N_SKIPS = len(Skip)


def hist_index(stage_id: int, net_type: int, transport: int) -> int:
    """Index of a (stage, network type, transport) key in the per-CPU histogram array."""
    return (stage_id * N_NET_TYPES + net_type) * N_TRANSPORTS + transport


def drop_index(reason: int, net_type: int, transport: int) -> int:
    """Index of a (drop reason, network type, transport) key in the drop counter array."""
    return (reason * N_NET_TYPES + net_type) * N_TRANSPORTS + transport


def c_defines() -> dict[str, int]:
    """The layout constants as C preprocessor definitions."""
    defs: dict[str, int] = {
        "NETLAT_N_NET_TYPES": N_NET_TYPES,
        "NETLAT_N_TRANSPORTS": N_TRANSPORTS,
        "NETLAT_N_OUTCOMES": N_OUTCOMES,
        "NETLAT_N_SKIPS": N_SKIPS,
    }
    defs.update({f"NETLAT_NT_{t.name}": int(t) for t in NetType})
    defs.update({f"NETLAT_TR_{t.name}": int(t) for t in Transport})
    defs.update({f"NETLAT_OUT_{o.name}": int(o) for o in Outcome})
    defs.update({f"NETLAT_SKIP_{s.name}": int(s) for s in Skip})
    return defs
