/* otel-netlat: start slots, where a started packet waits for its end.
 *
 * A start records (object address, time, what the packet is) in a direct-mapped table,
 * NETLAT_SLOTS slots per stage; the end looks its own object up there, so an end is tied to
 * its start by the skb (or sock) itself, never by CPU or port. No locks: a start publishes
 * its entry with one exchange, an end takes it with one compare-and-swap, and a 16-bit seal
 * over the entry's fields catches an entry torn by two CPUs writing one slot at once. Every
 * start is accounted exactly once: a sample, or an outcome (overwritten, evicted, ...).
 * The table is reached through starts_at() in netlat.c.
 */
#ifndef NETLAT_SLOTS_H
#define NETLAT_SLOTS_H

#include "addr.h"
#include "hist.h"
#include "netlat.h"

static __always_inline u32 slot_of(u32 stage, u64 obj) {
    /* Fibonacci hashing: skb addresses are aligned, so use the high product bits. */
    return stage * NETLAT_SLOTS + (u32)((obj * 0x9E3779B97F4A7C15ULL) >> (64 - NETLAT_SLOTS_SHIFT));
}

/* 16 bits of a hash of a start entry's contents (see struct start_slot); `addrs` is the
 * address pair's part (ADDR_HASH), 0 without address labels. */
static __always_inline u16 seal_of(u64 obj, u64 ts, u32 tag, u8 nt, u8 tr, u64 addrs) {
    u64 x = obj ^ ts ^ ((u64)tag << 16) ^ ((u64)nt << 8) ^ tr;
    x ^= addrs;
    return (u16)((x * 0x9E3779B97F4A7C15ULL) >> 48);
}

/* The seal of `obj` started at `ts` with `tag`, classified as `e` says: a start_slot or a
 * pkt_meta (both name their fields alike). */
#define SEAL_OF(obj, ts, tag, e) seal_of(obj, ts, tag, (e)->net_type, (e)->transport, ADDR_HASH(e))

/* The start time of a packet that starts a stage on its own (not handed over from another
 * stage): `now` if the hook read the clock already, else the clock. With latency sampling
 * (--latency-sample N, NETLAT_SAMPLE_EVERY) one start in N at random is timed and the others
 * get 0, without a clock read: their entries are written all the same (the packet is
 * counted, and a stage it is handed on to inherits the 0), and end as `unsampled`. Random,
 * not a hash of the skb address: skbs are reused from per-CPU free lists, and a hash would
 * time the same few addresses, and so the same flows, again and again. */
static __always_inline u64 start_time(u64 now) {
#ifdef NETLAT_SAMPLE_EVERY
    if (bpf_get_prandom_u32() % NETLAT_SAMPLE_EVERY)
        return 0;
#endif
    return now ? now : bpf_ktime_get_ns();
}

/* Record a start of `stage` for object `obj`.
 *
 * One locked instruction: the fields are written with plain stores, sealed, and published
 * by exchanging obj in. Whatever the slot held ends here without a sample (overwritten: the
 * same object started again; evicted: another one). Two CPUs starting on one slot at once
 * both publish; the later exchange returns the earlier object, which is counted evicted —
 * every start is accounted exactly once, and a torn entry fails its seal at the end. */
static __always_inline void stage_start(u32 stage, u64 obj, u64 now, u32 tag, struct pkt_meta *m) {
    struct start_slot *s = starts_at(slot_of(stage, obj));
    if (!s)
        return;
    hist_start(stage, m);
    /* Write the entry. */
    s->ts = now;
    s->tag = tag;
    s->net_type = m->net_type;
    s->transport = m->transport;
    ADDR_COPY(s, m);
    s->seal = SEAL_OF(obj, now, tag, m); /* from the start's own values, not read back */
    asm volatile("" ::: "memory"); /* the stores above stay before the publishing exchange */
    u64 old = __sync_lock_test_and_set(&s->obj, obj);
    if (old)
        count_outcome(stage, old == obj ? NETLAT_OUT_OVERWRITTEN : NETLAT_OUT_EVICTED);
}

/* Take the start entry of `obj` out of the table: 1 (and a copy) when it was there, 0 when it
 * was not, -1 when it was but torn. The copy is taken before the entry is: a start that
 * overwrote the fields meanwhile breaks the seal, and that entry then ends as evicted (counted
 * here), not as a wrong sample. */
static __always_inline int take_start(u32 stage, u64 obj, struct start_slot *copy) {
    if (!obj)
        return 0; /* a NULL object (e.g. qdisc_dequeue with nothing dequeued) would match an empty slot */
    struct start_slot *s = starts_at(slot_of(stage, obj));
    if (!s || s->obj != obj)
        return 0;
    __builtin_memcpy(copy, s, sizeof(*copy));
    asm volatile("" ::: "memory");
    if (__sync_val_compare_and_swap(&s->obj, obj, 0) != obj)
        return 0; /* another end took it, or a new start replaced it (and counted it) */
    if (copy->seal != SEAL_OF(obj, copy->ts, copy->tag, copy)) {
        count_outcome(stage, NETLAT_OUT_EVICTED);
        return -1;
    }
    return 1;
}

/* End `stage` for `obj`, reading the clock only when its start is there and timed: an end
 * hook sees every packet, and most were never started (at net_dev_start_xmit, every packet
 * a noqueue veth sends), while a clock read costs ~40 ns. 1 when a start ended (`*now`: the
 * time read, 0 for an untimed one), 0 when there was none. */
static __always_inline int stage_end_now(u32 stage, u64 obj, u64 *now) {
    struct start_slot copy = {};
    if (take_start(stage, obj, &copy) <= 0)
        return 0;
    *now = end_clock(&copy);
    record_sample(stage, &copy, *now); /* the SAMPLE outcome is the histogram's count */
    return 1;
}

/* A start taken by `from` (its entry in `copy`) whose wait is `to`'s sample instead: counted
 * under `outcome` for `from`, started and sampled for `to` with the packet's own
 * classification (forward ends stack's start when a packet leaves; tcp_backlog when it was
 * processed from a socket's backlog). */
static __always_inline void hand_off(u32 from, u32 to, u32 outcome, struct start_slot *copy, u64 now) {
    count_outcome(from, outcome);
    struct pkt_meta m = {};
    m.net_type = copy->net_type;
    m.transport = copy->transport;
    ADDR_COPY(&m, copy);
    hist_start(to, &m);
    record_sample(to, copy, now);
}

/* End a pending start without a sample (dropped, freed before its end hook). */
static __always_inline void stage_abort(u32 stage, u64 obj, u32 outcome) {
    struct start_slot copy = {};
    if (take_start(stage, obj, &copy) > 0)
        count_outcome(stage, outcome);
}

#endif /* NETLAT_SLOTS_H */
