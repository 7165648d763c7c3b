/* otel-netlat: what every part of the BPF program shares.
 *
 * Every constant below that Python also knows (layout, offsets, bucket bounds, stage ids)
 * arrives as a -D flag generated from one Python definition (otel_netlat/program/layout.py,
 * the stage table in otel_netlat/stages/table.py, offsets from the running kernel's BTF):
 * nothing is spelled twice. The structs are the keys and values of the maps, which Python
 * reads through BCC's ctypes of them, by field name: they are kept together here so that the
 * maps (declared in netlat.c) and every feature header see one layout.
 */
#ifndef NETLAT_H
#define NETLAT_H

#ifndef NETLAT_N_BOUNDS
#error "NETLAT_N_BOUNDS must come from the loader (otel_netlat/program/build.py)"
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

/* A packet's address pair, in every struct that carries one (the reader reads the fields
 * saddr and daddr by name). Without address labels the structs have no such fields, and the
 * helpers in addr.h that would touch them compile to nothing. */
#ifdef NETLAT_ADDR_LABELS
#define ADDR_FIELDS \
    u8 saddr[16];   \
    u8 daddr[16];

/* Keys of the address-labelled series (maps hist_addr and drops_addr). */
struct addr_key {
    u8 stage;
    u8 net_type;
    u8 transport;
    u8 pad;
    ADDR_FIELDS
};
struct drop_addr_key {
    u16 reason;
    u8 net_type;
    u8 transport;
    u8 pad[4];
    ADDR_FIELDS
};
#else
#define ADDR_FIELDS
#endif


/* The TCP segment tcp:tcp_probe last saw on this CPU, with its `stack` start's time: the
 * segment the next sk_data_ready of that socket is about, even when TCP merged its data
 * into the skb already at the queue's tail and freed it (no tracepoint). */
struct tcp_arrival {
    u64 sk;
    u64 skb;
    u64 ts;
};

/* Per CPU: when NET_TX (0) and NET_RX (1) were first raised since they last ran, and when
 * the running one entered (0: not pending / not running). */
struct softirq_cpu {
    u64 raised[2];
    u64 entered[2];
};

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
    ADDR_FIELDS
};

/* A UDP socket's read cursor (bpf/sock.h): the skb its next read takes (the head of its
 * queues after its last read, or the first datagram queued since; 0: its queue was empty),
 * and that value sealed with the socket's address. NETLAT_UDP_CURSORS slots, direct-mapped
 * by socket. */
#define NETLAT_UDP_CURSORS_SHIFT 14
#define NETLAT_UDP_CURSORS (1u << NETLAT_UDP_CURSORS_SHIFT)
struct udp_cursor {
    u64 next;
    u64 check;
};

/* TCP GSO packets split in software after they were queued (bpf/skb.h), by flow and 64 KiB
 * block of sequence space: the newest NETLAT_GSO_RING parents whose range meets the block,
 * each its qdisc start and range, and the flow's classification. A parent of up to 64 KiB
 * meets at most two blocks. */
#define NETLAT_GSO_RING 32
#define NETLAT_GSO_BLOCK_SHIFT 16
struct gso_key {
    u32 hash; /* the flow hash, which every segment inherits */
    u32 block; /* seq >> NETLAT_GSO_BLOCK_SHIFT */
};
struct gso_parent {
    u64 ts;
    u32 seq;
    u32 end; /* seq + gso_segs * gso_size: at or beyond the last segment's end */
};
struct gso_ring {
    struct gso_parent p[NETLAT_GSO_RING];
    u32 next;
    u8 net_type;
    u8 transport;
    u16 pad;
    ADDR_FIELDS
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
    u16 fp; /* a fingerprint of the L3 header (IPv4 checksum, IPv6 payload length): re-entry */
    ADDR_FIELDS
#ifdef NETLAT_SLOW_SOURCE
    u8 src[16]; /* the source address and port, unmasked, from the same read (bpf/slow.h) */
    u16 sport;  /* host order; 0: not read (IPv4 options, IPv6 extension headers) */
#endif
};

#ifdef NETLAT_SLOW
/* One slow record (bpf/slow.h), as otel_netlat/collect/slow.py decodes it. */
struct slow_rec {
    u64 ts;         /* bpf_ktime_get_ns() when the sample ended */
    u64 latency_ns;
    u32 stage;
    u32 cpu;
    u32 ifindex;
    u32 netns;
    u8 net_type;
    u8 transport;
    u16 sport; /* host order; 0: none or unknown */
    u16 dport;
    u8 from_sock; /* 1: addresses from the socket (its datagram was already freed) */
    u8 pad;
    u8 saddr[16]; /* IPv4 in the first 4 bytes */
    u8 daddr[16];
};

/* The source of a received UDP datagram (slow.h): it is freed before its read returns, so
 * its record takes the source from here, noted when its receive start parsed it. */
struct slow_src {
    u64 obj;
    u32 head; /* the low bits of skb->head: the same datagram, not a later one at its address */
    u16 sport;
    u16 pad;
    u8 saddr[16];
};

/* Per CPU: the token bucket, as credit in ns (a record costs NETLAT_SLOW_COST_NS). */
struct slow_bucket {
    u64 last;
    u64 credit;
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
    ADDR_FIELDS
};
#endif

/* ---- small helpers every part uses ---------------------------------------------------- */

static __always_inline void bump(u64 *p, u64 n) { __sync_fetch_and_add(p, n); }

/* Kernel memory is read field by field at BTF offsets (no kernel headers): a failed read
 * leaves 0, which every caller treats as "absent". */
static __always_inline u64 read_u64(u64 addr) {
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u32 read_u32(u64 addr) {
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u8 read_u8(u64 addr) {
    u8 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u16 read_u16(u64 addr) {
    u16 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)addr);
    return v;
}

#if defined(OFF_SK_DADDR) && defined(OFF_SK_V6_DADDR)
/* A socket's two ends: the peer's address into `peer`, its own into `local` (4 bytes for
 * IPv4, 16 for IPv6). */
static __always_inline void sock_ends(u64 sk, int ipv6, u8 *peer, u8 *local) {
    if (ipv6) {
        bpf_probe_read_kernel(peer, 16, (void *)(sk + OFF_SK_V6_DADDR));
        bpf_probe_read_kernel(local, 16, (void *)(sk + OFF_SK_V6_RCV_SADDR));
    } else {
        bpf_probe_read_kernel(peer, 4, (void *)(sk + OFF_SK_DADDR));
        bpf_probe_read_kernel(local, 4, (void *)(sk + OFF_SK_RCV_SADDR));
    }
}
#endif

#endif /* NETLAT_H */
