"""ARP and IPv6 neighbour discovery frames for VIPs: pure byte builders and parsers.

Used four ways: by the XDP reference model (the bytes XDP_TX must produce), by the
user-space responder (neighbour_responder.py) that answers when the program passes requests up, by the agent to
send gratuitous ARP / unsolicited NA when it starts serving, and by the lab's probe that
asks for a VIP the way a client does.
The Ethernet source is always the node's own MAC; only the ARP/NA payload carries the
virtual MAC, so switches never learn the virtual MAC and keep flooding it.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
BROADCAST = b"\xff" * 6
ALL_NODES_V6 = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")
NA_FLAG_SOLICITED = 0x40
NA_FLAG_OVERRIDE = 0x20


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def icmpv6_checksum(src: bytes, dst: bytes, message: bytes) -> int:
    pseudo = src + dst + struct.pack("!I3xB", len(message), 58)
    return checksum(pseudo + message)


@dataclass(frozen=True)
class ArpRequest:
    sender_mac: bytes
    sender_ip: bytes
    target_ip: bytes


@dataclass(frozen=True)
class NeighbourSolicitation:
    eth_src: bytes
    src: bytes           # IPv6 source (:: for duplicate address detection)
    target: bytes


def parse_arp_request(frame: bytes) -> ArpRequest | None:
    """An Ethernet/IPv4 ARP request that asks (not a gratuitous announcement), else None."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    hrd, pro, hln, pln, op = struct.unpack_from("!HHBBH", frame, 14)
    if (hrd, pro, hln, pln, op) != (1, ETH_P_IP, 6, 4, 1):
        return None
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    if spa == tpa:
        return None
    return ArpRequest(sha, spa, tpa)


def arp_reply_sender(frame: bytes) -> bytes | None:
    """The sender IPv4 address of an Ethernet/IPv4 ARP reply, else None."""
    if len(frame) < 42 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    if struct.unpack_from("!HHBBH", frame, 14) != (1, ETH_P_IP, 6, 4, 2):
        return None
    return frame[28:32]


def parse_neighbour_solicitation(frame: bytes) -> NeighbourSolicitation | None:
    """An ICMPv6 NS directly after the IPv6 header, with hop limit 255 and code 0."""
    if len(frame) < 14 + 40 + 24 or struct.unpack_from("!H", frame, 12)[0] != ETH_P_IPV6:
        return None
    ip6 = frame[14:54]
    if ip6[0] >> 4 != 6 or ip6[6] != 58 or ip6[7] != 255:
        return None
    plen = struct.unpack_from("!H", ip6, 4)[0]
    if plen < 24 or 54 + plen > len(frame):
        return None
    icmp = frame[54:]
    if icmp[0] != 135 or icmp[1] != 0:
        return None
    return NeighbourSolicitation(frame[6:12], ip6[8:24], icmp[8:24])


def arp_reply_in_place(frame: bytes, own_mac: bytes, vmac: bytes) -> bytes:
    """The reply XDP writes over a request: same length, padding kept."""
    req = parse_arp_request(frame)
    if req is None:
        raise ValueError("not an ARP request")
    out = bytearray(frame)
    out[0:6] = frame[6:12]
    out[6:12] = own_mac
    struct.pack_into("!H", out, 20, 2)
    out[22:28] = vmac
    out[28:32] = req.target_ip
    out[32:38] = req.sender_mac
    out[38:42] = req.sender_ip
    return bytes(out)


def arp_reply(req: ArpRequest, requester_eth: bytes, own_mac: bytes, vmac: bytes) -> bytes:
    """A fresh 42-byte ARP reply (the responder's; the kernel pads it on the wire)."""
    return (requester_eth + own_mac + struct.pack("!HHHBBH", ETH_P_ARP, 1, ETH_P_IP, 6, 4, 2)
            + vmac + req.target_ip + req.sender_mac + req.sender_ip)


def arp_request(eth_src: bytes, sender_mac: bytes, sender_ip: bytes, target_ip: bytes) -> bytes:
    """A broadcast ARP request (42 bytes; the kernel pads it on the wire)."""
    return (BROADCAST + eth_src + struct.pack("!HHHBBH", ETH_P_ARP, 1, ETH_P_IP, 6, 4, 1)
            + sender_mac + sender_ip + b"\0" * 6 + target_ip)


def gratuitous_arp(vip: bytes, own_mac: bytes, vmac: bytes) -> bytes:
    """Broadcast request with sender = target = VIP at the virtual MAC: updates ARP caches."""
    return arp_request(own_mac, vmac, vip, vip)


def solicited_node(target: bytes) -> bytes:
    """The solicited-node multicast address of an IPv6 address (RFC 4291)."""
    return bytes.fromhex("ff0200000000000000000001ff") + target[13:]


def multicast_mac(group: bytes) -> bytes:
    """The Ethernet address of an IPv6 multicast group (33:33 + its last 32 bits)."""
    return b"\x33\x33" + group[12:]


def neighbour_solicitation(src_mac: bytes, src: bytes, target: bytes) -> bytes:
    """An NS for target from src, to target's solicited-node group, with the source link-layer option."""
    dst = solicited_node(target)
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target + struct.pack("!BB", 1, 1) + src_mac
    csum = icmpv6_checksum(src, dst, body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    return multicast_mac(dst) + src_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def neighbour_advertisement(target: bytes, dst: bytes, dst_mac: bytes, own_mac: bytes,
                            vmac: bytes, flags: int) -> bytes:
    body = struct.pack("!BBHB3x", 136, 0, 0, flags) + target + struct.pack("!BB", 2, 1) + vmac
    csum = icmpv6_checksum(target, dst, body)
    body = body[:2] + struct.pack("!H", csum) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + target + dst
    return dst_mac + own_mac + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def na_reply(ns: NeighbourSolicitation, own_mac: bytes, vmac: bytes) -> bytes:
    """The NA answering `ns` (86 bytes). From :: (DAD) it goes to all-nodes with S clear."""
    if ns.src == bytes(16):
        return neighbour_advertisement(ns.target, ALL_NODES_V6, ALL_NODES_MAC, own_mac, vmac,
                                       NA_FLAG_OVERRIDE)
    return neighbour_advertisement(ns.target, ns.src, ns.eth_src, own_mac, vmac,
                                   NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)


def unsolicited_na(target: bytes, own_mac: bytes, vmac: bytes) -> bytes:
    return neighbour_advertisement(target, ALL_NODES_V6, ALL_NODES_MAC, own_mac, vmac,
                                   NA_FLAG_OVERRIDE)
