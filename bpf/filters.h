/* otel-netlat: the network namespace and interface filters.
 *
 * With --netns / --interface the loader defines NETLAT_FILTER_NETNS / NETLAT_FILTER_IFINDEX
 * and keeps the sets below current: namespace inodes and interface indexes are resolved
 * from their names in user space, again whenever a namespace or interface is deleted and
 * recreated (collect/filters.py), so a recreated one is measured again without a reload.
 * Without a filter both checks are the constant 1: an unfiltered program pays nothing. A
 * packet is filtered by its device; a socket, which has no device, by its namespace and the
 * interface its newest packet came in on.
 */
#ifndef NETLAT_FILTERS_H
#define NETLAT_FILTERS_H

#include "netlat.h"

static __always_inline u32 net_inum(u64 net) { return net ? read_u32(net + OFF_NET_NS_INUM) : 0; }


static __always_inline int skb_passes(u64 skb) {
#if defined(NETLAT_FILTER_NETNS) || defined(NETLAT_FILTER_IFINDEX)
    u64 dev = read_u64(skb + OFF_SKB_DEV);
    if (!dev)
        return 0;
#ifdef NETLAT_FILTER_NETNS
    u32 inum = net_inum(read_u64(dev + OFF_DEV_ND_NET));
    if (!netns_ok(inum))
        return 0;
#endif
#ifdef NETLAT_FILTER_IFINDEX
    u32 ifindex = read_u32(dev + OFF_DEV_IFINDEX);
    if (!ifindex_ok(ifindex))
        return 0;
#endif
#endif
    return 1;
}

static __always_inline int sk_passes(u64 sk, u64 tail, u64 queue) {
#ifdef NETLAT_FILTER_NETNS
    u32 inum = net_inum(read_u64(sk + OFF_SK_NET));
    if (!netns_ok(inum))
        return 0;
#endif
#ifdef NETLAT_FILTER_IFINDEX
    /* A socket has no interface: use the one its newest packet came in on. */
    if (tail == queue)
        return 0;
    u32 iif = read_u32(tail + OFF_SKB_SKB_IIF);
    if (!ifindex_ok(iif))
        return 0;
#endif
    return 1;
}

#endif /* NETLAT_FILTERS_H */
