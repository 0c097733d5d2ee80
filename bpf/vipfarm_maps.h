/* Every map of the filter. With VF_PIN_DIR defined (the agent), each map is pinned under it
 * so a restarted agent adopts the live maps; without it (tests, benchmarks) maps are private. */
#ifndef VIPFARM_MAPS_H
#define VIPFARM_MAPS_H

#ifdef VF_PIN_DIR
#define VF_TABLE(type, k, v, name, n) BPF_TABLE_PINNED(type, k, v, name, n, VF_PIN_DIR "/" #name)
#else
#define VF_TABLE(type, k, v, name, n) BPF_TABLE(type, k, v, name, n)
#endif

/* VIP -> farm slot and rules. */
VF_TABLE("hash", struct vf_vip_key, struct vf_vip, vf_vips, VF_MAX_VIPS_PER_IFACE);
/* farm slot -> virtual MAC. */
VF_TABLE("array", __u32, struct vf_farm, vf_farms, VF_MAX_FARMS);
/* farm slot -> which half (0/1) of its owner table is live; one aligned u32 write flips it. */
VF_TABLE("array", __u32, __u32, vf_active, VF_MAX_FARMS);
/* (slot * 2 + half) -> seed and mask of that half. */
VF_TABLE("array", __u32, struct vf_table, vf_tables, VF_MAX_FARMS * 2);
/* ((slot * 2 + half) * VF_TABLE_WORDS + bucket / 64) -> 64 buckets' owned and moving bits.
 * (Before handover the value was one __u64 of owned bits; nodeagent/pinned_layout.py migrates
 * such a pin.) */
VF_TABLE("array", __u32, struct vf_bits, vf_owner, VF_MAX_FARMS * 2 * VF_TABLE_WORDS);
/* farm slot -> the farm's lease (struct vf_lease, CLOCK_MONOTONIC ns; 0 = stage not in use).
 * Past syn_deadline, new TCP flows (SYN without ACK) to this node's buckets are dropped; past
 * deadline, every packet to them is (the node is out). */
VF_TABLE("array", __u32, struct vf_lease, vf_lease, VF_MAX_FARMS);
/* UDP handover (a moving bucket's UDP packets are decided by these first; vipfarm_xdp.c).
 * (slot, 4-tuple) -> the flow's last packet, owner (mine or not) and bucket; one LRU table for
 * all farms of the interface, filled by user space; the filter moves `last` forward and never
 * deletes (user space removes stale entries, the LRU evicts the oldest when full). */
VF_TABLE("lru_hash", struct vf_udp_key, struct vf_udp_flow, vf_udp_flows, VF_MAX_UDP_FLOWS);
/* farm slot -> its UDP handover settings (idle_ns 0 = off). */
VF_TABLE("array", __u32, struct vf_udp_farm, vf_udp_farm, VF_MAX_FARMS);
/* (slot * VF_NCOUNTERS + counter) -> per-CPU count; slot VF_GLOBAL_SLOT has no farm. */
VF_TABLE("percpu_array", __u32, __u64, vf_stats, (VF_MAX_FARMS + 1) * VF_NCOUNTERS);

#ifdef VF_TRACE_BUCKET
/* Test builds only: the last bucket computed on this CPU, plus one (0 = none). */
VF_TABLE("percpu_array", __u32, __u32, vf_trace, 1);
#endif

#endif
