/* otel-netlat: shared definitions for the BPF side.
 *
 * Every constant below that Python also knows (layout, offsets, bucket bounds, stage ids)
 * arrives as a -D flag generated from one Python definition (otel_netlat/layout.py,
 * otel_netlat/stages.py, offsets from the running kernel's BTF): nothing is spelled twice.
 */
#ifndef NETLAT_H
#define NETLAT_H

#ifndef NETLAT_N_BOUNDS
#error "NETLAT_N_BOUNDS must come from the loader (otel_netlat/program.py)"
#endif

#define NETLAT_N_BUCKETS (NETLAT_N_BOUNDS + 1)
#define NETLAT_SLOTS (1u << NETLAT_SLOTS_SHIFT)
#define NETLAT_N_KEYS (NETLAT_N_STAGES * NETLAT_N_NET_TYPES * NETLAT_N_TRANSPORTS)
#define NETLAT_N_DROP_KEYS ((NETLAT_MAX_DROP_REASON + 1) * NETLAT_N_NET_TYPES * NETLAT_N_TRANSPORTS)

#define ETH_P_IP_BE 0x0008   /* htons(0x0800) */
#define ETH_P_IPV6_BE 0xDD86 /* htons(0x86DD) */
#define AF_INET_ 2
#define AF_INET6_ 10
#define MSG_PEEK_ 0x2
#define MSG_ERRQUEUE_ 0x2000

/* One start entry. `obj` is the skb (or sock) address and the only thing that ties an end
 * to its start; 0 means empty. `tag` tells two lives of one socket apart. `seal` is a hash
 * of obj and the other fields, written last before obj is published: an end that copied a
 * mix of two starts' fields (two CPUs on one slot within nanoseconds) sees it broken. */
struct start_slot {
    u64 obj;
    u64 ts;
    u32 tag;
    u8 net_type;
    u8 transport;
    u16 seal;
#ifdef NETLAT_ADDR_LABELS
    u8 saddr[16];
    u8 daddr[16];
#endif
};

/* Per-CPU histogram of one (stage, network type, transport) key. `starts` counts packets
 * that entered the stage (netlat.packets); buckets/sum are the samples. There is no count:
 * it is the sum of the buckets, which the reader adds up (one locked add less per sample). */
struct hist_val {
    u64 buckets[NETLAT_N_BUCKETS];
    u64 sum_ns;
    u64 starts;
};

/* What a start hook learned about its packet. */
struct pkt_meta {
    u8 net_type;
    u8 transport;
#ifdef NETLAT_ADDR_LABELS
    u8 saddr[16];
    u8 daddr[16];
#endif
};

#ifdef NETLAT_ADDR_LABELS
struct addr_key {
    u8 stage;
    u8 net_type;
    u8 transport;
    u8 pad;
    u8 saddr[16];
    u8 daddr[16];
};
struct drop_addr_key {
    u16 reason;
    u8 net_type;
    u8 transport;
    u8 pad[4];
    u8 saddr[16];
    u8 daddr[16];
};
#endif

#ifdef NETLAT_SELFTEST
struct selftest_in {
    u64 value_ns;
    u16 proto_be;
    u16 len;
    u32 pad;
    u8 bytes[128];
};
struct selftest_out {
    u32 bucket;
    u8 net_type;
    u8 transport;
    u16 done;
#ifdef NETLAT_ADDR_LABELS
    u8 saddr[16];
    u8 daddr[16];
#endif
};
#endif

#endif /* NETLAT_H */
