/* Limits, counter indices and flags of the vipfarm XDP filter.
 * nodeagent/bpf_consts.py mirrors every value here; tests/unit/test_bpf_consts.py checks it. */
#ifndef VIPFARM_CONSTS_H
#define VIPFARM_CONSTS_H

#define VF_MAX_FARMS        32          /* farm slots per interface */
#define VF_MAX_VIPS_PER_IFACE 256         /* VIP entries per interface, all farms together */
#define VF_MAX_RULES        8           /* rules per VIP (a farm's rules are copied to each VIP) */
#define VF_MAX_BUCKETS      65536
#define VF_TABLE_WORDS      (VF_MAX_BUCKETS / 64)   /* u64 words in one owner bitmap */
#define VF_GLOBAL_SLOT      VF_MAX_FARMS            /* counters of traffic that has no farm */
#define VF_MAX_UDP_FLOWS    65536       /* UDP handover flow entries per interface, all farms together */

/* Counter indices; the stats map holds (VF_MAX_FARMS + 1) * VF_NCOUNTERS per-CPU u64s. */
#define VF_CNT_ACCEPTED       0   /* owned VIP packet, passed up with our MAC */
#define VF_CNT_DROPPED        1   /* VIP packet owned by another node */
#define VF_CNT_NEIGH_REPLIED  2   /* ARP request / NS for a VIP answered with XDP_TX */
#define VF_CNT_NEIGH_PUNTED   3   /* ARP request / NS for a VIP passed up to the agent */
#define VF_CNT_MALFORMED      4   /* header truncated or inconsistent */
#define VF_CNT_PASSED         5   /* not VIP traffic, passed untouched */
#define VF_CNT_LEASE_EXPIRED  6   /* new TCP flow (SYN, no ACK) to an owned bucket, dropped: syn_deadline past */
#define VF_CNT_LEASE_LAPSED   7   /* any other packet to an owned bucket, dropped: the lease's deadline past */
#define VF_CNT_HANDOVER_KEPT  8   /* TCP packet in a moving bucket taken because this kernel knows its 4-tuple */
#define VF_CNT_HANDOVER_UNKNOWN_DROPPED 9   /* non-SYN TCP in a moving bucket, 4-tuple unknown here: dropped */
#define VF_CNT_UDP_KEPT       10  /* UDP packet in a moving bucket taken: a fresh entry of vf_udp_flows says it is mine */
#define VF_CNT_UDP_ELSEWHERE  11  /* UDP packet in a moving bucket dropped: a fresh entry says another node serves it */
#define VF_CNT_UDP_HELD       12  /* UDP packet in a moving bucket, no fresh entry, dropped: the farm's hold is on */
#define VF_NCOUNTERS          13

/* TCP flag bits (byte 13 of the TCP header). */
#define VF_TCP_SYN            0x02
#define VF_TCP_ACK            0x10

#define VF_AFF_CLIENTIP       0
#define VF_AFF_CLIENTIPPORT   1

#define VF_FAMILY_V4          4
#define VF_FAMILY_V6          6

#define VF_MAX_EXT_HDRS       4     /* IPv6 extension headers walked before giving up on ports */
#define VF_MAX_EXT_OFFSET     256   /* bytes of extension headers walked, at most */

#define VF_NA_FRAME_LEN       86    /* eth 14 + ipv6 40 + NA 24 + target link-layer option 8 */

/* VF_ANSWER_NEIGH (a -D flag from nodeagent/bpf_program.py):
 *   1: answer ARP/NS for a VIP from XDP with XDP_TX (generic mode);
 *   0: pass them up so the agent answers over AF_PACKET (native mode, where veth peers
 *      behind a bridge lose XDP_TX frames). */
#ifndef VF_ANSWER_NEIGH
#define VF_ANSWER_NEIGH 1
#endif

#endif
