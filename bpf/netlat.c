/* otel-netlat: per-stage packet latency, aggregated in the kernel.
 *
 * A stage is a pair of hooks (start -> end). A start records (object address, time) in a
 * direct-mapped slot table; the end looks its own object up there, so an end is tied to
 * its start by the skb (or sock) itself, never by CPU or port. Samples go straight into
 * per-CPU histograms; Python reads the maps once per interval.
 *
 * This file holds the maps and the probes (the hooks' entry points); what they do is in the
 * headers, one per feature: parse.h (packet classification), filters.h (netns/interface
 * filters), hist.h (histograms and counters), slots.h (start slots), skb.h and sock.h
 * (stages on skbs and on sockets), drops.h (drop accounting), addr.h (address labels),
 * netlat.h (shared layout and constants).
 *
 * Which hooks play which role comes from the stage table in otel_netlat/stages/table.py, as
 * -D flags: NETLAT_START_<group>_<event>=<stage id> and NETLAT_END_<group>_<event>=<stage id>.
 * Struct offsets (OFF_*) come from the running kernel's BTF: no kernel headers are used.
 * The built-in tracepoints attach as raw tracepoints: ctx->args[i] is the i-th argument of
 * the tracepoint's prototype, at the positions stages.RAW_ARGS checked against BTF.
 */
#include "kernel_types.h" /* written from BTF by the loader: enum skb_drop_reason, struct pt_regs */
#include "netlat.h"

/* ---- maps -------------------------------------------------------------------------- */
/* Every map, and every operation on one, is in this file: BCC turns map calls such as
 * starts.lookup(&i) into BPF helper calls only in the main source file, not in the headers
 * it includes (there they compile to an indirect call, which the verifier rejects as
 * "unknown opcode 8d"). So each map has one-line accessors here, and the headers call
 * those. The map names are the ones the Python side reads (otel_netlat/collect/reader.py). */

/* Start table: NETLAT_SLOTS slots per stage, mmap-able so Python can count pending entries
 * without one syscall per slot. */
BPF_F_TABLE("array", u32, struct start_slot, starts, NETLAT_N_STAGES * NETLAT_SLOTS, BPF_F_MMAPABLE);
BPF_PERCPU_ARRAY(hist, struct hist_val, NETLAT_N_KEYS);
BPF_PERCPU_ARRAY(outcomes, u64, NETLAT_N_STAGES * NETLAT_N_OUTCOMES);
BPF_PERCPU_ARRAY(skipped, u64, NETLAT_N_STAGES * NETLAT_N_SKIPS);

static __always_inline struct start_slot *starts_at(u32 i) { return starts.lookup(&i); }
static __always_inline struct hist_val *hist_at(u32 i) { return hist.lookup(&i); }
static __always_inline u64 *outcomes_at(u32 i) { return outcomes.lookup(&i); }
static __always_inline u64 *skipped_at(u32 i) { return skipped.lookup(&i); }

#ifdef NETLAT_DROPS
BPF_PERCPU_ARRAY(drops, u64, NETLAT_N_DROP_KEYS);
BPF_PERCPU_ARRAY(drops_skipped, u64, NETLAT_N_SKIPS);

static __always_inline u64 *drops_at(u32 i) { return drops.lookup(&i); }
static __always_inline u64 *drops_skipped_at(u32 i) { return drops_skipped.lookup(&i); }
#endif

#ifdef NETLAT_ADDR_LABELS
/* Address-labelled series: capped at NETLAT_MAX_SERIES keys. A key that finds the map full
 * folds into the overflow series, which lives in arrays of its own: it always has room,
 * even for packets that arrive before the agent has read anything. */
BPF_F_TABLE("percpu_hash", struct addr_key, struct hist_val, hist_addr, NETLAT_MAX_SERIES, 0);
BPF_F_TABLE("percpu_hash", struct drop_addr_key, u64, drops_addr, NETLAT_MAX_SERIES, 0);
BPF_PERCPU_ARRAY(hist_addr_overflow, struct hist_val, 1);
BPF_PERCPU_ARRAY(drops_addr_overflow, u64, 1);
BPF_PERCPU_ARRAY(folded, u64, NETLAT_N_STAGES + 1);

static __always_inline struct hist_val *hist_addr_get(struct addr_key *k) { return hist_addr.lookup(k); }
/* Insert only (BPF_NOEXIST): two CPUs creating one key at once must not wipe each other's count. */
static __always_inline int hist_addr_put(struct addr_key *k, struct hist_val *v) {
    return hist_addr.insert(k, v);
}
static __always_inline u64 *drops_addr_get(struct drop_addr_key *k) { return drops_addr.lookup(k); }
static __always_inline int drops_addr_put(struct drop_addr_key *k, u64 *v) { return drops_addr.insert(k, v); }
static __always_inline struct hist_val *hist_addr_overflow_at(u32 i) { return hist_addr_overflow.lookup(&i); }
static __always_inline u64 *drops_addr_overflow_at(u32 i) { return drops_addr_overflow.lookup(&i); }
static __always_inline u64 *folded_at(u32 i) { return folded.lookup(&i); }
#endif

#ifdef NETLAT_SOCKET_STAGE
/* Per UDP socket: the skb its next read takes (sock.h). Direct-mapped by the socket's
 * address, not a hash map: every UDP read and notification looks its cursor up, and an LRU
 * hash lookup and update cost ~100 ns each where an array element costs a few. */
BPF_ARRAY(udp_cursors, struct udp_cursor, NETLAT_UDP_CURSORS);

static __always_inline struct udp_cursor *udp_cursor_at(u32 i) { return udp_cursors.lookup(&i); }
#endif

#ifdef NETLAT_END_tcp_tcp_probe
BPF_PERCPU_ARRAY(tcp_arrivals, struct tcp_arrival, 1);

static __always_inline struct tcp_arrival *tcp_arrival_here(void) {
    u32 zero = 0;
    return tcp_arrivals.lookup(&zero);
}
#endif

#ifdef NETLAT_START_net_netif_receive_skb
/* Per CPU: the UDP skb whose `stack` start this CPU made last (sock.h own_udp_batch). */
BPF_PERCPU_ARRAY(udp_arrivals, u64, 1);

static __always_inline u64 *udp_arrival_here(void) {
    u32 zero = 0;
    return udp_arrivals.lookup(&zero);
}
#endif

#if defined(NETLAT_START_net_net_dev_queue) && defined(NETLAT_END_net_net_dev_start_xmit) && \
    defined(OFF_SKB_HASH) && defined(OFF_SKB_TRANSPORT_HEADER) && defined(OFF_SHINFO_GSO_SEGS)
#define NETLAT_GSO_SEGMENTS 1
/* Per flow (the skb's flow hash, which segments inherit; TCP's is its socket's random
 * txhash): its TCP GSO packets split in software after they were queued (skb.h). LRU: a
 * finished flow's ring ages out. */
BPF_TABLE("lru_hash", struct gso_key, struct gso_ring, gso_rings, 8192);
/* A zeroed ring to insert (too large for the BPF stack); never written. */
BPF_ARRAY(gso_zero, struct gso_ring, 1);
/* Until when (ktime) a segment may still be in flight: before it, a transmit without a qdisc
 * start looks for its parent; after it, that costs one array read. */
BPF_ARRAY(gso_active, u64, 1);

static __always_inline struct gso_ring *gso_ring_of(struct gso_key *k) { return gso_rings.lookup(k); }
/* The ring of `k`, created empty if there is none. */
static __always_inline struct gso_ring *gso_ring_make(struct gso_key *k) {
    struct gso_ring *r = gso_rings.lookup(k);
    if (r)
        return r;
    u32 zero = 0;
    struct gso_ring *z = gso_zero.lookup(&zero);
    if (!z)
        return 0;
    gso_rings.insert(k, z); /* BPF_NOEXIST: a ring another CPU just made stays */
    return gso_rings.lookup(k);
}
static __always_inline u64 *gso_active_until(void) {
    u32 zero = 0;
    return gso_active.lookup(&zero);
}
#endif

#if defined(NETLAT_START_net_napi_gro_receive_entry) && defined(SIZEOF_NETDEV_RX_QUEUE)
/* Per CPU: the skb whose backlog start napi_gro_receive's entry just made, for its exit. */
BPF_PERCPU_ARRAY(gro_entry, u64, 1);

static __always_inline u64 *gro_entry_here(void) {
    u32 zero = 0;
    return gro_entry.lookup(&zero);
}
#endif

#ifdef NETLAT_SOFTIRQ
/* softirq.h: per CPU, the NET_TX/NET_RX state, wait and runtime histograms (rows
 * softirq_row()), and NAPI polls that used their whole budget. */
BPF_PERCPU_ARRAY(softirq_state, struct softirq_cpu, 1);
BPF_PERCPU_ARRAY(softirq_hist, struct hist_val, 4);
BPF_PERCPU_ARRAY(napi_squeezed, u64, 1);

static __always_inline struct softirq_cpu *softirq_here(void) {
    u32 zero = 0;
    return softirq_state.lookup(&zero);
}
static __always_inline struct hist_val *softirq_hist_at(u32 i) { return softirq_hist.lookup(&i); }
static __always_inline u64 *napi_squeezed_here(void) {
    u32 zero = 0;
    return napi_squeezed.lookup(&zero);
}
#endif

/* filters.h: the namespace inodes and interface indexes --netns / --interface name now
 * (small sets; a lookup per packet is paid only when a filter is set). */
#ifdef NETLAT_FILTER_NETNS
BPF_HASH(filter_netns, u32, u8, NETLAT_FILTER_MAX);
static __always_inline int netns_ok(u32 inum) { return filter_netns.lookup(&inum) != 0; }
#endif
#ifdef NETLAT_FILTER_IFINDEX
BPF_HASH(filter_ifindex, u32, u8, NETLAT_FILTER_MAX);
static __always_inline int ifindex_ok(u32 ifindex) { return filter_ifindex.lookup(&ifindex) != 0; }
#endif

#ifdef NETLAT_SLOW
/* slow.h: records of samples over their stage's threshold, a per-CPU token bucket, and the
 * records lost (0: rate-limited, 1: ring full). */
BPF_RINGBUF_OUTPUT(slow_events, NETLAT_SLOW_PAGES);
BPF_PERCPU_ARRAY(slow_buckets, struct slow_bucket, 1);
BPF_PERCPU_ARRAY(slow_lost, u64, 2);

static __always_inline struct slow_rec *slow_reserve(void) {
    return slow_events.ringbuf_reserve(sizeof(struct slow_rec));
}
static __always_inline void slow_submit(struct slow_rec *r) { slow_events.ringbuf_submit(r, 0); }
static __always_inline struct slow_bucket *slow_bucket_here(void) {
    u32 zero = 0;
    return slow_buckets.lookup(&zero);
}
static __always_inline u64 *slow_lost_at(u32 i) { return slow_lost.lookup(&i); }
#ifdef NETLAT_SLOW_SOURCE
BPF_ARRAY(slow_src, struct slow_src, NETLAT_SLOTS);
static __always_inline struct slow_src *slow_src_at(u32 i) { return slow_src.lookup(&i); }
#endif
#endif

#ifdef NETLAT_SELFTEST
BPF_ARRAY(selftest_input, struct selftest_in, 1);
BPF_ARRAY(selftest_output, struct selftest_out, 1);
#endif

/* ---- the features, on top of the accessors above ------------------------------------ */

#include "addr.h"
#include "drops.h"
#include "filters.h"
#include "hist.h"
#include "parse.h"
#include "skb.h"
#include "slots.h"
#include "sock.h"
#ifdef NETLAT_START_sock_inet_sock_set_state
#include "accept.h"
#endif
#ifdef NETLAT_SOFTIRQ
#include "softirq.h"
#endif

/* ---- hooks ---------------------------------------------------------------------------- */

#if defined(NETLAT_START_net_netif_rx)
RAW_TRACEPOINT_PROBE(netif_rx) {
    start_skb_at(NETLAT_START_net_netif_rx, ctx->args[0], L3_RX, 0); /* 0: the clock if timed */
    return 0;
}
#endif

#if defined(NETLAT_START_net_netif_receive_skb) || defined(NETLAT_END_net_netif_receive_skb)
RAW_TRACEPOINT_PROBE(netif_receive_skb) {
    u64 skb = ctx->args[0];
    u64 now = 0; /* read when a timed start ends here, else by a timed start */
#ifdef NETLAT_END_net_netif_receive_skb
#ifdef NETLAT_START_net_netif_receive_skb
    struct start_slot copy = {};
    if (take_start(NETLAT_END_net_netif_receive_skb, skb, &copy) > 0) {
        now = end_clock(&copy);
        record_sample(NETLAT_END_net_netif_receive_skb, &copy, now);
        /* The same packet, classified and filtered at netif_rx moments ago, on the same
         * device: its entry says what it is, so the next stage starts without reading the
         * skb and its header again. */
        struct pkt_meta m = {};
        m.net_type = copy.net_type;
        m.transport = copy.transport;
        ADDR_COPY(&m, &copy);
        rx_start(skb, now, copy.tag, &m); /* its identity and its timing (or not), carried */
        return 0;
    }
#else
    stage_end_now(NETLAT_END_net_netif_receive_skb, skb, &now);
#endif
#endif
#ifdef NETLAT_START_net_netif_receive_skb
    start_skb_at(NETLAT_START_net_netif_receive_skb, skb, L3_RX, now);
#endif
    return 0;
}
#endif

#if defined(NETLAT_START_net_net_dev_queue) || defined(NETLAT_END_net_net_dev_queue)
RAW_TRACEPOINT_PROBE(net_dev_queue) {
    u64 skb = ctx->args[0];
#if defined(NETLAT_END_net_net_dev_queue) && defined(NETLAT_START_net_netif_receive_skb)
    forward_end(NETLAT_START_net_netif_receive_skb, NETLAT_END_net_net_dev_queue, skb);
#endif
#ifdef NETLAT_START_net_net_dev_queue
    if (!txq_queues(skb)) { /* noqueue: no wait to measure; counted, not sampled as ~0 */
        if (skb_passes(skb))
            count_skip(NETLAT_START_net_net_dev_queue, NETLAT_SKIP_NOQUEUE);
        return 0;
    }
    start_skb_at(NETLAT_START_net_net_dev_queue, skb, L3_TX, 0);
#endif
    return 0;
}
#endif

#if defined(NETLAT_END_net_net_dev_start_xmit) || defined(NETLAT_START_net_net_dev_start_xmit)
RAW_TRACEPOINT_PROBE(net_dev_start_xmit) {
    u64 skb = ctx->args[0];
    u64 now = 0; /* the clock is read only for a packet that ends or starts a timed stage here */
#ifdef NETLAT_END_net_net_dev_start_xmit
    int ended = stage_end_now(NETLAT_END_net_net_dev_start_xmit, skb, &now);
#ifdef NETLAT_GSO_SEGMENTS
    if (!ended)
        now = gso_segment_end(NETLAT_END_net_net_dev_start_xmit, skb);
#endif
    (void)ended;
#endif
#ifdef NETLAT_START_net_net_dev_start_xmit
    tx_ring_start(NETLAT_START_net_net_dev_start_xmit, skb, ctx->args[1], now);
#endif
    (void)now;
    return 0;
}
#endif

#ifndef NETLAT_END_sock_sk_data_ready
#define NETLAT_END_sock_sk_data_ready -1
#define NETLAT_END_sock_sk_data_ready_UNSET 1
#endif
#ifndef NETLAT_START_sock_sk_data_ready
#define NETLAT_START_sock_sk_data_ready -1
#define NETLAT_START_sock_sk_data_ready_UNSET 1
#endif
#if !defined(NETLAT_END_sock_sk_data_ready_UNSET) || !defined(NETLAT_START_sock_sk_data_ready_UNSET)
RAW_TRACEPOINT_PROBE(sk_data_ready) {
    on_data_ready(ctx->args[0], NETLAT_END_sock_sk_data_ready, NETLAT_START_sock_sk_data_ready);
    return 0;
}
#endif

#ifdef NETLAT_START_sock_inet_sock_set_state
RAW_TRACEPOINT_PROBE(inet_sock_set_state) {
    accept_state_change(NETLAT_START_sock_inet_sock_set_state, ctx->args[0], (int)ctx->args[1],
                        (int)ctx->args[2]);
    return 0;
}
#endif

#if defined(NETLAT_END_tcp_tcp_probe)
RAW_TRACEPOINT_PROBE(tcp_probe) {
    tcp_segment_seen(NETLAT_END_tcp_tcp_probe, ctx->args[0], ctx->args[1]);
    return 0;
}
#endif

#if defined(NETLAT_END_skb_skb_copy_datagram_iovec)
RAW_TRACEPOINT_PROBE(skb_copy_datagram_iovec) {
    socket_copy_end(NETLAT_END_skb_skb_copy_datagram_iovec, ctx->args[0]);
    return 0;
}
#endif

#if defined(NETLAT_END_sock_sock_recv_length)
RAW_TRACEPOINT_PROBE(sock_recv_length) {
    socket_read_end(NETLAT_END_sock_sock_recv_length, ctx->args[0], (int)ctx->args[1], (int)ctx->args[2]);
    return 0;
}
#endif

#if defined(NETLAT_DROPS) || defined(NETLAT_SKB_STAGES) || defined(NETLAT_SOCKET_STAGE)
RAW_TRACEPOINT_PROBE(kfree_skb) {
    u64 skb = ctx->args[0];
    abort_skb_stages(skb, NETLAT_OUT_DROPPED);
#ifdef NETLAT_SOCKET_STAGE
    stage_abort(NETLAT_SOCKET_STAGE, skb, NETLAT_OUT_DROPPED); /* queued, never read */
#endif
    count_drop(skb, (u32)ctx->args[2]); /* nothing without NETLAT_DROPS */
    return 0;
}
#endif

/* A NAPI driver's hand-over: the GRO list path, which the ip_rcv/ipv6_rcv stages cannot see
 * (skb.h: count_list_path), and backlog's start for packets RPS steers (skb.h: rps_start). */
#if defined(NETLAT_LIST_IPV4_STAGE) || defined(NETLAT_LIST_IPV6_STAGE) || defined(NETLAT_RPS_STARTS)
RAW_TRACEPOINT_PROBE(napi_gro_receive_entry) {
    u64 skb = ctx->args[0];
#if defined(NETLAT_LIST_IPV4_STAGE) || defined(NETLAT_LIST_IPV6_STAGE)
    count_list_path(skb);
#endif
#ifdef NETLAT_RPS_STARTS
    u64 *last = gro_entry_here();
    if (last)
        *last = rps_start(NETLAT_START_net_napi_gro_receive_entry, skb) ? skb : 0;
#endif
    return 0;
}

RAW_TRACEPOINT_PROBE(netif_receive_skb_list_entry) {
    u64 skb = ctx->args[0];
#if defined(NETLAT_LIST_IPV4_STAGE) || defined(NETLAT_LIST_IPV6_STAGE)
    count_list_path(skb);
#endif
#ifdef NETLAT_RPS_STARTS
    rps_start(NETLAT_START_net_netif_receive_skb_list_entry, skb);
#endif
    return 0;
}
#endif

#ifdef NETLAT_RPS_STARTS
RAW_TRACEPOINT_PROBE(netif_receive_skb_entry) {
    rps_start(NETLAT_START_net_netif_receive_skb_entry, ctx->args[0]);
    return 0;
}

/* GRO merged the packet into one it holds (GRO_MERGED: chained to it; GRO_MERGED_FREE: its
 * data taken, the skb freed untraced): it never reaches the stack on its own. Entry and exit
 * are one call on one CPU, so the skb is the one this CPU's entry saw. */
RAW_TRACEPOINT_PROBE(napi_gro_receive_exit) {
    int ret = (int)ctx->args[0];
    u64 *last = gro_entry_here();
    if (!last || !*last)
        return 0;
    if (ret == NETLAT_GRO_MERGED || ret == NETLAT_GRO_MERGED_FREE)
        stage_abort(NETLAT_END_net_napi_gro_receive_exit, *last, NETLAT_OUT_COALESCED);
    *last = 0;
    return 0;
}
#endif

#if defined(NETLAT_SKB_STAGES)
RAW_TRACEPOINT_PROBE(consume_skb) {
    /* Freed normally before its end hook: the packet never reached a socket (or its
     * socket-queue tail was missed). Deferred frees pass no tracepoint: those entries stay
     * pending until their address is reused (overwritten). */
    u64 skb = ctx->args[0];
#ifdef NETLAT_END_skb_consume_skb
    /* A NIC's driver frees a sent skb once the device completed it: tx_ring's end. */
    u64 now = 0;
    if (stage_end_now(NETLAT_END_skb_consume_skb, skb, &now))
        return 0;
#endif
#ifdef NETLAT_START_net_net_dev_queue
    gso_segmented(NETLAT_START_net_net_dev_queue, skb);
#endif
    abort_skb_stages(skb, NETLAT_OUT_NO_SOCKET);
    return 0;
}
#endif

#ifdef NETLAT_SOFTIRQ
RAW_TRACEPOINT_PROBE(softirq_raise) {
    softirq_raised((u32)ctx->args[0]);
    return 0;
}

RAW_TRACEPOINT_PROBE(softirq_entry) {
    softirq_entered((u32)ctx->args[0]);
    return 0;
}

RAW_TRACEPOINT_PROBE(softirq_exit) {
    softirq_exited((u32)ctx->args[0]);
    return 0;
}

RAW_TRACEPOINT_PROBE(napi_poll) {
    napi_polled((int)ctx->args[1], (int)ctx->args[2]);
    return 0;
}
#endif

/* ---- function hooks (fentry or kprobe) -------------------------------------------------- */
/* A kernel function's entry, handed an skb as one of its arguments. The loader writes one
 * line per hooked function into netlat_hooks.h, from the stage table and the backend chosen
 * for this kernel (otel_netlat/program/build.py, otel_netlat/kernel/backends.py):
 *   NETLAT_FENTRY_HOOK(function, argument index, handler, start stage or -1, end stage or -1)
 *   NETLAT_KPROBE_HOOK(n, PT_REGS_PARMk, handler, start stage or -1, end stage or -1)
 * A kprobe's function is named netlat_kprobe_<n> and attached by the loader to the exact
 * symbol (a renamed ip_rcv_finish.isra.0 included). The end runs before the start, as for
 * tracepoints, so one function can end one stage and start the next. */
static __always_inline void skb_hook(u64 skb, int start_stage, int end_stage, int where) {
    u64 now = 0; /* read by a timed end, else by a timed start */
    if (end_stage >= 0)
        stage_end_now(end_stage, skb, &now);
    if (start_stage >= 0)
        start_skb_at(start_stage, skb, where, now);
}

static __always_inline void skb_function_hook(u64 skb, int start_stage, int end_stage) {
    skb_hook(skb, start_stage, end_stage, L3_RX);
}

/* User-defined stages hook anywhere: the L3 header is taken from head + network_header,
 * which the kernel keeps pointing at it once protocol processing has started (at udp_rcv,
 * skb->data is already past the IP header), else from skb->data. */
static __always_inline void skb_nh_function_hook(u64 skb, int start_stage, int end_stage) {
    skb_hook(skb, start_stage, end_stage, L3_NH);
}

/* A function handed a socket that data was just queued on (sock_def_readable(sk)). */
static __always_inline void sock_function_hook(u64 sk, int start_stage, int end_stage) {
    on_data_ready(sk, end_stage, start_stage);
}

/* fentry's ctx is the argument array. The object is read through bpf_probe_read_kernel so
 * the verifier sees a plain number (a BTF pointer may not be hashed or stored in a map).
 * `handler` is skb_function_hook or sock_function_hook, by what the argument is. */
#define NETLAT_FENTRY_HOOK(fn, argi, handler, start_stage, end_stage)        \
    KFUNC_PROBE(fn) {                                                       \
        u64 obj = 0;                                                        \
        bpf_probe_read_kernel(&obj, sizeof(obj), &ctx[argi]);               \
        handler(obj, start_stage, end_stage);                               \
        return 0;                                                           \
    }

/* fexit of inet_recvmsg / inet6_recvmsg(struct socket *sock, struct msghdr *msg, size_t
 * size, int flags) -> int: ctx holds the arguments, then the return value at index `nargs`.
 * Kernels without sock:* tracepoints end the socket stage here. */
#define NETLAT_FEXIT_READ_HOOK(fn, nargs, flags_arg, end_stage)              \
    KRETFUNC_PROBE(fn) {                                                    \
        u64 sock = 0;                                                       \
        bpf_probe_read_kernel(&sock, sizeof(sock), &ctx[0]);                \
        if (sock)                                                           \
            socket_read_end(end_stage, read_u64(sock + OFF_SOCKET_SK),      \
                            (int)ctx[nargs], (int)ctx[flags_arg]);          \
        return 0;                                                           \
    }

/* fexit of inet_csk_accept(struct sock *sk, ...) -> struct sock *: the socket accept()
 * returns (index `nargs` of ctx, after the arguments) ends its accept-queue wait. */
#define NETLAT_FEXIT_ACCEPT_HOOK(fn, nargs, end_stage)                      \
    KRETFUNC_PROBE(fn) {                                                    \
        u64 sk = 0; /* read as a number: the verifier types ctx[nargs] as a pointer */ \
        bpf_probe_read_kernel(&sk, sizeof(sk), &ctx[nargs]);                \
        u64 now_ = 0;                                                       \
        if (sk)                                                             \
            stage_end_now(end_stage, sk, &now_);                            \
        return 0;                                                           \
    }

/* kprobe: struct pt_regs is the running kernel's, written from BTF, so BCC's PT_REGS_PARMn
 * (ctx->di, ctx->si, ...) compile without kernel headers. */
#define NETLAT_KPROBE_HOOK(n, parm, handler, start_stage, end_stage)         \
    int netlat_kprobe_##n(struct pt_regs *ctx) {                            \
        handler((u64)parm(ctx), start_stage, end_stage);                    \
        return 0;                                                           \
    }

/* A user-defined stage's tracepoint: the skb is the 8-byte field at `off` in its record
 * (offset from the tracepoint's format file). Not TRACEPOINT_PROBE: BCC generates that
 * macro's argument struct only for probes written in the main file. BCC attaches a
 * function named tracepoint__<group>__<event> to that tracepoint on load. */
#define NETLAT_TRACEPOINT_HOOK(group, event, off, handler, start_stage, end_stage) \
    int tracepoint__##group##__##event(void *args) {                            \
        u64 obj = 0;                                                            \
        bpf_probe_read_kernel(&obj, sizeof(obj), (char *)args + off);           \
        handler(obj, start_stage, end_stage);                                   \
        return 0;                                                               \
    }

#include "netlat_hooks.h"

/* ---- self-test: run the compiled logic on demand ------------------------------------ */
#ifdef NETLAT_SELFTEST
TRACEPOINT_PROBE(syscalls, sys_enter_getpgid) {
    if (args->pid != NETLAT_SELFTEST_PID)
        return 0;
    u32 zero = 0;
    struct selftest_in *in = selftest_input.lookup(&zero);
    struct selftest_out *out = selftest_output.lookup(&zero);
    if (!in || !out)
        return 0;
    out->bucket = bucket_of(in->value_ns);
    struct pkt_meta m = {};
    if (parse_l3((u64)in->bytes, in->proto_be, &m) == 0) {
        out->net_type = m.net_type;
        out->transport = m.transport;
        ADDR_COPY(out, &m);
    } else {
        out->net_type = 255;
        out->transport = 255;
    }
    out->done = 1;
    return 0;
}
#endif
