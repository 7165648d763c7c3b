/* otel-netlat: the NET_RX and NET_TX softirqs, per CPU.
 *
 * A packet a driver (or veth, or the backlog) has handed over waits for its CPU's NET_RX
 * softirq to run: on a busy node, behind other softirqs or a starved ksoftirqd. That wait is
 * raise -> entry (irq:softirq_raise, irq:softirq_entry); the softirq's own run is entry ->
 * exit (irq:softirq_exit). Raise, entry and exit of a vector happen on one CPU (a raise marks
 * the local CPU's pending bit), so the state is per CPU, with no atomics: the first raise
 * since the last entry starts the wait (later raises of a pending vector change nothing).
 * A NAPI poll that used its whole budget (napi:napi_poll with work == budget) is counted:
 * the device had more packets than one poll may take.
 * Maps are reached through the accessors in netlat.c.
 */
#ifndef NETLAT_SOFTIRQ_H
#define NETLAT_SOFTIRQ_H

#include "hist.h"
#include "netlat.h"

#define NET_TX_SOFTIRQ_ 2
#define NET_RX_SOFTIRQ_ 3

/* Row of a (vector, what) histogram: vector 0 NET_TX, 1 NET_RX; what 0 wait, 1 runtime. */
static __always_inline u32 softirq_row(u32 vec, u32 what) { return (vec - NET_TX_SOFTIRQ_) * 2 + what; }

static __always_inline int softirq_net(u32 vec) { return vec == NET_TX_SOFTIRQ_ || vec == NET_RX_SOFTIRQ_; }

static __always_inline void softirq_sample(u32 row, u64 d) {
    struct hist_val *h = softirq_hist_at(row);
    if (!h)
        return;
    h->starts++; /* per-CPU map, one CPU's events: plain adds */
    u32 b = bucket_of(d);
    if (b < NETLAT_N_BUCKETS) {
        h->buckets[b]++;
        h->sum_ns += d;
    }
}

static __always_inline void softirq_raised(u32 vec) {
    struct softirq_cpu *c = softirq_here();
    if (!c || !softirq_net(vec))
        return;
    u32 v = vec - NET_TX_SOFTIRQ_;
    if (!c->raised[v & 1])
        c->raised[v & 1] = bpf_ktime_get_ns();
}

static __always_inline void softirq_entered(u32 vec) {
    struct softirq_cpu *c = softirq_here();
    if (!c || !softirq_net(vec))
        return;
    u32 v = (vec - NET_TX_SOFTIRQ_) & 1;
    u64 now = bpf_ktime_get_ns();
    u64 raised = c->raised[v];
    c->raised[v] = 0;
    c->entered[v] = now;
    if (raised && now >= raised)
        softirq_sample(softirq_row(vec, 0), now - raised);
}

static __always_inline void softirq_exited(u32 vec) {
    struct softirq_cpu *c = softirq_here();
    if (!c || !softirq_net(vec))
        return;
    u32 v = (vec - NET_TX_SOFTIRQ_) & 1;
    u64 entered = c->entered[v];
    c->entered[v] = 0;
    u64 now = bpf_ktime_get_ns();
    if (entered && now >= entered)
        softirq_sample(softirq_row(vec, 1), now - entered);
}

static __always_inline void napi_polled(int work, int budget) {
    if (work < budget)
        return;
    u64 *n = napi_squeezed_here();
    if (n)
        (*n)++;
}

#endif /* NETLAT_SOFTIRQ_H */
