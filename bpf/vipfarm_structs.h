/* Structures shared with user space. User space never redeclares them: bcc builds ctypes
 * types for each map's key and leaf from these definitions when it compiles the program, and
 * nodeagent/filter_tables.py fills them by field name. (nodeagent/bpf_consts.py mirrors the
 * constants of vipfarm_consts.h, not these structs.) */
#ifndef VIPFARM_STRUCTS_H
#define VIPFARM_STRUCTS_H

struct vf_vip_key {
    __u32 family;          /* VF_FAMILY_V4 or VF_FAMILY_V6 */
    __u8  addr[16];        /* network order; IPv4 uses the first 4 bytes, the rest are zero */
};

struct vf_rule {
    __u8  proto;           /* IPPROTO_TCP or IPPROTO_UDP */
    __u8  affinity;        /* VF_AFF_* */
    __u16 port_lo;         /* host order, inclusive */
    __u16 port_hi;
    __u16 pad;
};

struct vf_vip {
    __u32 farm;            /* farm slot */
    __u32 nrules;
    struct vf_rule rules[VF_MAX_RULES];
};

struct vf_farm {
    __u8  vmac[6];         /* the farm's virtual MAC, given in ARP replies and NAs */
    __u16 flags;
};

/* One half of a farm's double-buffered owner table. seed and mask travel with the bitmap,
 * so switching vf_active switches all three at once. */
struct vf_table {
    __u32 seed;
    __u32 mask;            /* buckets - 1 */
};

/* 64 buckets of one half of a farm's owner table: two bitmaps side by side, so one lookup
 * gives both and flipping vf_active flips ownership and the handover state together.
 *   owned:  this node owns the bucket (takes its new flows);
 *   moving: the bucket is in handover (set on every node while some node still drains flows
 *           from it): a TCP packet of a flow this node's kernel knows is taken by state,
 *           whoever owns the bucket, and an unknown non-SYN is dropped by every node; a UDP
 *           packet is decided by the farm's UDP flow table first (struct vf_udp_flow). */
struct vf_bits {
    __u64 owned;
    __u64 moving;
};

/* A farm's lease, in two stages, both CLOCK_MONOTONIC nanoseconds; 0 = that stage not in use.
 * Past syn_deadline (exact clock) SYNs to owned buckets are refused; past deadline (coarse
 * clock) every packet to an owned bucket is dropped. The agent writes
 * deadline = syn_deadline + the heartbeat interval. */
struct vf_lease {
    __u64 syn_deadline;
    __u64 deadline;
};

/* The key of a UDP flow in vf_udp_flows: the farm slot and the packet's 4-tuple, as it
 * carries it. No padding (4 + 4 + 16 + 16 + 2 + 2 bytes), so user space and the filter build
 * byte-equal keys field by field. */
struct vf_udp_key {
    __u32 farm;            /* farm slot */
    __u32 family;          /* VF_FAMILY_V4 or VF_FAMILY_V6 */
    __u8  client[16];      /* source address, network order; IPv4 in the first 4 bytes, the rest zero */
    __u8  vip[16];         /* destination address (the VIP), the same way */
    __u16 sport;           /* client port, network order (as in the packet) */
    __u16 dport;           /* VIP port, network order */
};

/* One UDP flow across a planned move (vipfarm/udp_flows.py says how the table is filled).
 * User space writes the entries: the old owner its own flows (mine = 1), the other nodes the
 * same list from its heartbeat (mine = 0). The filter only reads them and moves `last`
 * forward on each packet of the flow in a moving bucket; every node sees the same packets, so
 * the entries of all nodes age out together. */
struct vf_udp_flow {
    __u64 last;            /* CLOCK_MONOTONIC ns of the flow's last packet */
    __u32 mine;            /* 1: this node serves the flow; 0: another node does */
    __u32 bucket;          /* the flow's bucket (for user space: the filter hashes the packet) */
};

/* A farm's UDP handover settings.
 *   idle_ns:    a duration, ns: an entry is fresh while now - last <= idle_ns (signed, so a
 *               `last` ahead of now is fresh too); 0 = UDP handover off for the farm (the table
 *               is not read, UDP follows ownership alone);
 *   hold_until: a CLOCK_MONOTONIC time, ns: while now < hold_until, a UDP packet in a moving
 *               bucket with no fresh entry is dropped by this node (a new owner waiting for its
 *               peers' flow lists); 0 = no hold. */
struct vf_udp_farm {
    __u64 idle_ns;
    __u64 hold_until;
};

#endif
