/* otel-netlat: packet classification.
 *
 * What a start hook reads to learn which packet it holds: the sk_buff fields that locate its
 * L3 header, and from that header the network type (IPv4/IPv6), the transport (TCP, UDP,
 * ICMP, other) and, with address labels, the addresses. This is the only code that reads
 * packet bytes; the self-test probe runs it on test input, so the tests check the compiled
 * parser rather than a Python copy of it.
 */
#ifndef NETLAT_PARSE_H
#define NETLAT_PARSE_H

#include "addr.h"
#include "netlat.h"

static __always_inline u8 transport_of(u8 proto, u8 nt) {
    if (proto == 6)
        return NETLAT_TR_TCP;
    if (proto == 17)
        return NETLAT_TR_UDP;
    if ((nt == NETLAT_NT_IPV4 && proto == 1) || (nt == NETLAT_NT_IPV6 && proto == 58))
        return NETLAT_TR_ICMP;
    return NETLAT_TR_OTHER;
}

/* Classify the L3 packet at kernel address `l3` (proto is skb->protocol, big endian).
 * Returns 0 when it is IPv4/IPv6, -1 otherwise. IPv6 extension headers are walked up to
 * a fixed depth; non-first fragments are transport "other" (they carry no L4 header). */
/* With UDP slow records on the socket stage, the header read takes the 4 bytes after a
 * plain IPv4 / IPv6 header too: a UDP datagram's ports, for its record (bpf/slow.h). */
#ifdef NETLAT_SLOW_SOURCE
#define NETLAT_L4_PEEK 4
#else
#define NETLAT_L4_PEEK 0
#endif

static __always_inline int parse_l3(u64 l3, u16 proto, struct pkt_meta *m) {
    u8 hdr[40 + NETLAT_L4_PEEK] = {};
    if (proto == ETH_P_IP_BE) {
        if (bpf_probe_read_kernel(hdr, 20 + NETLAT_L4_PEEK, (void *)l3))
            return -1;
        m->net_type = NETLAT_NT_IPV4;
        if ((hdr[0] >> 4) != 4 || (hdr[0] & 0xf) < 5) { /* not (yet) an IPv4 header here */
            m->transport = NETLAT_TR_OTHER;
            return 0;
        }
        u16 frag = ((u16)hdr[6] << 8 | hdr[7]) & 0x1fff;
        m->transport = frag ? NETLAT_TR_OTHER : transport_of(hdr[9], NETLAT_NT_IPV4);
        m->fp = (u16)hdr[10] << 8 | hdr[11];
        ADDR_FROM_HEADER(m, hdr + 12, hdr + 16, 4, NETLAT_IPV4_PREFIX);
#ifdef NETLAT_SLOW_SOURCE
        __builtin_memcpy(m->src, hdr + 12, 4);
        if ((hdr[0] & 0xf) == 5 && m->transport == NETLAT_TR_UDP)
            m->sport = (u16)hdr[20] << 8 | hdr[21];
#endif
        return 0;
    }
    if (proto == ETH_P_IPV6_BE) {
        if (bpf_probe_read_kernel(hdr, 40 + NETLAT_L4_PEEK, (void *)l3))
            return -1;
        m->net_type = NETLAT_NT_IPV6;
        if ((hdr[0] >> 4) != 6) { /* not (yet) an IPv6 header here */
            m->transport = NETLAT_TR_OTHER;
            return 0;
        }
        m->fp = ((u16)hdr[4] << 8 | hdr[5]) ^ ((u16)hdr[2] << 8 | hdr[3]);
        ADDR_FROM_HEADER(m, hdr + 8, hdr + 24, 16, NETLAT_IPV6_PREFIX);
#ifdef NETLAT_SLOW_SOURCE
        __builtin_memcpy(m->src, hdr + 8, 16);
        if (hdr[6] == 17)
            m->sport = (u16)hdr[40] << 8 | hdr[41];
#endif
        u8 next = hdr[6];
        u64 off = l3 + 40;
#pragma unroll
        for (int i = 0; i < NETLAT_IPV6_EXT_MAX; i++) {
            u8 ext[8] = {};
            if (next == 0 || next == 43 || next == 60 || next == 51) {
                if (bpf_probe_read_kernel(ext, 2, (void *)off))
                    break;
                u64 len = next == 51 ? ((u64)ext[1] + 2) * 4 : ((u64)ext[1] + 1) * 8;
                next = ext[0];
                off += len;
            } else if (next == 44) {
                if (bpf_probe_read_kernel(ext, 8, (void *)off))
                    break;
                u16 frag_off = ((u16)ext[2] << 8 | ext[3]) & 0xfff8;
                if (frag_off) {
                    m->transport = NETLAT_TR_OTHER;
                    return 0;
                }
                next = ext[0];
                off += 8;
            } else {
                break;
            }
        }
        m->transport = transport_of(next, NETLAT_NT_IPV6);
        return 0;
    }
    return -1;
}

/* The sk_buff fields a start hook needs. protocol, network_header, head and data lie
 * within NETLAT_SKB_SPAN bytes of each other (176..208 on 6.18): the loader checks that from
 * BTF and then they come in one read; a kernel where they do not gets one read per field. */
struct skb_fields {
    u64 head;
    u64 data;
    u16 proto; /* big endian */
    u16 nh;
};

static __always_inline void read_skb_fields(u64 skb, struct skb_fields *f) {
#ifdef NETLAT_SKB_SPAN
    u8 c[NETLAT_SKB_SPAN] = {};
    bpf_probe_read_kernel(c, sizeof(c), (void *)(skb + NETLAT_SKB_SPAN_OFF));
    __builtin_memcpy(&f->head, c + (OFF_SKB_HEAD - NETLAT_SKB_SPAN_OFF), 8);
    __builtin_memcpy(&f->data, c + (OFF_SKB_DATA - NETLAT_SKB_SPAN_OFF), 8);
    __builtin_memcpy(&f->proto, c + (OFF_SKB_PROTOCOL - NETLAT_SKB_SPAN_OFF), 2);
    __builtin_memcpy(&f->nh, c + (OFF_SKB_NETWORK_HEADER - NETLAT_SKB_SPAN_OFF), 2);
#else
    f->head = read_u64(skb + OFF_SKB_HEAD);
    f->data = read_u64(skb + OFF_SKB_DATA);
    f->proto = read_u16(skb + OFF_SKB_PROTOCOL);
    f->nh = read_u16(skb + OFF_SKB_NETWORK_HEADER);
#endif
}

/* L3 header on the receive path: skb->data (the network header is not reset yet where our
 * receive hooks run). */
static __always_inline u64 l3_rx(struct skb_fields *f) { return f->data; }

/* L3 header on the transmit path or at free time: head + network_header. */
static __always_inline u64 l3_tx(struct skb_fields *f) { return f->nh == 0xffff ? 0 : f->head + f->nh; }

/* Where a hook finds the L3 header: skb->data on receive, head + network_header on transmit,
 * and for user-defined hooks and queued skbs the network header once set, else skb->data. */
#define L3_RX 0
#define L3_TX 1
#define L3_NH 2

static __always_inline u64 l3_at(struct skb_fields *f, int where) {
    u64 l3 = where == L3_RX ? l3_rx(f) : l3_tx(f);
    if (where == L3_NH && !l3)
        l3 = l3_rx(f);
    return l3;
}

static __always_inline u16 skb_proto(u64 skb) { return read_u16(skb + OFF_SKB_PROTOCOL); }

#endif /* NETLAT_PARSE_H */
