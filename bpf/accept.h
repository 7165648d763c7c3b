/* otel-netlat: the accept stage, a new TCP connection's wait in its listener's accept queue.
 *
 * Start: sock:inet_sock_set_state turning a child socket from SYN_RECV to ESTABLISHED
 * (tcp_rcv_state_process, once the handshake's last ACK made it a full socket; the child was
 * put in the accept queue just before). End: the return of inet_csk_accept (fexit), which
 * hands that socket to accept(). Matched by the socket's address. A child that closes while
 * queued (reset, listener closed) ends `dropped`. Classified from the socket: its family
 * (an IPv4 peer of an IPv6 listener, v4-mapped, is `ipv6`), transport TCP; its addresses
 * (peer → local) when address labels are on.
 */
#ifndef NETLAT_ACCEPT_H
#define NETLAT_ACCEPT_H

#include "addr.h"
#include "filters.h"
#include "netlat.h"
#include "slots.h"
#include "sock.h"

#define TCP_ESTABLISHED_ 1
#define TCP_SYN_RECV_ 3
#define TCP_CLOSE_ 7

/* What the accept stage's start records of socket `sk`: net type, TCP, the peer → local pair. */
static __always_inline void accept_meta(u64 sk, struct pkt_meta *m) {
    u16 family = read_u16(sk + OFF_SK_FAMILY);
    m->net_type = family == AF_INET6_ ? NETLAT_NT_IPV6 : NETLAT_NT_IPV4;
    m->transport = NETLAT_TR_TCP;
#if defined(NETLAT_ADDR_LABELS) && defined(OFF_SK_DADDR) && defined(OFF_SK_V6_DADDR)
    u8 peer[16] = {}, local[16] = {};
    int ipv6 = family == AF_INET6_;
    sock_ends(sk, ipv6, peer, local);
    if (ipv6)
        ADDR_FROM_HEADER(m, peer, local, 16, NETLAT_IPV6_PREFIX);
    else
        ADDR_FROM_HEADER(m, peer, local, 4, NETLAT_IPV4_PREFIX);
#endif
}

/* sock:inet_sock_set_state(sk, oldstate, newstate). */
static __always_inline void accept_state_change(u32 stage, u64 sk, int oldstate, int newstate) {
    if (newstate == TCP_CLOSE_) { /* closed while queued: no accept will come */
        stage_abort(stage, sk, NETLAT_OUT_DROPPED);
        return;
    }
    if (oldstate != TCP_SYN_RECV_ || newstate != TCP_ESTABLISHED_ || sk_proto(sk) != IPPROTO_TCP_)
        return;
    /* The socket's namespace; no queued packet to take an interface from (tail == queue), so
     * not measured under --interface filters. */
    if (!sk_passes(sk, 0, 0))
        return;
    struct pkt_meta m = {};
    accept_meta(sk, &m);
    stage_start(stage, sk, start_time(0), 0, &m);
}

#endif /* NETLAT_ACCEPT_H */
