/* vipfarm TC ingress helper, attached only with native XDP on a veth.
 *
 * A frame flooded to the virtual MAC is marked PACKET_OTHERHOST when veth hands it over.
 * The XDP filter rewrites the destination to the NIC's own MAC for the packets this node
 * owns, but veth's native XDP path (unlike generic XDP, and unlike NIC drivers, which build
 * a fresh skb after XDP) never resets pkt_type, so IP would drop them. This program, at TC
 * ingress, marks exactly those frames (already rewritten to our MAC) as PACKET_HOST.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>

int vipfarm_host(struct __sk_buff *skb)
{
    void *data = (void *)(long)skb->data;
    void *data_end = (void *)(long)skb->data_end;
    struct ethhdr *eth = data;

    if (skb->pkt_type != PACKET_OTHERHOST || (void *)(eth + 1) > data_end)
        return TC_ACT_OK;
    if (eth->h_dest[0] == VF_IFACE_MAC0 && eth->h_dest[1] == VF_IFACE_MAC1 &&
        eth->h_dest[2] == VF_IFACE_MAC2 && eth->h_dest[3] == VF_IFACE_MAC3 &&
        eth->h_dest[4] == VF_IFACE_MAC4 && eth->h_dest[5] == VF_IFACE_MAC5)
        bpf_skb_change_type(skb, PACKET_HOST);
    return TC_ACT_OK;
}
