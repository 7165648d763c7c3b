/* otel-netlat: stages whose object is an skb.
 *
 * A start hook reads the skb once, classifies its packet (parse.h), applies the filters and
 * records a start under the skb's address; an end hook at a later point takes it (slots.h).
 * An skb freed before its end hook (skb:kfree_skb, skb:consume_skb) ends every pending
 * start of it without a sample, so no entry waits for an end that cannot come.
 */
#ifndef NETLAT_SKB_H
#define NETLAT_SKB_H

#include "filters.h"
#include "hist.h"
#include "netlat.h"
#include "parse.h"
#include "slots.h"

#ifdef NETLAT_START_net_netif_receive_skb
/* The receive (`stack`) start at net:netif_receive_skb. The same packet received again
 * (bridged up to the host's own bridge device, a tunnel decapsulated) is still in the host's
 * stack: its first start stands. A new packet at a freed skb's address has another head or
 * IP header (`tag`): that one replaces the entry, counted overwritten. */
static __always_inline void rx_start(u64 skb, u64 now, u32 tag, struct pkt_meta *m) {
    if (m->transport == NETLAT_TR_UDP) { /* for its socket's notification (sock.h) */
        u64 *own = udp_arrival_here();
        if (own)
            *own = skb;
    }
    struct start_slot *s = starts_at(slot_of(NETLAT_START_net_netif_receive_skb, skb));
    if (s && s->obj == skb && s->tag == tag)
        return;
    stage_start(NETLAT_START_net_netif_receive_skb, skb, now, tag, m);
}
#endif

/* Start of an skb-based stage: classify, filter, record. `l3`/`proto`/`head` come from the
 * caller's read of the skb (read_skb_fields); `now` the hook's clock read, or 0 (read here
 * if the packet is timed). The entry's tag is the packet's identity beyond the skb address:
 * its head buffer and an L3 header fingerprint. */
static __always_inline void start_skb(u32 stage, u64 skb, u64 l3, u16 proto, u64 head, u64 now, int where) {
    struct pkt_meta m = {};
    if (!l3 || parse_l3(l3, proto, &m)) {
        count_skip(stage, NETLAT_SKIP_NON_IP);
        return;
    }
    if (!skb_passes(skb)) {
        count_skip(stage, NETLAT_SKIP_FILTERED);
        return;
    }
    if (where == L3_RX)
        SLOW_NOTE_SOURCE(skb, head, &m);
    u32 tag = (u32)head ^ ((u32)m.fp << 16);
    u64 ts = start_time(now);
#ifdef NETLAT_START_net_netif_receive_skb
    if (stage == NETLAT_START_net_netif_receive_skb) {
        rx_start(skb, ts, tag, &m);
        return;
    }
#endif
    stage_start(stage, skb, ts, tag, &m);
}

/* Start of an skb-based stage at a hook: one read of the skb, then classify and record. */
static __always_inline void start_skb_at(u32 stage, u64 skb, int where, u64 now) {
    struct skb_fields f = {};
    read_skb_fields(skb, &f);
    u64 l3 = l3_at(&f, where);
    start_skb(stage, skb, l3, f.proto, f.head, now, where);
}

#define TCQ_F_MQROOT_ 8 /* a multiqueue root (mq, mqprio): each transmit queue has its own qdisc */

/* Whether the skb's transmit queue has a qdisc that queues. net:net_dev_queue fires in
 * __dev_queue_xmit after the queue is picked and before `if (q->enqueue)`: a noqueue qdisc
 * (veth and lo by default) has no enqueue, and the driver gets the packet at once.
 * The device's root qdisc decides in one read of its enqueue and flags: a root that queues
 * is every queue's qdisc (single-queue devices, and a classful root over many queues); a
 * root without enqueue is noqueue unless it is a multiqueue root, whose queues each have a
 * qdisc of their own: only then the queue's own qdisc is read (two more dependent reads). */
static __always_inline int txq_queues(u64 skb) {
    u64 dev = read_u64(skb + OFF_SKB_DEV);
    u64 root = dev ? read_u64(dev + OFF_DEV_QDISC) : 0;
    if (!root)
        return 1; /* unknown: measure, as before */
#if OFF_QDISC_FLAGS > OFF_QDISC_ENQUEUE && OFF_QDISC_FLAGS - OFF_QDISC_ENQUEUE <= 28
    u32 q[8] = {}; /* enqueue .. flags in one read (adjacent on every kernel so far) */
    bpf_probe_read_kernel(q, OFF_QDISC_FLAGS - OFF_QDISC_ENQUEUE + 4, (void *)(root + OFF_QDISC_ENQUEUE));
    u64 enqueue = ((u64)q[1] << 32) | q[0];
    u32 flags = q[(OFF_QDISC_FLAGS - OFF_QDISC_ENQUEUE) / 4];
#else
    u64 enqueue = read_u64(root + OFF_QDISC_ENQUEUE);
    u32 flags = read_u32(root + OFF_QDISC_FLAGS);
#endif
    if (enqueue)
        return 1;
    if (!(flags & TCQ_F_MQROOT_))
        return 0;
    u64 txqs = read_u64(dev + OFF_DEV_TX);
    if (!txqs)
        return 1; /* unknown: measure, as before */
    u64 txq = txqs + (u64)read_u16(skb + OFF_SKB_QUEUE_MAPPING) * SIZEOF_NETDEV_QUEUE;
    u64 own = read_u64(txq + OFF_TXQ_QDISC);
    return !own || read_u64(own + OFF_QDISC_ENQUEUE) != 0;
}

/* A packet received on this host leaves through net:net_dev_queue: routed or bridged (a
 * pod's packet crossing the node, kube-proxy's rules, conntrack). Its receive (`stack`) start
 * ends here as `forwarded`, and the wait is a `forward` sample: each hop measured once. */
static __always_inline void forward_end(u32 stack_stage, u32 forward_stage, u64 skb) {
    struct start_slot *s = starts_at(slot_of(stack_stage, skb));
    if (!s || s->obj != skb)
        return; /* the common case: a packet this host sends, never received */
    if (!read_u32(skb + OFF_SKB_SKB_IIF)) {
        /* A packet generated here (skb_iif 0) at the address of a received skb that was freed
         * unseen (e.g. merged into a TCP socket's backlog): never a forward sample. */
        stage_abort(stack_stage, skb, NETLAT_OUT_OVERWRITTEN);
        return;
    }
    struct start_slot copy = {};
    if (take_start(stack_stage, skb, &copy) > 0) /* the clock only now: most packets are not forwarded */
        hand_off(stack_stage, forward_stage, NETLAT_OUT_FORWARDED, &copy, end_clock(&copy));
}

#if defined(NETLAT_START_net_napi_gro_receive_entry) && defined(SIZEOF_NETDEV_RX_QUEUE)
#define NETLAT_RPS_STARTS 1
/* Whether the skb's receive queue steers packets to other CPUs (an RPS map or an RFS flow
 * table): then netif_receive_skb / GRO's flush queues it on a CPU backlog, with no
 * tracepoint. Four reads per packet, no map operation, on queues that do not steer. */
static __always_inline int rxq_steers(u64 skb) {
    u64 dev = read_u64(skb + OFF_SKB_DEV);
    u64 rx = dev ? read_u64(dev + OFF_DEV_RX) : 0;
    if (!rx)
        return 0;
    u16 qm = read_u16(skb + OFF_SKB_QUEUE_MAPPING); /* the rx queue + 1, 0 when unrecorded */
    u64 rxq = rx + (u64)(qm ? qm - 1 : 0) * SIZEOF_NETDEV_RX_QUEUE;
    return read_u64(rxq + OFF_RXQ_RPS_MAP) || read_u64(rxq + OFF_RXQ_RPS_FLOW_TABLE);
}

/* A NAPI driver hands a packet to the stack (GRO, netif_receive_skb, or a list of them): on
 * a queue that steers, it will wait in a CPU backlog, so `backlog` starts here. 1: started. */
static __always_inline int rps_start(u32 stage, u64 skb) {
    if (!rxq_steers(skb))
        return 0;
    start_skb_at(stage, skb, L3_RX, 0);
    return 1;
}
#endif

#ifdef NETLAT_GSO_SEGMENTS
/* How long a segment may wait for transmission after its parent was split (ns). */
#define NETLAT_GSO_WINDOW_NS 2000000000ULL

/* A TCP segment's sequence number, from its header (skb->cb belongs to the qdisc here). */
static __always_inline u32 tcp_seq_of(u64 skb) {
    u64 th = read_u64(skb + OFF_SKB_HEAD) + read_u16(skb + OFF_SKB_TRANSPORT_HEADER);
    u8 b[4] = {};
    bpf_probe_read_kernel(b, 4, (void *)(th + 4));
    return (u32)b[0] << 24 | (u32)b[1] << 16 | (u32)b[2] << 8 | b[3];
}

/* One parent in the ring of its flow's sequence block `block`. */
static __always_inline void gso_block_add(u32 hash, u32 block, struct start_slot *copy, u32 seq, u32 end) {
    struct gso_key k = {.hash = hash, .block = block};
    struct gso_ring *r = gso_ring_make(&k);
    if (!r)
        return;
    u32 i = r->next & (NETLAT_GSO_RING - 1);
    r->p[i].ts = copy->ts;
    r->p[i].seq = seq;
    r->p[i].end = end;
    r->next = i + 1;
    r->net_type = copy->net_type;
    r->transport = copy->transport;
    ADDR_COPY(r, copy);
}

/* UDP GSO segments carry no sequence number: an IPv4 parent's segments take consecutive IP
 * IDs from its own, and its flow is keyed by its addresses and ports (neither the flow hash
 * nor, once split, the socket reference is on the parent). All in one ring per flow. */
#define NETLAT_GSO_UDP_BLOCK 0xFFFFFFFFu

/* An IPv4 UDP packet's flow key and IP ID, from its headers. 0: not IPv4 UDP. */
static __always_inline int udp4_flow_of(u64 skb, u32 *key, u16 *id) {
    u64 l3 = read_u64(skb + OFF_SKB_HEAD) + read_u16(skb + OFF_SKB_NETWORK_HEADER);
    u8 h[24] = {};
    if (bpf_probe_read_kernel(h, 24, (void *)l3) || h[0] != 0x45 || h[9] != 17)
        return 0; /* not IPv4 UDP without options */
    u32 s = 0, d = 0, ports = 0;
    __builtin_memcpy(&s, h + 12, 4);
    __builtin_memcpy(&d, h + 16, 4);
    __builtin_memcpy(&ports, h + 20, 4);
    *key = (s ^ (d << 16 | d >> 16) ^ ports) | 1; /* never 0 */
    *id = (u16)h[4] << 8 | h[5];
    return 1;
}

/* A split parent: remember its qdisc start and range in its flow's ring(s). TCP: by flow
 * hash (TCP's segmentation moves the socket reference to the last segment, so the parent's
 * is gone when it is freed; the hash is copied to every one) and 64 KiB sequence block, the
 * blocks its sequence range meets (a BIG TCP parent over 64 KiB may meet a third: its
 * segments there are not found). IPv4 UDP: by addresses and ports, its IP ID range. */
static __always_inline void gso_remember(struct start_slot *copy, u64 skb, u64 shinfo, u16 gso_size) {
    u16 segs = read_u16(shinfo + OFF_SHINFO_GSO_SEGS);
    if (!segs)
        return;
    u32 hash = 0, seq = 0, end = 0, first = NETLAT_GSO_UDP_BLOCK, last = NETLAT_GSO_UDP_BLOCK;
    if (copy->transport == NETLAT_TR_TCP) {
        hash = read_u32(skb + OFF_SKB_HASH);
        seq = tcp_seq_of(skb);
        end = seq + (u32)segs * gso_size;
        first = seq >> NETLAT_GSO_BLOCK_SHIFT;
        last = (end - 1) >> NETLAT_GSO_BLOCK_SHIFT;
    } else {
        u16 id = 0;
        if (!udp4_flow_of(skb, &hash, &id))
            return;
        seq = id;
        end = seq + segs;
    }
    if (!hash)
        return;
    u64 now = bpf_ktime_get_ns();
#ifdef NETLAT_SAMPLE_EVERY
    /* An untimed parent's segments are counted all the same: its ring entry holds the time
     * of its split (for the window), odd; a timed one's start time, made even. */
    copy->ts = copy->ts ? copy->ts & ~1ULL : now | 1;
#endif
    gso_block_add(hash, first, copy, seq, end);
    if (last != first)
        gso_block_add(hash, last, copy, seq, end);
    u64 *until = gso_active_until();
    if (until)
        *until = now + NETLAT_GSO_WINDOW_NS;
}

/* A transmit without a qdisc start: if it is a segment of a parent split after it was
 * queued, its qdisc wait is from the parent's start (the newest parent whose range holds its
 * sequence number or IP ID: a retransmitted range belongs to its newest copy). The clock is
 * read only while a split parent's segments may be in flight. The sample's end time, or 0. */
static __always_inline u64 gso_segment_end(u32 qdisc_stage, u64 skb) {
    u64 *until = gso_active_until();
    u64 deadline = until ? *until : 0;
    if (!deadline)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (now > deadline) { /* the window closed: later transmits skip the clock (a new parent reopens it) */
        __sync_val_compare_and_swap(until, deadline, 0);
        return 0;
    }
    struct gso_key k = {};
    u32 seq = 0, mask = 0xFFFFFFFFu;
    u16 id = 0;
    if (udp4_flow_of(skb, &k.hash, &id)) {
        k.block = NETLAT_GSO_UDP_BLOCK;
        seq = id;
        mask = 0xFFFF; /* IP IDs wrap at 16 bits */
    } else {
        k.hash = read_u32(skb + OFF_SKB_HASH);
        if (!k.hash)
            return 0;
        seq = tcp_seq_of(skb);
        k.block = seq >> NETLAT_GSO_BLOCK_SHIFT;
    }
    struct gso_ring *r = gso_ring_of(&k);
    if (!r)
        return 0;
    u32 next = r->next;
#pragma unroll
    for (int k = 1; k <= NETLAT_GSO_RING; k++) {
        u32 i = (next - k) & (NETLAT_GSO_RING - 1);
        u64 ts = r->p[i].ts;
        if (!ts || now - ts > NETLAT_GSO_WINDOW_NS ||
            ((seq - r->p[i].seq) & mask) >= ((r->p[i].end - r->p[i].seq) & mask))
            continue;
        struct start_slot copy = {};
        copy.obj = skb; /* the segment, alive here (a slow record reads it) */
        copy.ts = ts;
#ifdef NETLAT_SAMPLE_EVERY
        if (ts & 1)
            copy.ts = 0; /* an untimed parent's segment: counted `unsampled` */
#endif
        copy.net_type = r->net_type;
        copy.transport = r->transport;
        ADDR_COPY(&copy, r);
        struct pkt_meta m = {};
        m.net_type = copy.net_type;
        m.transport = copy.transport;
        ADDR_COPY(&m, &copy);
        hist_start(qdisc_stage, &m); /* each segment is a packet of the stage, and a sample */
        record_sample(qdisc_stage, &copy, now);
        return now;
    }
    return 0;
}
#endif

/* A queued GSO packet freed normally: software GSO (tbf_segment, validate_xmit_skb) split
 * it into new skbs and consumed it. Not `no_socket`: `segmented`. A TCP or IPv4 UDP parent's
 * segments are then measured from its start (gso_segment_end); IPv6 UDP ones are not. */
static __always_inline void gso_segmented(u32 qdisc_stage, u64 skb) {
    struct start_slot *s = starts_at(slot_of(qdisc_stage, skb));
    if (!s || s->obj != skb)
        return;
    u64 shinfo = read_u64(skb + OFF_SKB_HEAD) + read_u32(skb + OFF_SKB_END);
    u16 gso_size = read_u16(shinfo + OFF_SHINFO_GSO_SIZE);
    if (!gso_size)
        return;
    struct start_slot copy = {};
    if (take_start(qdisc_stage, skb, &copy) <= 0)
        return;
    count_outcome(qdisc_stage, NETLAT_OUT_SEGMENTED);
#ifdef NETLAT_GSO_SEGMENTS
    if (copy.transport == NETLAT_TR_TCP || (copy.transport == NETLAT_TR_UDP && copy.net_type == NETLAT_NT_IPV4))
        gso_remember(&copy, skb, shinfo, gso_size);
#endif
}

#ifdef NETLAT_START_net_net_dev_start_xmit
/* tx_ring's start: only on a device with a parent (a NIC on a bus). A virtual device (veth,
 * lo, bridge, tunnel) hands the skb on or frees it at once: counted as skipped. */
static __always_inline void tx_ring_start(u32 stage, u64 skb, u64 dev, u64 now) {
    if (!dev || !read_u64(dev + OFF_DEV_PARENT)) {
        if (skb_passes(skb))
            count_skip(stage, NETLAT_SKIP_VIRTUAL_DEVICE);
        return;
    }
    start_skb_at(stage, skb, L3_TX, now); /* 0: not read yet */
}
#endif

/* End every skb-based stage still pending for an skb that is being freed. */
static __always_inline void abort_skb_stages(u64 skb, u32 outcome) {
#ifdef NETLAT_SKB_STAGES
    u32 ids[] = {NETLAT_SKB_STAGES};
#pragma unroll
    for (int i = 0; i < sizeof(ids) / sizeof(ids[0]); i++)
        stage_abort(ids[i], skb, outcome);
#endif
}

#if defined(NETLAT_LIST_IPV4_STAGE) || defined(NETLAT_LIST_IPV6_STAGE)
/* GRO hands packets to the stack in lists (ip_list_rcv / ipv6_list_rcv), which never call
 * ip_rcv / ipv6_rcv: count the packets those stages cannot see, so the gap is a number and
 * not a silence. GRO's entry (napi_gro_receive) and drivers' netif_receive_skb_list are the
 * two ways into the list path. */
static __always_inline void count_list_path(u64 skb) {
    u16 proto = skb_proto(skb);
#ifdef NETLAT_LIST_IPV4_STAGE
    if (proto == ETH_P_IP_BE && skb_passes(skb))
        count_skip(NETLAT_LIST_IPV4_STAGE, NETLAT_SKIP_LIST_PATH);
#endif
#ifdef NETLAT_LIST_IPV6_STAGE
    if (proto == ETH_P_IPV6_BE && skb_passes(skb))
        count_skip(NETLAT_LIST_IPV6_STAGE, NETLAT_SKIP_LIST_PATH);
#endif
}
#endif

#endif /* NETLAT_SKB_H */
