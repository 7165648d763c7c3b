/* otel-netlat: drop accounting (NETLAT_DROPS).
 *
 * Every skb:kfree_skb of an IP packet that passes the filters is counted by drop reason,
 * network type and transport (and, with address labels, address pair). The reason is the
 * index into the running kernel's enum skb_drop_reason; one past its last name stands for
 * reasons the BTF does not name. Without NETLAT_DROPS count_drop is empty, and kfree_skb
 * only ends pending skb starts.
 * Maps are reached through the accessors in netlat.c.
 */
#ifndef NETLAT_DROPS_H
#define NETLAT_DROPS_H

#include "addr.h"
#include "filters.h"
#include "netlat.h"
#include "parse.h"

#ifdef NETLAT_DROPS
static __always_inline void count_drop_skip(u32 why) {
    u64 *v = drops_skipped_at(why);
    if (v)
        bump(v, 1);
}

/* skb `skb` was dropped for `reason`. */
static __always_inline void count_drop(u64 skb, u32 reason) {
    struct skb_fields f = {};
    read_skb_fields(skb, &f);
    u16 proto = f.proto;
    if (proto != ETH_P_IP_BE && proto != ETH_P_IPV6_BE) {
        count_drop_skip(NETLAT_SKIP_NON_IP);
        return;
    }
    if (!skb_passes(skb)) {
        count_drop_skip(NETLAT_SKIP_FILTERED);
        return;
    }
    struct pkt_meta m = {};
    m.net_type = proto == ETH_P_IP_BE ? NETLAT_NT_IPV4 : NETLAT_NT_IPV6;
    m.transport = NETLAT_TR_OTHER;
    u64 l3 = l3_tx(&f);
    if (l3)
        parse_l3(l3, proto, &m);
    if (reason > NETLAT_MAX_DROP_REASON)
        reason = NETLAT_MAX_DROP_REASON; /* not in this kernel's enum (subsystem reasons): "UNKNOWN" */
    u64 *v = drops_at((reason * NETLAT_N_NET_TYPES + m.net_type) * NETLAT_N_TRANSPORTS + m.transport);
    if (v)
        bump(v, 1);
    u64 *c = DROPS_ADDR_FOR(reason, &m);
    if (c)
        bump(c, 1);
}
#else
static __always_inline void count_drop(u64 skb, u32 reason) {}
#endif

#endif /* NETLAT_DROPS_H */
