/* otel-netlat: the socket stage, and the stack stage's end at a socket.
 *
 * When data is queued on a socket and its reader woken (sock:sk_data_ready, or the socket's
 * default callback sock_def_readable on kernels without that tracepoint), the skb it is
 * about ends its `stack` stage and starts its own `socket` wait, keyed by the skb and its
 * head. The wait ends when its reader gets it: a TCP segment at its first copy
 * (skb:skb_copy_datagram_iovec), a UDP datagram at the read that takes it (in queue order,
 * by a per-socket cursor); an skb freed unread is dropped (kfree_skb).
 * The start table is reached through starts_at() in netlat.c.
 */
#ifndef NETLAT_SOCK_H
#define NETLAT_SOCK_H

#include "filters.h"
#include "hist.h"
#include "netlat.h"
#include "slots.h"

#define TCP_LISTEN_ 10
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
/* How far back from the receive queue's tail a notification looks for the skb it is about.
 * On 6.18 UDP queues a batch under one lock, then calls sk_data_ready once per skb, each
 * time with the batch's last skb at the tail. */
#define NETLAT_QUEUE_WALK 8

/* The skb a notification is about: from the queue's tail backwards, the first whose `stack`
 * start is still pending (queued, not yet handed on). 0: none (a reader took it already, or
 * TCP merged the new data into an skb already queued). */
static __always_inline u64 newly_queued(u64 queue, int stack_stage) {
    u64 skb = read_u64(queue + OFF_SKB_HEAD_PREV);
#pragma unroll
    for (int i = 0; i < NETLAT_QUEUE_WALK; i++) {
        if (!skb || skb == queue)
            return 0;
        struct start_slot *s = starts_at(slot_of(stack_stage, skb));
        if (s && s->obj == skb)
            return skb;
        skb = read_u64(skb + OFF_SKB_PREV);
    }
    return 0;
}

/* The first skb of a socket's queue, or 0. */
static __always_inline u64 queue_head(u64 queue) {
    u64 first = read_u64(queue);
    return first == queue ? 0 : first;
}

#ifdef NETLAT_SOCKET_STAGE
/* The skb a UDP socket's next read takes: its reader queue's head, else its receive queue's
 * (udp_recvmsg moves the receive queue into the reader queue when that one is empty). */
static __always_inline u64 udp_next_read(u64 sk) {
    u64 first = queue_head(sk + OFF_UDP_READER_QUEUE);
    return first ? first : queue_head(sk + OFF_SK_RECEIVE_QUEUE);
}
#endif

/* One queued skb handed on: its stack start ends (a sample; a tcp_backlog sample instead
 * when `backlogged`), its socket wait starts, under the same identity and with the packet's
 * own classification (and timed or not as its stack start was). `*now`: the notification's
 * clock read, made by the first timed skb (0 until then). 0: it was no pending start. */
static __always_inline int hand_over(u64 skb, int end_stage, int start_stage, u64 *now, int passes,
                                     int backlogged) {
    struct start_slot copy = {};
    if (take_start(end_stage, skb, &copy) <= 0)
        return 0;
    if (copy.ts && !*now)
        *now = bpf_ktime_get_ns();
    u64 at = copy.ts ? *now : 0;
#ifdef NETLAT_STAGE_TCP_BACKLOG
    if (backlogged)
        hand_off(end_stage, NETLAT_STAGE_TCP_BACKLOG, NETLAT_OUT_BACKLOGGED, &copy, at);
    else
#endif
        record_sample(end_stage, &copy, at);
    if (start_stage < 0)
        return 1;
    if (!passes) {
        count_skip(start_stage, NETLAT_SKIP_FILTERED);
        return 1;
    }
    struct pkt_meta m = {};
    m.net_type = copy.net_type;
    m.transport = copy.transport;
    ADDR_COPY(&m, &copy);
    stage_start(start_stage, skb, at, (u32)read_u64(skb + OFF_SKB_HEAD), &m);
    return 1;
}

/* A queued skb's packet, classified at its network header (set once the stack saw it). */
static __always_inline int classify_queued(u64 skb, struct pkt_meta *m, u64 *head) {
    struct skb_fields f = {};
    read_skb_fields(skb, &f);
    *head = f.head;
    u64 l3 = l3_at(&f, L3_NH);
    return l3 ? parse_l3(l3, f.proto, m) : -1;
}

/* A socket's protocol (sk_protocol is a bit field before Linux 5.6: there 0, and neither UDP
 * reads nor TCP backlog waits are told apart). */
static __always_inline u16 sk_proto(u64 sk) {
#ifdef OFF_SK_PROTOCOL
    return read_u16(sk + OFF_SK_PROTOCOL);
#else
    return 0;
#endif
}

static __always_inline int sk_is_udp(u64 sk) { return sk_proto(sk) == IPPROTO_UDP_; }

/* A TCP socket whose lock an application holds: release_sock is processing the segments
 * that arrived meanwhile from the socket's backlog (sk_data_ready runs with it still owned). */
static __always_inline int tcp_backlogged(u16 proto, u64 sk) {
#ifdef NETLAT_STAGE_TCP_BACKLOG
    return proto == IPPROTO_TCP_ && read_u32(sk + OFF_SK_LOCK_OWNED) != 0;
#else
    return 0;
#endif
}

#ifdef NETLAT_SOCKET_STAGE
/* A UDP socket's cursor slot. Its owner is not stored: `check` is `next` sealed with the
 * socket's address, so a slot written for another socket (two sockets on one slot), or torn
 * by two CPUs writing it at once, is no cursor of this socket: never a datagram of another
 * socket taken as this one's. A socket that loses its slot takes nothing on its reads until
 * its next notification claims a slot again; the entries of the datagrams it read meanwhile
 * end as overwritten or evicted when their addresses are reused (counted, not sampled). */
static __always_inline u64 udp_cursor_seal(u64 sk) { return (sk * 0x9E3779B97F4A7C15ULL) | 1; }

static __always_inline struct udp_cursor *udp_cursor_slot(u64 sk) {
    return udp_cursor_at((u32)((sk * 0x9E3779B97F4A7C15ULL) >> (64 - NETLAT_UDP_CURSORS_SHIFT)));
}

/* `c` is `sk`'s cursor. */
static __always_inline int udp_cursor_owned(struct udp_cursor *c, u64 sk) {
    u64 next = c->next, check = c->check;
    return (next ^ check) == udp_cursor_seal(sk);
}

static __always_inline void udp_cursor_set(struct udp_cursor *c, u64 sk, u64 next) {
    c->next = next;
    c->check = next ^ udp_cursor_seal(sk);
}
#endif

/* A UDP socket with a measured datagram: if it had no cursor, or its queue was empty, its
 * next read takes the head of its queues now. */
static __always_inline void udp_cursor_init(u64 sk) {
#ifdef NETLAT_SOCKET_STAGE
    struct udp_cursor *c = udp_cursor_slot(sk);
    if (c && (!udp_cursor_owned(c, sk) || !c->next))
        udp_cursor_set(c, sk, udp_next_read(sk));
#endif
}

/* The socket stage alone (without stack, nothing to hand over from): the skb at the queue's
 * tail starts its wait, unless it has one already. A batch queued under one lock before its
 * notifications is seen only by its last skb: select stack too for every skb of it. */
static __always_inline void socket_start_at_tail(u64 sk, int start_stage) {
    u64 queue = sk + OFF_SK_RECEIVE_QUEUE;
    u64 skb = read_u64(queue + OFF_SKB_HEAD_PREV);
    if (start_stage < 0 || !skb || skb == queue)
        return;
    struct start_slot *s = starts_at(slot_of(start_stage, skb));
    if (s && s->obj == skb)
        return;
    if (!sk_passes(sk, skb, queue)) {
        count_skip(start_stage, NETLAT_SKIP_FILTERED);
        return;
    }
    struct pkt_meta m = {};
    u64 head = 0;
    if (classify_queued(skb, &m, &head)) {
        count_skip(start_stage, NETLAT_SKIP_NON_IP);
        return;
    }
    stage_start(start_stage, skb, start_time(0), (u32)head, &m);
    if (sk_is_udp(sk))
        udp_cursor_init(sk);
}

#ifdef NETLAT_END_tcp_tcp_probe
/* tcp:tcp_probe, at the start of tcp_rcv_established: a segment without payload (a pure ACK;
 * SYN and FIN each take a sequence number) is freed there without a tracepoint, never
 * queued. Its stack start ends now (not_queued), so it cannot linger and pair with a later
 * skb at its address. */
static __always_inline void tcp_segment_seen(u32 stack_stage, u64 sk, u64 skb) {
    u64 cb = skb + OFF_SKB_CB;
    if (read_u32(cb + OFF_TCP_CB_SEQ) == read_u32(cb + OFF_TCP_CB_END_SEQ)) {
        stage_abort(stack_stage, skb, NETLAT_OUT_NOT_QUEUED);
        return;
    }
    /* A segment with data: remember it for its socket's notification (same CPU, same call). */
    struct tcp_arrival *a = tcp_arrival_here();
    struct start_slot *s = starts_at(slot_of(stack_stage, skb));
    if (!a || !s || s->obj != skb)
        return;
    a->sk = sk;
    a->skb = skb;
    a->ts = s->ts;
}

/* At a TCP socket's notification: the segment tcp_probe saw arrive on it, if its start is
 * still the one seen then and no walk of the queue handed it over (TCP merged its data into
 * the skb at the tail and freed it). Its protocol processing is a sample; its data's socket
 * wait is the tail skb's, which already has one. */
static __always_inline int tcp_merged_arrival(u64 sk, int end_stage, u64 *now, int backlogged) {
    struct tcp_arrival *a = tcp_arrival_here();
    if (!a || a->sk != sk)
        return 0;
    u64 skb = a->skb;
    u64 ts = a->ts;
    a->sk = 0;
    struct start_slot *s = starts_at(slot_of(end_stage, skb));
    if (!s || s->obj != skb || s->ts != ts)
        return 0; /* handed over by the walk, or a new packet's start since */
    return hand_over(skb, end_stage, -1, now, 1, backlogged);
}
#endif

#ifdef NETLAT_START_net_netif_receive_skb
/* A UDP notification whose skb the tail walk did not find: on 6.18 the CPU that queues a UDP
 * batch notifies once per skb of it after unlocking, and the batch begins with that CPU's own
 * skb, the UDP one whose `stack` start it made last. Batches other CPUs queued and notified
 * meanwhile can bury it beyond the walk (a producer interrupted or preempted between its
 * unlock and its notifications). Its own skb, if still pending and on a list, is the oldest
 * of its batch: the caller walks forward (newer) from it. Used once: a later notification
 * finds the rest by the tail walk or not at all (counted tail_not_matched). */
static __always_inline u64 own_udp_batch(int stack_stage) {
    u64 *own = udp_arrival_here();
    if (!own || !*own)
        return 0;
    u64 skb = *own;
    *own = 0;
    if (!read_u64(skb + OFF_SKB_NEXT)) /* not queued (yet): a notification about its clone */
        return 0;
    struct start_slot *s = starts_at(slot_of(stack_stage, skb));
    return s && s->obj == skb ? skb : 0;
}
#endif

/* At most this many skbs handed on per notification: a batch queued under one lock whose
 * other notifications came before its skbs were all linked, or were lost to a reader. */
#define NETLAT_HANDOVER_MAX 4

/* Data queued on socket `sk` and its reader woken (sock:sk_data_ready, or on kernels without
 * that tracepoint the socket's default callback sock_def_readable). The skb it is about ends
 * `end_stage` (stack) and starts `start_stage` (socket) under the same skb and identity, with
 * the packet's own classification. -1: no role. A listener's notification (a new connection)
 * is about no data. */
static __always_inline void on_data_ready(u64 sk, int end_stage, int start_stage) {
#if OFF_SK_STATE == OFF_SK_FAMILY + 2 /* skc_family, skc_state: adjacent, one read */
    u32 fs = read_u32(sk + OFF_SK_FAMILY);
    u16 family = (u16)fs;
    u8 state = (u8)(fs >> 16);
#else
    u16 family = read_u16(sk + OFF_SK_FAMILY);
    u8 state = read_u8(sk + OFF_SK_STATE);
#endif
    if (family != AF_INET_ && family != AF_INET6_)
        return;
    if (state == TCP_LISTEN_)
        return;
    if (end_stage < 0) { /* no stack stage to hand over from */
        socket_start_at_tail(sk, start_stage);
        return;
    }
    u64 list = sk + OFF_SK_RECEIVE_QUEUE;
    u16 proto = sk_proto(sk);
    int udp = proto == IPPROTO_UDP_;
    int backlogged = tcp_backlogged(proto, sk);
    u64 skb = newly_queued(list, end_stage);
    if (!skb && udp) { /* a reader on another CPU moved the queue into its reader queue */
        list = sk + OFF_UDP_READER_QUEUE;
        skb = newly_queued(list, end_stage);
    }
    u32 step = OFF_SKB_PREV; /* from the tail: older skbs of the same batch */
#ifdef NETLAT_START_net_netif_receive_skb
    if (!skb && udp) {
        skb = own_udp_batch(end_stage);
        step = OFF_SKB_NEXT; /* from a batch's first skb: the newer ones */
    }
#endif
    /* Constant 1 unless a filter is configured: then an unmatched tail of a socket outside
     * the filter is none of our business either. */
    int passes = sk_passes(sk, skb ? skb : read_u64(list + OFF_SKB_HEAD_PREV), list);
    u64 now = 0; /* read by the first timed skb handed on */
    int taken = 0;
#pragma unroll
    for (int i = 0; i < NETLAT_HANDOVER_MAX; i++) {
        if (!skb || skb == list || !hand_over(skb, end_stage, start_stage, &now, passes, backlogged))
            break;
        taken++;
        skb = read_u64(skb + step); /* another skb of the same batch, if pending */
    }
#ifdef NETLAT_END_tcp_tcp_probe
    if (proto == IPPROTO_TCP_)
        taken += tcp_merged_arrival(sk, end_stage, &now, backlogged);
#endif
    if (!taken) {
        if (passes)
            count_outcome(end_stage, NETLAT_OUT_TAIL_NOT_MATCHED);
        return;
    }
    if (udp && start_stage >= 0)
        udp_cursor_init(sk);
}

/* The socket stage's entry for `skb`, taken if it is that skb still (same head: not a new
 * skb at a freed one's address, which counts as overwritten). 1: taken, ready to record. */
static __always_inline int take_socket_entry(u32 stage, u64 skb, struct start_slot *copy) {
    if (take_start(stage, skb, copy) <= 0)
        return 0;
    if (copy->tag != (u32)read_u64(skb + OFF_SKB_HEAD)) {
        count_outcome(stage, NETLAT_OUT_OVERWRITTEN);
        return 0;
    }
    return 1;
}

/* skb:skb_copy_datagram_iovec: a queued TCP segment's data is copied to its reader: its wait
 * ends at its first copy (a segment read in pieces: when its reader starts on it). UDP reads
 * end at the read's return instead (small datagrams are copied without this tracepoint). */
static __always_inline void socket_copy_end(u32 stage, u64 skb) {
    struct start_slot *s = starts_at(slot_of(stage, skb));
    if (!s || s->obj != skb || s->transport != NETLAT_TR_TCP)
        return;
    struct start_slot copy = {};
    if (take_socket_entry(stage, skb, &copy))
        record_sample(stage, &copy, end_clock(&copy));
}

/* A read of `ret` bytes from socket `sk` returned (sock:sock_recv_length, or the return of
 * inet_recvmsg / inet6_recvmsg). A UDP read takes one datagram, in queue order: the one the
 * socket's cursor named, if the queue's head has moved on from it. MSG_PEEK and
 * MSG_ERRQUEUE reads take nothing. */
static __always_inline void socket_read_end(u32 stage, u64 sk, int ret, int flags) {
#ifdef NETLAT_SOCKET_STAGE
    if (ret < 0 || (flags & (MSG_PEEK_ | MSG_ERRQUEUE_)))
        return;
    struct udp_cursor *c = udp_cursor_slot(sk);
    if (!c)
        return;
    u64 read = c->next, check = c->check; /* one snapshot: the seal covers both */
    if ((read ^ check) != udp_cursor_seal(sk))
        return; /* not a UDP socket with a measured datagram (or its cursor slot was taken) */
    u64 next = udp_next_read(sk);
    udp_cursor_set(c, sk, next);
    if (!read || read == next)
        return;
    struct start_slot copy = {};
    if (take_socket_entry(stage, read, &copy))
        record_sample_of(stage, &copy, end_clock(&copy), sk); /* `read` is freed by now */
#endif
}

#endif /* NETLAT_SOCK_H */
