/* vipfarm XDP farm filter.
 *
 * Every farm node sees every packet sent to a VIP. This program hashes the client of each
 * VIP packet into one of the farm's buckets and lets the packet in only on the node that owns
 * the bucket; everyone else drops it. ARP requests and neighbour solicitations for a VIP are
 * answered with the farm's virtual MAC. Everything else passes untouched.
 *
 * The lease: the agent keeps two deadlines per farm in vf_lease while it hears its peers.
 * Past syn_deadline (a frozen, killed or cut-off agent), new TCP flows to this node's buckets
 * are refused, so the node stops taking flows before its peers take its buckets over. Past
 * deadline (one heartbeat interval later, just before the peers take over) every packet to
 * this node's buckets is dropped: the new owner's clients' segments would otherwise reach this
 * node's stack too, which has no socket for them and would answer with a RST. ARP/NS answers
 * are untouched by either stage (every node answers with the same virtual MAC).
 *
 * Handover: a bucket whose `moving` bit is set (on every node, while some node still drains
 * flows from it) is decided by state first. A TCP packet whose 4-tuple this node's kernel knows
 * (bpf_skc_lookup_tcp: an established, request (SYN_RECV) or TIME_WAIT socket; a listener does
 * not count) is taken whoever owns the bucket, so the old owner keeps its flows and the new
 * owner its own; a SYN (no ACK) matching only a TIME_WAIT socket is not (a new connection reusing
 * the 4-tuple goes to the owner: taking it here too would answer it twice). Any other SYN goes to
 * the owner, subject to the lease; any other TCP segment is dropped by every node, so no node
 * answers another node's flow with a RST. Buckets not moving pay one AND of a bit already loaded.
 * The lease does not apply to packets taken by state: it guards new flows and the successor's
 * flows, and a flow this kernel holds is neither.
 *
 * UDP handover: UDP has no socket per flow, so user space keeps the state instead, in
 * vf_udp_flows (vipfarm/udp_flows.py): the old owner writes the UDP flows it served in the
 * buckets it gives up as its own (mine), its peers write the same list as someone else's. For a
 * farm whose vf_udp_farm idle_ns is set, a UDP packet in a moving bucket with a fresh entry
 * (now - last <= idle_ns; a `last` in the future counts as fresh) is taken if the entry is mine
 * (no lease check, as for TCP state) and dropped if not; either way `last` moves forward to
 * now, so every node (every node sees every packet) ages the entry out at the same time. A UDP
 * packet with no fresh entry is dropped while the farm's hold is on (now < hold_until: a new
 * owner waiting for its peers' lists), else it goes to the owner, subject to the lease. The
 * filter never deletes an entry: user space removes stale ones, the LRU evicts when full.
 *
 * Compile-time defines (passed as -D flags by nodeagent/bpf_program.py):
 *   VF_IFACE_MAC0..5 the NIC's own MAC, one byte each
 *   VF_ANSWER_NEIGH  1: answer ARP/NS here with XDP_TX; 0: pass them up to the agent
 *   VF_PIN_DIR       bpffs directory where the maps are pinned (absent in tests)
 *   VF_TRACE_BUCKET  test builds: record each computed bucket in vf_trace
 *   VF_NO_HANDOVER   benchmarks: compile the moving-bucket rules (TCP and UDP) out (the fast
 *                    path's baseline; the maps stay declared, unread)
 */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/if_arp.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/icmpv6.h>

#include "vipfarm_consts.h"
#include "vipfarm_structs.h"
#include "vipfarm_maps.h"
#include "vipfarm_hash.h"
#include "vipfarm_neigh.h"

#define VF_IP_MF      0x2000
#define VF_IP_OFFSET  0x1fff

/* What the L3/L4 parse found out about a VIP packet. */
struct vf_flow {
    const __u32 *client;   /* source address words, in the packet */
    const __u32 *local;    /* destination address words (the VIP), in the packet */
    int nwords;            /* 1 (IPv4) or 4 (IPv6) */
    int fragment;          /* any fragment: hash the address only */
    __u8 proto;            /* L4 protocol, when ports were read */
    int has_ports;
    __u16 sport;           /* network order */
    __u16 dport;           /* network order */
    __u8 tcp_flags;        /* TCP only */
};

/* Map access stays in this file: bcc rewrites table calls in the main source only. */
static __always_inline void vf_count(__u32 slot, __u32 counter)
{
    __u32 idx = slot * VF_NCOUNTERS + counter;
    __u64 *v = vf_stats.lookup(&idx);
    if (v)
        *v += 1;
}

static __always_inline int vf_pass(__u32 counter)
{
    vf_count(VF_GLOBAL_SLOT, counter);
    return XDP_PASS;
}

static __always_inline int vf_malformed(__u32 farm)
{
    vf_count(farm, VF_CNT_MALFORMED);
    return XDP_DROP;
}

/* The first rule that matches protocol and destination port decides the affinity; traffic
 * matching no rule (ICMP, other ports, fragments) uses the client address alone. */
static __always_inline int vf_affinity(const struct vf_vip *vip, const struct vf_flow *flow)
{
    if (flow->fragment || !flow->has_ports)
        return VF_AFF_CLIENTIP;
    __u16 dport = __builtin_bswap16(flow->dport);
#pragma unroll
    for (int i = 0; i < VF_MAX_RULES; i++) {
        if (i >= vip->nrules)
            break;
        const struct vf_rule *r = &vip->rules[i];
        if (r->proto == flow->proto && dport >= r->port_lo && dport <= r->port_hi)
            return r->affinity;
    }
    return VF_AFF_CLIENTIP;
}

/* The owned and moving bits of the word holding this flow's bucket, in the live half of the
 * farm's owner table (NULL: the farm has no table); *bucket is the flow's bucket. */
static __always_inline struct vf_bits *vf_bucket_bits(__u32 farm, const struct vf_vip *vip,
                                                      const struct vf_flow *flow, __u32 *bucket_out)
{
    __u32 *active = vf_active.lookup(&farm);
    if (!active)
        return 0;
    __u32 half = farm * 2 + (*active & 1);
    struct vf_table *table = vf_tables.lookup(&half);
    if (!table)
        return 0;
    int by_port = vf_affinity(vip, flow) == VF_AFF_CLIENTIPPORT;
    __u32 h = vf_client_hash(flow->client, flow->nwords, by_port, flow->sport, table->seed);
    __u32 bucket = h & table->mask & (VF_MAX_BUCKETS - 1);
#ifdef VF_TRACE_BUCKET
    __u32 zero = 0;
    __u32 *trace = vf_trace.lookup(&zero);
    if (trace)
        *trace = bucket + 1;
#endif
    __u32 word = half * VF_TABLE_WORDS + (bucket >> 6);
    *bucket_out = bucket;
    return vf_owner.lookup(&word);
}

/* A segment that opens a TCP flow: SYN without ACK. */
static __always_inline int vf_opens_flow(const struct vf_flow *flow)
{
    return flow->proto == IPPROTO_TCP && (flow->tcp_flags & (VF_TCP_SYN | VF_TCP_ACK)) == VF_TCP_SYN;
}

/* The lease's verdict on a packet to an owned bucket: 0 = take it, otherwise the counter it
 * is dropped under. One vf_lease lookup per owned packet, and at most one clock read:
 *  - a SYN (no ACK) reads the exact clock, bpf_ktime_get_ns, and is judged by both stages
 *    with it: past syn_deadline it is lease_expired, else past deadline lease_lapsed;
 *  - any other segment, UDP, ICMP or fragment reads the clock only when the second stage is
 *    in use, and then the coarse one (bpf_ktime_get_coarse_ns, one tick behind at most: the
 *    second stage is a margin before the peers take over, so a tick late is harmless), which
 *    keeps the established fast path cheap. */
static __always_inline __u32 vf_lease_drop(__u32 farm, const struct vf_flow *flow)
{
    struct vf_lease *lease = vf_lease.lookup(&farm);
    if (!lease)
        return 0;
    __u64 syn_deadline = lease->syn_deadline;
    __u64 deadline = lease->deadline;
    if (vf_opens_flow(flow)) {
        if (!syn_deadline && !deadline)
            return 0;
        __u64 now = bpf_ktime_get_ns();
        if (syn_deadline && now > syn_deadline)
            return VF_CNT_LEASE_EXPIRED;
        if (deadline && now > deadline)
            return VF_CNT_LEASE_LAPSED;
        return 0;
    }
    if (deadline && bpf_ktime_get_coarse_ns() > deadline)
        return VF_CNT_LEASE_LAPSED;
    return 0;
}

#ifndef VF_NO_HANDOVER
/* The state (BPF_TCP_*) of this kernel's socket for a TCP flow's 4-tuple, in the netns of the
 * XDP device (of the test-run caller under BPF_PROG_TEST_RUN); -1 = no socket. The reference
 * bpf_skc_lookup_tcp takes is released on every path, as the verifier demands. */
static __always_inline int vf_sock_state(struct xdp_md *ctx, const struct vf_flow *flow)
{
    struct bpf_sock_tuple t = {};
    struct bpf_sock *sk;
    if (flow->nwords == 1) {
        t.ipv4.saddr = flow->client[0];
        t.ipv4.daddr = flow->local[0];
        t.ipv4.sport = flow->sport;
        t.ipv4.dport = flow->dport;
        sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
    } else {
        __builtin_memcpy(t.ipv6.saddr, flow->client, 16);
        __builtin_memcpy(t.ipv6.daddr, flow->local, 16);
        t.ipv6.sport = flow->sport;
        t.ipv6.dport = flow->dport;
        sk = bpf_skc_lookup_tcp(ctx, &t, sizeof(t.ipv6), BPF_F_CURRENT_NETNS, 0);
    }
    if (!sk)
        return -1;
    int state = sk->state;
    bpf_sk_release(sk);
    return state;
}
#endif

static __always_inline int vf_take(struct ethhdr *eth, __u32 farm, __u32 counter)
{
    /* The frame may be addressed to the virtual MAC; make it ours so the stack takes it. */
    vf_set_own_mac(eth->h_dest);
    vf_count(farm, counter);
    return XDP_PASS;
}

#ifndef VF_NO_HANDOVER
/* The UDP flow table's verdict on a UDP packet in a moving bucket: an XDP action, or -1 when
 * it has none (UDP handover off for the farm, or no fresh entry and no hold), and the packet
 * goes on to the owned bit and the lease. One clock read and two lookups, on the slow path
 * only. */
static __always_inline int vf_udp_handover(struct ethhdr *eth, __u32 farm, const struct vf_flow *flow)
{
    struct vf_udp_farm *u = vf_udp_farm.lookup(&farm);
    if (!u)
        return -1;
    __u64 idle_ns = u->idle_ns;
    if (!idle_ns)
        return -1;
    __u64 now = bpf_ktime_get_ns();
    struct vf_udp_key key = { .farm = farm, .sport = flow->sport, .dport = flow->dport };
    if (flow->nwords == 1) {
        key.family = VF_FAMILY_V4;
        __builtin_memcpy(key.client, flow->client, 4);
        __builtin_memcpy(key.vip, flow->local, 4);
    } else {
        key.family = VF_FAMILY_V6;
        __builtin_memcpy(key.client, flow->client, 16);
        __builtin_memcpy(key.vip, flow->local, 16);
    }
    struct vf_udp_flow *fl = vf_udp_flows.lookup(&key);
    if (fl) {
        __u64 last = fl->last;
        if ((__s64)(now - last) <= (__s64)idle_ns) {
            if (now > last)
                fl->last = now;
            if (fl->mine)
                return vf_take(eth, farm, VF_CNT_UDP_KEPT);
            vf_count(farm, VF_CNT_UDP_ELSEWHERE);
            return XDP_DROP;
        }
    }
    if (now < u->hold_until) {
        vf_count(farm, VF_CNT_UDP_HELD);
        return XDP_DROP;
    }
    return -1;
}
#endif

static __always_inline int vf_decide(struct xdp_md *ctx, struct ethhdr *eth, __u32 farm,
                                     const struct vf_vip *vip, const struct vf_flow *flow)
{
    __u32 bucket = 0;
    struct vf_bits *bits = vf_bucket_bits(farm, vip, flow, &bucket);
    if (!bits) {
        vf_count(farm, VF_CNT_DROPPED);
        return XDP_DROP;
    }
    __u64 bit = 1ULL << (bucket & 63);
#ifndef VF_NO_HANDOVER
    /* proto is set only when the ports were read (never for a fragment). */
    if (bits->moving & bit) {
        if (flow->proto == IPPROTO_TCP) {
            int state = vf_sock_state(ctx, flow);
            if (state >= 0 && state != BPF_TCP_LISTEN &&
                !(state == BPF_TCP_TIME_WAIT && vf_opens_flow(flow)))
                return vf_take(eth, farm, VF_CNT_HANDOVER_KEPT);
            if (!vf_opens_flow(flow)) {
                vf_count(farm, VF_CNT_HANDOVER_UNKNOWN_DROPPED);
                return XDP_DROP;
            }
        } else if (flow->proto == IPPROTO_UDP) {
            int verdict = vf_udp_handover(eth, farm, flow);
            if (verdict >= 0)
                return verdict;
        }
    }
#endif
    if (bits->owned & bit) {
        __u32 reason = vf_lease_drop(farm, flow);
        if (reason) {
            vf_count(farm, reason);
            return XDP_DROP;
        }
        return vf_take(eth, farm, VF_CNT_ACCEPTED);
    }
    vf_count(farm, VF_CNT_DROPPED);
    return XDP_DROP;
}

/* Read the ports of a TCP/UDP header at l4, if the header fits before `end`. 0 = truncated. */
static __always_inline int vf_read_ports(void *l4, void *end, void *data_end, __u8 proto,
                                         struct vf_flow *flow)
{
    __u32 need = proto == IPPROTO_TCP ? 20 : 8;
    if (l4 + need > end || l4 + 4 > data_end)
        return 0;
    __u16 *ports = l4;
    if (proto == IPPROTO_TCP) {
        /* Never taken once the header fits before `end` (which is <= data_end); the verifier
         * needs the bound against data_end itself. */
        if (l4 + 14 > data_end)
            return 0;
        flow->tcp_flags = ((__u8 *)l4)[13];
    }
    flow->proto = proto;
    flow->has_ports = 1;
    flow->sport = ports[0];
    flow->dport = ports[1];
    return 1;
}

static __always_inline int vf_handle_arp(void *data, void *data_end)
{
    struct ethhdr *eth = data;
    struct arphdr *arp = data + sizeof(*eth);
    struct vf_arp_body *body = (void *)(arp + 1);
    if ((void *)(body + 1) > data_end)
        return vf_pass(VF_CNT_PASSED);
    if (arp->ar_hrd != __builtin_bswap16(ARPHRD_ETHER) || arp->ar_pro != __builtin_bswap16(ETH_P_IP) ||
        arp->ar_hln != 6 || arp->ar_pln != 4 || arp->ar_op != __builtin_bswap16(ARPOP_REQUEST))
        return vf_pass(VF_CNT_PASSED);
    /* A gratuitous ARP (sender = target) announces, it does not ask. */
    if (body->spa[0] == body->tpa[0] && body->spa[1] == body->tpa[1] &&
        body->spa[2] == body->tpa[2] && body->spa[3] == body->tpa[3])
        return vf_pass(VF_CNT_PASSED);
    struct vf_vip_key key = { .family = VF_FAMILY_V4 };
    __builtin_memcpy(key.addr, body->tpa, 4);
    struct vf_vip *vip = vf_vips.lookup(&key);
    if (!vip)
        return vf_pass(VF_CNT_PASSED);
    __u32 farm = vip->farm;
    struct vf_farm *f = vf_farms.lookup(&farm);
    if (!f)
        return vf_pass(VF_CNT_PASSED);
#if VF_ANSWER_NEIGH
    vf_count(farm, VF_CNT_NEIGH_REPLIED);
    return vf_arp_reply(eth, arp, body, f);
#else
    vf_count(farm, VF_CNT_NEIGH_PUNTED);
    return XDP_PASS;
#endif
}

static __always_inline int vf_handle_ipv4(struct xdp_md *ctx, void *data, void *data_end)
{
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > data_end)
        return vf_pass(VF_CNT_MALFORMED);
    struct vf_vip_key key = { .family = VF_FAMILY_V4 };
    __builtin_memcpy(key.addr, &ip->daddr, 4);
    struct vf_vip *vip = vf_vips.lookup(&key);
    if (!vip)
        return vf_pass(VF_CNT_PASSED);
    __u32 farm = vip->farm;

    __u32 hlen = ip->ihl * 4;
    __u32 tot = __builtin_bswap16(ip->tot_len) & 0xffff;
    if (ip->version != 4 || hlen < sizeof(*ip) || tot < hlen || (void *)ip + tot > data_end)
        return vf_malformed(farm);
    void *end = (void *)ip + (tot & 0xffff);

    struct vf_flow flow = { .client = &ip->saddr, .local = &ip->daddr, .nwords = 1 };
    if (ip->frag_off & __builtin_bswap16(VF_IP_MF | VF_IP_OFFSET)) {
        flow.fragment = 1;
    } else if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
        void *l4 = (void *)ip + (hlen & 0x3c);
        if (!vf_read_ports(l4, end, data_end, ip->protocol, &flow))
            return vf_malformed(farm);
    }
    return vf_decide(ctx, eth, farm, vip, &flow);
}

static __always_inline int vf_handle_ipv6(struct xdp_md *ctx, void *data, void *data_end)
{
    struct ethhdr *eth = data;
    struct ipv6hdr *ip6 = data + sizeof(*eth);
    if ((void *)(ip6 + 1) > data_end)
        return vf_pass(VF_CNT_MALFORMED);

    /* Neighbour solicitation for a VIP, whatever its destination (multicast or unicast). */
    if (ip6->version == 6 && ip6->nexthdr == IPPROTO_ICMPV6) {
        __u8 *icmp = (void *)(ip6 + 1);
        if (icmp + 24 <= (__u8 *)data_end && icmp[0] == 135 && icmp[1] == 0 &&
            ip6->hop_limit == 255 && __builtin_bswap16(ip6->payload_len) >= 24 &&
            (void *)(ip6 + 1) + (__builtin_bswap16(ip6->payload_len) & 0xffff) <= data_end) {
            struct vf_vip_key nkey = { .family = VF_FAMILY_V6 };
            __builtin_memcpy(nkey.addr, icmp + 8, 16);
            struct vf_vip *nvip = vf_vips.lookup(&nkey);
            if (nvip) {
                __u32 nfarm = nvip->farm;
                struct vf_farm *f = vf_farms.lookup(&nfarm);
                if (f) {
#if VF_ANSWER_NEIGH
                    vf_count(nfarm, VF_CNT_NEIGH_REPLIED);
                    int rc = vf_ns_reply(ctx, eth->h_source, &ip6->saddr, icmp + 8, f);
                    return rc < 0 ? XDP_DROP : rc;
#else
                    vf_count(nfarm, VF_CNT_NEIGH_PUNTED);
                    return XDP_PASS;
#endif
                }
            }
        }
    }

    struct vf_vip_key key = { .family = VF_FAMILY_V6 };
    __builtin_memcpy(key.addr, &ip6->daddr, 16);
    struct vf_vip *vip = vf_vips.lookup(&key);
    if (!vip)
        return vf_pass(VF_CNT_PASSED);
    __u32 farm = vip->farm;

    __u32 plen = __builtin_bswap16(ip6->payload_len) & 0xffff;
    if (ip6->version != 6 || (void *)(ip6 + 1) + plen > data_end)
        return vf_malformed(farm);
    void *end = (void *)(ip6 + 1) + (plen & 0xffff);

    struct vf_flow flow = { .client = (const __u32 *)&ip6->saddr, .local = (const __u32 *)&ip6->daddr,
                            .nwords = 4 };
    __u8 nh = ip6->nexthdr;
    __u32 off = 0;   /* bytes of extension headers walked */
#pragma unroll
    for (int i = 0; i < VF_MAX_EXT_HDRS; i++) {
        if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS)
            break;
        __u8 *ext = (void *)(ip6 + 1) + off;
        if (ext + 2 > (__u8 *)end || ext + 2 > (__u8 *)data_end)
            return vf_malformed(farm);
        nh = ext[0];
        off += (ext[1] + 1) * 8;
        if (off > VF_MAX_EXT_OFFSET)
            break;
    }
    if (nh == IPPROTO_FRAGMENT) {
        flow.fragment = 1;
    } else if (off <= VF_MAX_EXT_OFFSET && (nh == IPPROTO_TCP || nh == IPPROTO_UDP)) {
        void *l4 = (void *)(ip6 + 1) + (off & 0x1ff);
        if (!vf_read_ports(l4, end, data_end, nh, &flow))
            return vf_malformed(farm);
    }
    return vf_decide(ctx, eth, farm, vip, &flow);
}

int vipfarm_xdp(struct xdp_md *ctx)
{
    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;

    if ((void *)(eth + 1) > data_end)
        return vf_pass(VF_CNT_MALFORMED);
    /* VLAN-tagged frames and every other ethertype are not ours. */
    if (eth->h_proto == __builtin_bswap16(ETH_P_ARP))
        return vf_handle_arp(data, data_end);
    if (eth->h_proto == __builtin_bswap16(ETH_P_IP))
        return vf_handle_ipv4(ctx, data, data_end);
    if (eth->h_proto == __builtin_bswap16(ETH_P_IPV6))
        return vf_handle_ipv6(ctx, data, data_end);
    return vf_pass(VF_CNT_PASSED);
}
