/* Answers to ARP requests and IPv6 neighbour solicitations for a VIP.
 * The reply carries the farm's virtual MAC in the ARP/NA payload, but the node's own MAC as
 * the Ethernet source: switches never learn the virtual MAC, so they keep flooding it to
 * every node (SafeKit's "invisible" virtual MAC). nodeagent/neighbour.py builds the same
 * bytes for the user-space announcer and for the reference model. */
#ifndef VIPFARM_NEIGH_H
#define VIPFARM_NEIGH_H

struct vf_arp_body {        /* ARP for Ethernet/IPv4, after the 8-byte fixed header */
    __u8 sha[6];
    __u8 spa[4];
    __u8 tha[6];
    __u8 tpa[4];
} __attribute__((packed));

struct vf_na {              /* IPv6 header + NA + target link-layer address option */
    struct ipv6hdr ip6;
    __u8  type;
    __u8  code;
    __u16 csum;
    __u8  flags;
    __u8  reserved[3];
    __u8  target[16];
    __u8  opt_type;
    __u8  opt_len;
    __u8  opt_mac[6];
} __attribute__((packed));

static __always_inline void vf_copy_mac(__u8 *dst, const __u8 *src)
{
    __builtin_memcpy(dst, src, 6);
}

/* The NIC's own MAC comes in as six defines: a constant array would land in .rodata,
 * which this loader cannot relocate. */
static __always_inline void vf_set_own_mac(__u8 *dst)
{
    dst[0] = VF_IFACE_MAC0; dst[1] = VF_IFACE_MAC1; dst[2] = VF_IFACE_MAC2;
    dst[3] = VF_IFACE_MAC3; dst[4] = VF_IFACE_MAC4; dst[5] = VF_IFACE_MAC5;
}

/* In-place ARP reply: op 2, sender = VIP at the virtual MAC, target = the requester. */
static __always_inline int vf_arp_reply(struct ethhdr *eth, struct arphdr *arp,
                                        struct vf_arp_body *body, const struct vf_farm *farm)
{
    __u8 req_mac[6];
    __u8 req_ip[4];

    vf_copy_mac(req_mac, body->sha);
    __builtin_memcpy(req_ip, body->spa, 4);

    vf_copy_mac(eth->h_dest, eth->h_source);
    vf_set_own_mac(eth->h_source);
    arp->ar_op = __builtin_bswap16(ARPOP_REPLY);
    __builtin_memcpy(body->spa, body->tpa, 4);
    vf_copy_mac(body->sha, farm->vmac);
    vf_copy_mac(body->tha, req_mac);
    __builtin_memcpy(body->tpa, req_ip, 4);
    return XDP_TX;
}

static __always_inline __u16 vf_csum_fold(__u32 sum)
{
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    return (__u16)~sum;
}

/* Build the NA for `target` (a VIP) in response to an NS from `src` / `src_mac`, then resize
 * the frame to exactly VF_NA_FRAME_LEN bytes and write it. */
static __always_inline int vf_ns_reply(struct xdp_md *ctx, const __u8 *src_mac,
                                       const struct in6_addr *src, const __u8 *target,
                                       const struct vf_farm *farm)
{
    struct vf_na na = {};
    __u8 dst_mac[6];
    int dad = 1;
    __u32 sum = 0;

#pragma unroll
    for (int i = 0; i < 4; i++)
        if (src->s6_addr32[i])
            dad = 0;

    na.ip6.version = 6;
    na.ip6.payload_len = __builtin_bswap16(32);
    na.ip6.nexthdr = IPPROTO_ICMPV6;
    na.ip6.hop_limit = 255;
    __builtin_memcpy(&na.ip6.saddr, target, 16);
    if (dad) {
        /* RFC 4861 7.2.4: an NS from :: (DAD) is answered to all-nodes, with S clear. */
        na.ip6.daddr.s6_addr[0] = 0xff;
        na.ip6.daddr.s6_addr[1] = 0x02;
        na.ip6.daddr.s6_addr[15] = 0x01;
        dst_mac[0] = 0x33; dst_mac[1] = 0x33; dst_mac[2] = 0;
        dst_mac[3] = 0; dst_mac[4] = 0; dst_mac[5] = 1;
        na.flags = 0x20;                      /* O */
    } else {
        __builtin_memcpy(&na.ip6.daddr, src, 16);
        vf_copy_mac(dst_mac, src_mac);
        na.flags = 0x60;                      /* S | O */
    }
    na.type = 136;
    __builtin_memcpy(na.target, target, 16);
    na.opt_type = 2;                          /* target link-layer address */
    na.opt_len = 1;
    vf_copy_mac(na.opt_mac, farm->vmac);

    /* ICMPv6 checksum: pseudo-header (addresses, length 32, next header 58) + message. */
    __u16 *w = (__u16 *)&na.ip6.saddr;
#pragma unroll
    for (int i = 0; i < 16; i++)
        sum += w[i];
    sum += __builtin_bswap16(32);
    sum += __builtin_bswap16(IPPROTO_ICMPV6);
    w = (__u16 *)&na.type;
#pragma unroll
    for (int i = 0; i < 16; i++)
        sum += w[i];
    na.csum = vf_csum_fold(sum);

    void *data = (void *)(long)ctx->data;
    void *data_end = (void *)(long)ctx->data_end;
    int delta = VF_NA_FRAME_LEN - (int)(data_end - data);
    if (delta && bpf_xdp_adjust_tail(ctx, delta))
        return -1;
    data = (void *)(long)ctx->data;
    data_end = (void *)(long)ctx->data_end;
    if (data + VF_NA_FRAME_LEN > data_end)
        return -1;
    struct ethhdr *eth = data;
    vf_copy_mac(eth->h_dest, dst_mac);
    vf_set_own_mac(eth->h_source);
    eth->h_proto = __builtin_bswap16(ETH_P_IPV6);
    __builtin_memcpy(data + sizeof(struct ethhdr), &na, sizeof(na));
    return XDP_TX;
}

#endif
