"""The stage table: what each stage measures, from which hook to which, matched how.

This table is the single source for the BPF program's roles (``-DNETLAT_START_<hook>=<id>``),
for ``check``'s report, for the metric attribute ``netlat.stage`` and for the README's
stage table. The C has one probe per hook and no per-stage copies.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Hook kinds. ``function`` is what the stage table says (a kernel function's entry); it is
#: resolved at start-up to the backend that attaches it here (``fentry`` or ``kprobe``), and
#: the resolved kind is what check, the log and ``netlat.hook.type`` report.
TRACEPOINT = "tracepoint"
#: How the built-in tracepoint hooks attach (see RAW_ARGS); user-defined tracepoint hooks
#: read a field of the classic record and stay ``tracepoint``.
RAW_TRACEPOINT = "raw_tracepoint"
FUNCTION = "function"
FENTRY = "fentry"
KPROBE = "kprobe"
#: A function hook at the function's return (``at_return``), on the fentry backend.
FEXIT = "fexit"
FUNCTION_BACKENDS = (FENTRY, KPROBE)


@dataclass(frozen=True)
class Hook:
    """A kernel hook and the object it hands us.

    ``obj`` is ``skb`` (the tracepoint's skb address, or the function's ``arg``-th argument;
    ``skb_nh`` for user-defined hooks, whose packets are classified at the network header),
    ``sock`` (the socket address), or ``sock_queue_tail`` (the skb at the tail of the
    socket's receive queue). For function hooks ``target`` is the name in the stage table and
    ``symbol`` the exact symbol attached (``ip_rcv_finish.isra.0`` when the compiler renamed
    it; a kprobe must name the real symbol).
    """

    kind: str
    target: str
    obj: str
    arg: int | None = None
    symbol: str | None = None
    #: A user-defined tracepoint hook's skb field (its probe is generated, not in the C).
    field: str | None = None
    #: A function hook that fires when the function returns (fexit), seeing its result.
    at_return: bool = False

    @property
    def is_function(self) -> bool:
        return self.kind in (FUNCTION, *FUNCTION_BACKENDS)

    @property
    def macro_suffix(self) -> str:
        """``net:netif_rx`` → ``net_netif_rx`` (the -D flag names the hook this way)."""
        return self.target.replace(":", "_").replace(".", "_")

    @property
    def attach_type(self) -> str:
        """How the kernel runs the program: what ``netlat.hook.type`` and check report."""
        if self.kind == TRACEPOINT:
            return RAW_TRACEPOINT if self.field is None else TRACEPOINT
        if self.kind == FENTRY and self.at_return:
            return FEXIT
        return self.kind

    @property
    def attach_name(self) -> str:
        """What the kernel attaches to: the exact symbol when resolved, else the target."""
        return self.symbol or self.target

    def __str__(self) -> str:
        return f"{self.attach_type} {self.attach_name}"


@dataclass(frozen=True)
class Stage:
    """A named pair of hooks, start → end, with a direction."""

    name: str
    id: int
    direction: str
    start: Hook
    end: Hook
    meaning: str
    matched_by: str
    #: More end hooks: the stage ends at whichever of ``end`` and these the packet reaches
    #: first (the atomic take of the start entry lets only the first one count).
    extra_ends: tuple[Hook, ...] = ()
    #: The same measurement on function hooks, for kernels that lack this stage's tracepoints.
    fallback: Stage | None = None
    #: The one IP version this stage sees (``ipv4``/``ipv6``), for stages bound to one.
    family: str | None = None
    #: The kernel's batch receive function whose packets never pass this stage's start
    #: (GRO's list path: ``ip_list_rcv``), or None when the stage sees every packet of its path.
    list_path: str | None = None
    #: Where the packets that take ``list_path`` are counted (``netlat_skip_reason="list_path"``),
    #: so the gap is a number and not a silence. The plan drops them where the kernel lacks them.
    list_path_hooks: tuple[Hook, ...] = ()
    #: Declared in the config file (``custom_stages``): one that cannot attach is fatal.
    user_defined: bool = False
    #: The stage whose start this one's samples begin at (its start hook then records nothing
    #: of its own): ``forward`` ends ``stack``'s start when a packet leaves instead.
    starts_from: str | None = None

    #: More hooks where the stage starts, for packets that never pass ``start`` (``backlog``:
    #: RPS-steered packets of NAPI drivers, which reach a CPU backlog without net:netif_rx).
    extra_starts: tuple[Hook, ...] = ()

    @property
    def hooks(self) -> tuple[Hook, ...]:
        return (self.start, self.end, *self.extra_ends, *self.extra_starts)

    @property
    def roles(self) -> tuple[tuple[str, Hook], ...]:
        """(role, hook) for every hook: one or more ``start``, one or more ``end``."""
        return (
            ("start", self.start),
            *(("end", h) for h in (self.end, *self.extra_ends)),
            *(("start", h) for h in self.extra_starts),
        )

    def describe(self) -> str:
        """``kprobe ip_rcv -> kprobe ip_rcv_finish | udp_v4_early_demux | ...`` for check and logs."""
        starts = " | ".join([str(self.start), *(h.attach_name for h in self.extra_starts)])
        ends = " | ".join([str(self.end), *(h.attach_name for h in self.extra_ends)])
        return f"{starts} -> {ends}"


def tp(target: str, obj: str = "skb") -> Hook:
    return Hook(TRACEPOINT, target, obj)


def fn(target: str, skb_arg: int) -> Hook:
    """Entry of kernel function ``target``, whose argument ``skb_arg`` (from 0) is the skb."""
    return Hook(FUNCTION, target, "skb", arg=skb_arg)


#: A NAPI driver's packet reaches a CPU backlog without net:netif_rx when RPS steers it: from
#: netif_receive_skb / GRO's flush, enqueue_to_backlog has no tracepoint. Such packets start
#: at the driver's hand-over (the three *_entry tracepoints), only on a receive queue that
#: steers (rps_cpus or RFS set); the wait then includes GRO's hold. A packet GRO merges into
#: another ends at net:napi_gro_receive_exit (outcome coalesced): it never reaches the stack
#: on its own.
RPS_STARTS = (
    tp("net:napi_gro_receive_entry"),
    tp("net:netif_receive_skb_entry"),
    tp("net:netif_receive_skb_list_entry"),
)
BACKLOG = Stage(
    name="backlog",
    id=0,
    direction="receive",
    start=tp("net:netif_rx"),
    end=tp("net:netif_receive_skb"),
    extra_ends=(tp("net:napi_gro_receive_exit", "gro_result"),),
    extra_starts=RPS_STARTS,
    meaning="time queued in a CPU backlog (loopback, veth and other non-NAPI receive paths; "
    "a NAPI driver's packets that RPS steers to a CPU, from the driver's hand-over)",
    matched_by="skb address",
)
#: A TCP segment without payload (a pure ACK) is processed and freed without a tracepoint
#: (__kfree_skb): tcp:tcp_probe, at the start of tcp_rcv_established, ends its start there
#: (outcome not_queued, no sample), so it never lingers to pair with a later skb.
PURE_ACK_END = tp("tcp:tcp_probe", "skb")
#: Linux < 6.6 (Debian 6.1) has no sock:* tracepoints: there the stack stage ends at the
#: socket's default data-ready callback, sock_def_readable(sk), which is what UDP and TCP
#: sockets call when data is queued (sockets with their own callback are not seen).
STACK_FALLBACK = Stage(
    name="stack",
    id=1,
    direction="receive",
    start=tp("net:netif_receive_skb"),
    end=Hook(FUNCTION, "sock_def_readable", "sock_queue_tail", arg=0),
    extra_ends=(PURE_ACK_END,),
    meaning="protocol processing, from the start of __netif_receive_skb_core until the data "
    "is queued on its socket and sock_def_readable wakes the reader",
    matched_by="skb address: the tail of the socket's receive queue at sock_def_readable",
)
STACK = Stage(
    name="stack",
    id=1,
    direction="receive",
    start=tp("net:netif_receive_skb"),
    end=tp("sock:sk_data_ready", "sock_queue_tail"),
    extra_ends=(PURE_ACK_END,),
    meaning="protocol processing, from the start of __netif_receive_skb_core until the data "
    "is queued on its socket and the reader is woken",
    matched_by="skb address: the tail of the socket's receive queue at sk_data_ready",
    fallback=STACK_FALLBACK,
)
#: The socket stage is keyed by the queued skb, not the socket: every datagram or segment in
#: a standing queue has its own wait. It starts where `stack` ends, at the skb a notification
#: is about (found from the receive queue's tail backwards: on 6.18 UDP notifies once per skb
#: of a batch after queueing them all), and ends when the reader gets it: a TCP segment at
#: its first copy (skb:skb_copy_datagram_iovec), a UDP datagram at the read that takes it
#: (small datagrams are copied without that tracepoint), matched in queue order by a
#: per-socket cursor. An skb freed unread counts as dropped.
_SOCKET = dict(
    name="socket",
    id=2,
    direction="receive",
    meaning="how long each queued datagram or segment waited in its socket's receive queue "
    "until its reader got it (a TCP segment: its first copy; a UDP datagram: the read that took it)",
    matched_by="skb address and skb->head (a new skb at a freed one's address never pairs)",
)
#: Linux < 6.6: notified at sock_def_readable, UDP reads at the return of inet_recvmsg /
#: inet6_recvmsg (fexit: every recv, recvfrom, recvmsg, recvmmsg datagram and read on an inet
#: socket returns through one of them; a kretprobe would hold one of its few instances for
#: every reader blocked in recv, and miss reads).
SOCKET_FALLBACK = Stage(
    start=Hook(FUNCTION, "sock_def_readable", "sock_queue_tail", arg=0),
    end=Hook(FUNCTION, "inet_recvmsg", "socket_read", arg=0, at_return=True),
    extra_ends=(
        Hook(FUNCTION, "inet6_recvmsg", "socket_read", arg=0, at_return=True),
        tp("skb:skb_copy_datagram_iovec", "skb_read"),
    ),
    **_SOCKET,
)
SOCKET = Stage(
    start=tp("sock:sk_data_ready", "sock_queue_tail"),
    end=tp("sock:sock_recv_length", "sock"),
    extra_ends=(tp("skb:skb_copy_datagram_iovec", "skb_read"),),
    fallback=SOCKET_FALLBACK,
    **_SOCKET,
)
QDISC = Stage(
    name="qdisc",
    id=3,
    direction="transmit",
    start=tp("net:net_dev_queue"),
    end=tp("net:net_dev_start_xmit"),
    meaning="time in the queueing discipline, until the driver is handed the packet",
    matched_by="skb address",
)

#: GRO's entry (napi_gro_receive) and drivers' netif_receive_skb_list: the two ways into the
#: list path, which the ip_rcv/ipv6_rcv stages cannot see; their packets are counted here.
LIST_HOOKS = (tp("net:napi_gro_receive_entry"), tp("net:netif_receive_skb_list_entry"))

#: ip_rcv_finish(net, sk, skb) and ip6_rcv_finish are inlined into ip_rcv/ipv6_rcv on the
#: kernels seen (Debian 6.1, 6.12): their out-of-line copies run only for packets netfilter
#: re-injects, so a probe there alone gives no sample. The stage therefore also ends at the
#: first call ip_rcv_finish makes once PREROUTING is done: TCP/UDP early demux or the route
#: lookup — or, for a packet that already carries a route (loopback), its delivery.
IP_RCV = Stage(
    name="ip_rcv",
    id=4,
    direction="receive",
    start=fn("ip_rcv", 0),  # ip_rcv(skb, dev, pt, orig_dev)
    end=fn("ip_rcv_finish", 2),  # ip_rcv_finish(net, sk, skb)
    extra_ends=(
        fn("tcp_v4_early_demux", 0),
        fn("udp_v4_early_demux", 0),
        fn("ip_route_input_noref", 0),
        fn("ip_local_deliver", 0),
    ),
    meaning="IPv4 header checks and the PREROUTING netfilter hooks (conntrack, raw/mangle/nat), "
    "ending where ip_rcv_finish starts (early demux or route lookup); packets of the GRO list "
    "path (ip_list_rcv) are not covered",
    matched_by="skb address",
    family="ipv4",
    list_path="ip_list_rcv",
    list_path_hooks=LIST_HOOKS,
)
IPV6_RCV = Stage(
    name="ipv6_rcv",
    id=5,
    direction="receive",
    start=fn("ipv6_rcv", 0),  # ipv6_rcv(skb, dev, pt, orig_dev)
    end=fn("ip6_rcv_finish", 2),  # ip6_rcv_finish(net, sk, skb)
    extra_ends=(
        fn("tcp_v6_early_demux", 0),
        fn("udp_v6_early_demux", 0),
        fn("ip6_route_input", 0),
        fn("ip6_input", 0),
    ),
    meaning="IPv6 header checks and the PREROUTING netfilter hooks, ending where ip6_rcv_finish "
    "starts (early demux or route lookup); packets of the GRO list path (ipv6_list_rcv) are "
    "not covered",
    matched_by="skb address",
    family="ipv6",
    list_path="ipv6_list_rcv",
    list_path_hooks=LIST_HOOKS,
)

#: A packet the host receives and sends on (a pod's packet crossing the node: routed or
#: bridged onto another veth) passes net:netif_receive_skb on each device it is received on,
#: with the same skb. The host's hop is this stage — routing, bridging, netfilter (kube-proxy's
#: iptables, conntrack) — ending where the packet is handed to the next device's transmit
#: path; the pod's hop is then `stack` again. Each hop is measured once.
FORWARD = Stage(
    name="forward",
    id=6,
    direction="receive",
    start=tp("net:netif_receive_skb", "handoff"),
    end=tp("net:net_dev_queue"),
    meaning="host forwarding: from the start of __netif_receive_skb_core on this host until the "
    "packet is queued for transmit on another device (routing, bridging, netfilter, conntrack)",
    matched_by="skb address (the stack stage's start, ended here instead of at a socket)",
    starts_from="stack",
)

#: A TCP segment that arrives while the application holds its socket's lock (in recv or
#: send) waits in the socket's backlog until release_sock processes it. Its wait (the
#: protocol processing included) is this stage's sample, not `stack`'s: it ends where `stack`
#: would, at sk_data_ready, when the socket's lock is owned (release_sock runs the backlog
#: with it owned). Where the segment waited and where it was processed are not told apart
#: without function hooks.
_TCP_BACKLOG = dict(
    name="tcp_backlog",
    id=7,
    direction="receive",
    start=tp("net:netif_receive_skb", "handoff"),
    meaning="a TCP segment that arrived while its application held the socket lock: from the "
    "start of __netif_receive_skb_core, through the wait in the socket's backlog, until "
    "release_sock queues it on the socket and wakes the reader",
    matched_by="skb address (the stack stage's start, ended here when the socket lock is owned)",
    starts_from="stack",
)
TCP_BACKLOG_FALLBACK = Stage(end=Hook(FUNCTION, "sock_def_readable", "handoff", arg=0), **_TCP_BACKLOG)
TCP_BACKLOG = Stage(end=tp("sock:sk_data_ready", "handoff"), fallback=TCP_BACKLOG_FALLBACK, **_TCP_BACKLOG)

#: A real NIC's driver holds a sent skb in its TX ring until the device reports the transmit
#: done, then frees it (napi_consume_skb / dev_consume_skb_any, traced as skb:consume_skb).
#: Virtual devices (veth, lo, bridges, tunnels: no parent device on a bus) hand the skb on
#: or free it at once; their transmits are counted as skipped (virtual_device), not sampled.
TX_RING = Stage(
    name="tx_ring",
    id=8,
    direction="transmit",
    start=tp("net:net_dev_start_xmit"),
    end=tp("skb:consume_skb"),
    meaning="time in a NIC's transmit ring: from the driver being handed the packet until the "
    "driver frees it after the device completed the transmit",
    matched_by="skb address",
)

#: A new TCP connection waits in its listener's accept queue from the end of its handshake
#: until accept() takes it. The child socket turns ESTABLISHED (sock:inet_sock_set_state from
#: SYN_RECV) right after it is queued; the end is the return of inet_csk_accept, whose
#: result is that socket: an fexit, so only where fentry works.
ACCEPT = Stage(
    name="accept",
    id=9,
    direction="receive",
    start=tp("sock:inet_sock_set_state", "sock_established"),
    end=Hook(FUNCTION, "inet_csk_accept", "accepted_sock", arg=0, at_return=True),
    meaning="time a new TCP connection waits in its listener's accept queue: from the end of "
    "the handshake (the child socket turns ESTABLISHED) until accept() returns it",
    matched_by="socket address",
)

#: The tracepoint stages: attachable on any kernel with BTF and the tracepoints.
BUILTIN_STAGES: tuple[Stage, ...] = (BACKLOG, STACK, SOCKET, QDISC, FORWARD, TCP_BACKLOG, TX_RING)
#: Attached only when named in --stages: tx_ring, whose start adds a device read to every
#: transmit, and which sees only real NICs.
OPT_IN_STAGES: tuple[Stage, ...] = (TX_RING,)
#: The built-in stages ``run`` attaches with no --stages.
DEFAULT_STAGES: tuple[Stage, ...] = tuple(s for s in BUILTIN_STAGES if s not in OPT_IN_STAGES)
#: The tracepoint stages a packet between two hosts passes when this host neither routes nor
#: bridges it (every default stage but those that end another's start, such as forward).
DIRECT_STAGES: tuple[Stage, ...] = tuple(s for s in DEFAULT_STAGES if s.starts_from is None)
#: The seed's stages: IP receive processing, on kernel function entries.
SEED_STAGES: tuple[Stage, ...] = (IP_RCV, IPV6_RCV)
#: Stages on kernel functions: need fentry or kprobes (``--hooks``); accept needs fexit.
FUNCTION_STAGES: tuple[Stage, ...] = (*SEED_STAGES, ACCEPT)
#: Every stage, in id order (the program's rows).
ALL_STAGES: tuple[Stage, ...] = tuple(sorted((*BUILTIN_STAGES, *FUNCTION_STAGES), key=lambda s: s.id))


def check_stage_ids(stages: tuple[Stage, ...]) -> None:
    """Stage ids index the program's per-stage rows: unique, contiguous from 0, in table order,
    and a fallback is the same stage (same id and name). ValueError otherwise."""
    ids = [s.id for s in stages]
    if ids != list(range(len(stages))):
        raise ValueError(f"stage ids must be 0..{len(stages) - 1} in table order, not {ids}")
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique: {names}")
    for s in stages:
        if s.fallback is not None and (s.fallback.id, s.fallback.name) != (s.id, s.name):
            raise ValueError(f"stage {s.name}: its fallback must keep its id and name")


check_stage_ids(ALL_STAGES)
STAGES_BY_NAME = {s.name: s for s in ALL_STAGES}
#: Stage ids the program reserves: every built-in stage has its own histogram rows.
N_STAGE_IDS = len(ALL_STAGES)

#: Drops are not a latency stage but can be selected like one.
DROPS = "drops"
DROP_HOOK = tp("skb:kfree_skb")
#: Ends pending skb starts that were freed before their end hook.
FREE_HOOK = tp("skb:consume_skb")
#: The NET_RX / NET_TX softirqs per CPU (bpf/softirq.h): not a stage of a packet, but
#: selected like one. Wait (raise -> entry) and runtime (entry -> exit), and NAPI polls
#: that used their whole budget.
SOFTIRQ = "softirq"
SOFTIRQ_HOOKS = (
    tp("irq:softirq_raise", "vec"),
    tp("irq:softirq_entry", "vec"),
    tp("irq:softirq_exit", "vec"),
    tp("napi:napi_poll", "napi"),
)
STAGE_NAMES: tuple[str, ...] = (*STAGES_BY_NAME, DROPS, SOFTIRQ)

#: The built-in tracepoint hooks attach as raw tracepoints: the program is handed the
#: tracepoint's own arguments (``ctx->args[i]``), and the kernel skips building the perf
#: record a classic tracepoint program gets (every field copied, the device name included,
#: on every packet) — on a saturated veth that alone is ≈ 8 % of the throughput. The C reads
#: these arguments at these positions; a kernel whose prototype (BTF ``btf_trace_<event>``)
#: does not start with them cannot use the hook, and says so.
RAW_ARGS: dict[str, tuple[str, ...]] = {
    "net:netif_rx": ("struct sk_buff *",),
    "net:netif_receive_skb": ("struct sk_buff *",),
    "net:net_dev_queue": ("struct sk_buff *",),
    "net:net_dev_start_xmit": ("struct sk_buff *",),
    "sock:sk_data_ready": ("struct sock *",),
    "sock:sock_recv_length": ("struct sock *", "int", "int"),
    "skb:kfree_skb": ("struct sk_buff *", "void *", "enum skb_drop_reason"),
    "skb:skb_copy_datagram_iovec": ("struct sk_buff *", "int"),
    "skb:consume_skb": ("struct sk_buff *",),
    "net:netif_receive_skb_list_entry": ("struct sk_buff *",),
    "net:napi_gro_receive_entry": ("struct sk_buff *",),
    "tcp:tcp_probe": ("struct sock *", "struct sk_buff *"),
    "net:netif_receive_skb_entry": ("struct sk_buff *",),
    "net:napi_gro_receive_exit": ("int",),
    "irq:softirq_raise": ("unsigned int",),
    "irq:softirq_entry": ("unsigned int",),
    "irq:softirq_exit": ("unsigned int",),
    "napi:napi_poll": ("struct napi_struct *", "int", "int"),
    "sock:inet_sock_set_state": ("struct sock *", "int", "int"),
}


#: Functions hooked at their return, and the arguments the C reads there (fexit sees every
#: argument, then the return value).
#: The C reads the read's flags as the last of them.
RECVMSG_ARGS = ("struct socket *", "struct msghdr *", "long unsigned int", "int")  # sock, msg, size, flags
RETURN_ARGS: dict[str, tuple[str, ...]] = {
    "inet_recvmsg": RECVMSG_ARGS,
    "inet6_recvmsg": RECVMSG_ARGS,
    # (sk, flags, err, kern) on 6.1, (sk, arg) on 6.12: only the result is read.
    "inet_csk_accept": ("struct sock *",),
}


def custom_stage(name: str, direction: str, start, end, stage_id: int) -> Stage:
    """A user-defined stage (``custom_stages`` in the config file) as a table entry.

    ``start``/``end`` are ``config.CustomHook``: a tracepoint with its skb field, or a
    function with its skb argument. Both are matched by the skb address, like ip_rcv.
    """

    def hook(h) -> Hook:
        # "skb_nh": classified at the skb's network header, wherever the hook sits.
        if h.kind == TRACEPOINT:
            return Hook(TRACEPOINT, h.target, "skb_nh", field=h.skb_field)
        return Hook(FUNCTION, h.target, "skb_nh", arg=h.skb_arg)

    return Stage(
        name=name,
        id=stage_id,
        direction=direction,
        start=hook(start),
        end=hook(end),
        meaning=f"user-defined: {start.target} -> {end.target}",
        matched_by="skb address",
        user_defined=True,
    )
