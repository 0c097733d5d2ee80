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
 *           whoever owns the bucket, and an unknown non-SYN is dropped by every node. */
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

#endif
