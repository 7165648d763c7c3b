/* otel-netlat: the socket stage and the skb stages that end at a socket.
 *
 * When data is queued on a socket and its reader woken (sock:sk_data_ready, or the socket's
 * default callback sock_def_readable on kernels without that tracepoint), the skb now at the
 * tail of the receive queue ends its stage, and the socket's own stage starts, keyed by the
 * socket's address and told apart from an earlier socket at that address by its inode. A
 * read that returns data (sock:sock_recv_length, or the return of inet_recvmsg /
 * inet6_recvmsg) ends it.
 * The start table is reached through starts_at() in netlat.c.
 */
#ifndef NETLAT_SOCK_H
#define NETLAT_SOCK_H

#include "filters.h"
#include "hist.h"
#include "netlat.h"
#include "slots.h"

/* The socket's inode number: tells two lives of one socket address apart. */
static __always_inline u32 sock_tag(u64 sk) {
    u64 sock = read_u64(sk + OFF_SK_SOCKET);
    if (!sock)
        return 1; /* no struct socket (kernel socket): a fixed tag */
    u32 ino = (u32)read_u64(sock + OFF_SOCKET_INODE_INO);
    return ino ? ino : 1;
}

#define TCP_LISTEN_ 10

/* Data queued on socket `sk` and its reader woken (sock:sk_data_ready, or on kernels without
 * that tracepoint the socket's default callback sock_def_readable). Ends `end_stage` at the
 * skb now at the tail of the receive queue; starts `start_stage` for the socket. -1: no role. */
static __always_inline void on_data_ready(u64 sk, int end_stage, int start_stage) {
    u16 family = read_u16(sk + OFF_SK_FAMILY);
    if (family != AF_INET_ && family != AF_INET6_)
        return;
    /* A listener is notified of each new connection: no data was queued. */
    if (read_u8(sk + OFF_SK_STATE) == TCP_LISTEN_)
        return;
    u64 now = bpf_ktime_get_ns();
    /* The skb just queued is the tail of the receive queue (queue.prev). */
    u64 queue = sk + OFF_SK_RECEIVE_QUEUE;
    u64 tail = read_u64(queue + OFF_SKB_HEAD_PREV);
    /* Constant 1 unless a filter is configured: then an unmatched tail of a socket outside
     * the filter is none of our business either. */
    int passes = sk_passes(sk, tail, queue);
    if (end_stage >= 0) {
        if ((tail == queue || stage_end(end_stage, tail, now) == 0) && passes)
            count_outcome(end_stage, NETLAT_OUT_TAIL_NOT_MATCHED);
    }
    if (start_stage < 0)
        return;
    u32 stage = start_stage;
    if (!passes) {
        count_skip(stage, NETLAT_SKIP_FILTERED);
        return;
    }
    struct pkt_meta m = {};
#ifdef OFF_SK_PROTOCOL
    u16 proto = read_u16(sk + OFF_SK_PROTOCOL);
#else
    u16 proto = 0; /* a bit field before Linux 5.6, which has no sock:* tracepoints either */
#endif
    m.net_type = family == AF_INET6_ ? NETLAT_NT_IPV6 : NETLAT_NT_IPV4;
    m.transport = proto == 6 ? NETLAT_TR_TCP
                : proto == 17 ? NETLAT_TR_UDP
                : (proto == 1 || proto == 58) ? NETLAT_TR_ICMP
                : NETLAT_TR_OTHER;
    u32 tag = sock_tag(sk);
    struct start_slot *s = starts_at(slot_of(stage, sk));
    if (s && s->obj == sk && s->tag == tag) {
        /* Older unread data is already waiting: the wait is measured from that one. */
        count_start(hist_for(stage, m.net_type, m.transport));
        count_outcome(stage, NETLAT_OUT_COALESCED);
        return;
    }
    stage_start(stage, sk, now, tag, &m);
}

/* A read of `ret` bytes from socket `sk` returned: the socket stage ends (positive reads
 * only, not MSG_PEEK/MSG_ERRQUEUE, as sock:sock_recv_length reports them). */
static __always_inline void socket_read_end(u32 stage, u64 sk, int ret, int flags) {
    if (ret <= 0 || (flags & (MSG_PEEK_ | MSG_ERRQUEUE_)))
        return;
    struct start_slot copy = {};
    /* Most reads find no pending notification (several reads per datagram, or data queued
     * before the agent started): read the clock only when there is a start to end. */
    if (take_start(stage, sk, &copy) <= 0)
        return;
    u64 now = bpf_ktime_get_ns();
    if (copy.tag != sock_tag(sk)) {
        count_outcome(stage, NETLAT_OUT_OVERWRITTEN); /* a dead socket's entry: no sample */
        return;
    }
    record_sample(stage, &copy, now);
}

#endif /* NETLAT_SOCK_H */
