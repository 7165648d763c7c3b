/* otel-netlat: address labels (NETLAT_ADDR_LABELS).
 *
 * With labels on, a packet's source and destination address, cut to the configured prefix,
 * travel from its start hook (struct pkt_meta) through its start entry (struct start_slot)
 * to its sample, and every sample and drop also goes to a series of its own per address pair
 * (maps hist_addr, drops_addr), capped at NETLAT_MAX_SERIES keys: a key that finds its map
 * full folds into the overflow series and is counted in `folded`.
 *
 * Everything that touches an address is here, behind macros that have a no-op twin for a
 * program built without labels: the rest of the program calls them unconditionally, and
 * they compile away. The map operations themselves are accessors in netlat.c (BCC rewrites
 * map calls only there).
 */
#ifndef NETLAT_ADDR_H
#define NETLAT_ADDR_H

#include "netlat.h"

#ifdef NETLAT_ADDR_LABELS

/* The one address copy: the pair of `src` into `dst`, any two structs that carry one
 * (ADDR_FIELDS: pkt_meta, start_slot, the series keys, the self-test output). A macro on the
 * fields, not a function on u8 pointers: clang then sees both structs and compiles the copy
 * as tightly as the open-coded copies it replaced (through pointers: ~6% more instructions). */
#define ADDR_COPY(dst, src)                                        \
    do {                                                           \
        __builtin_memcpy((dst)->saddr, (src)->saddr, 16);          \
        __builtin_memcpy((dst)->daddr, (src)->daddr, 16);          \
    } while (0)

/* Keep the first `bits` bits of an address (the configured prefix), zero the rest. */
static __always_inline void mask_prefix(u8 *a, u32 len, u32 bits) {
#pragma unroll
    for (u32 i = 0; i < 16; i++) {
        if (i >= len) {
            a[i] = 0;
        } else if (i * 8 >= bits) {
            a[i] = 0;
        } else if (i * 8 + 8 > bits) {
            a[i] &= (u8)(0xff << (8 - (bits - i * 8)));
        }
    }
}

/* The addresses of packet `m` from its L3 header: `len` bytes each at `src` and `dst`,
 * cut to `bits`. */
static __always_inline void addr_from_header(struct pkt_meta *m, const u8 *src, const u8 *dst, u32 len,
                                             u32 bits) {
    __builtin_memcpy(m->saddr, src, len);
    __builtin_memcpy(m->daddr, dst, len);
    mask_prefix(m->saddr, len, bits);
    mask_prefix(m->daddr, len, bits);
}
#define ADDR_FROM_HEADER(m, src, dst, len, bits) addr_from_header(m, src, dst, len, bits)

/* The addresses' part of a start entry's seal (see seal_of in slots.h): the pair read as
 * four words. */
static __always_inline u64 addr_hash(const u8 *saddr, const u8 *daddr) {
    u64 w[4] = {};
    __builtin_memcpy(w, saddr, 16);
    __builtin_memcpy(&w[2], daddr, 16);
    return w[0] ^ (w[1] << 1) ^ (w[2] << 2) ^ (w[3] << 3);
}
#define ADDR_HASH(e) addr_hash((e)->saddr, (e)->daddr)

/* A key found its map full: count it (index `idx`: the stage, or NETLAT_N_STAGES for drops). */
static __always_inline void count_folded(u32 idx) {
    u64 *f = folded_at(idx);
    if (f)
        bump(f, 1);
}

/* The address-labelled histogram of key `k`, created on first use, or the overflow series
 * when the map is full. */
static __always_inline struct hist_val *hist_addr_of(struct addr_key *k) {
    struct hist_val *v = hist_addr_get(k);
    if (v)
        return v;
    struct hist_val zero = {};
    hist_addr_put(k, &zero); /* insert only: another CPU may have created it meanwhile */
    v = hist_addr_get(k);
    if (v)
        return v;
    /* Full: fold into the overflow series and count it. */
    count_folded(k->stage);
    return hist_addr_overflow_at(0);
}

/* The address-labelled histogram of `stage` for `e`, a start entry or a packet (struct
 * start_slot or pkt_meta: both name their fields alike). */
#define HIST_ADDR_FOR(stage, e)             \
    ({                                      \
        struct addr_key k_ = {};            \
        k_.stage = (stage);                 \
        k_.net_type = (e)->net_type;        \
        k_.transport = (e)->transport;      \
        ADDR_COPY(&k_, e);                  \
        hist_addr_of(&k_);                  \
    })

/* The address-labelled drop counter of `reason` for packet `m`, as hist_addr_of. */
static __always_inline u64 *drops_addr_for(u32 reason, struct pkt_meta *m) {
    struct drop_addr_key k = {};
    k.reason = reason;
    k.net_type = m->net_type;
    k.transport = m->transport;
    ADDR_COPY(&k, m);
    u64 zero = 0;
    u64 *c = drops_addr_get(&k);
    if (!c) {
        drops_addr_put(&k, &zero); /* insert only, as above */
        c = drops_addr_get(&k);
    }
    if (!c) {
        count_folded(NETLAT_N_STAGES);
        c = drops_addr_overflow_at(0);
    }
    return c;
}
#define DROPS_ADDR_FOR(reason, m) drops_addr_for(reason, m)

#else /* no address labels: nothing to copy, hash or count */

#define ADDR_COPY(dst, src) \
    do {                    \
    } while (0)
#define ADDR_FROM_HEADER(m, src, dst, len, bits) \
    do {                                         \
    } while (0)
#define ADDR_HASH(e) 0
#define HIST_ADDR_FOR(stage, e) ((struct hist_val *)0)
#define DROPS_ADDR_FOR(reason, m) ((u64 *)0)

#endif /* NETLAT_ADDR_LABELS */

#endif /* NETLAT_ADDR_H */
