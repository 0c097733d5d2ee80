"""nodeagent.neighbour: NA replies to NS (normal and DAD), ARP replies written over the
request, and which ARP frames count as requests. Frames are built and checked here byte by
byte, with an independent Internet checksum."""
from __future__ import annotations

import ipaddress
import struct

import pytest

from nodeagent import neighbour
from nodeagent.bpf_consts import NA_FRAME_LEN

OWN_MAC = bytes.fromhex("02aa00000001")
VMAC = bytes.fromhex("02bb00000002")
CLIENT_MAC = bytes.fromhex("0200000000c1")
VIP6 = ipaddress.IPv6Address("2001:db8::10").packed
CLIENT6 = ipaddress.IPv6Address("2001:db8::c1").packed
VIP4 = ipaddress.IPv4Address("203.0.113.10").packed
CLIENT4 = ipaddress.IPv4Address("203.0.113.99").packed


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def icmpv6_verify(src: bytes, dst: bytes, message: bytes) -> int:
    """Checksum over pseudo-header + message including its checksum field: 0 when valid."""
    pseudo = src + dst + len(message).to_bytes(4, "big") + b"\0\0\0" + bytes([58])
    return ~ones_complement_sum(pseudo + message) & 0xFFFF


def ns_frame(src: bytes, target: bytes, eth_src: bytes = CLIENT_MAC) -> bytes:
    """An NS to the solicited-node address of target, with a source link-layer option."""
    dst = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
    body = bytes([135, 0, 0, 0]) + bytes(4) + target
    if src != bytes(16):
        body += bytes([1, 1]) + eth_src        # SLLA is not allowed from ::
    csum = ~ones_complement_sum(src + dst + len(body).to_bytes(4, "big") + b"\0\0\0\x3a" + body) & 0xFFFF
    body = body[:2] + csum.to_bytes(2, "big") + body[4:]
    ip6 = bytes([0x60, 0, 0, 0]) + len(body).to_bytes(2, "big") + bytes([58, 255]) + src + dst
    return b"\x33\x33" + dst[12:] + eth_src + b"\x86\xdd" + ip6 + body


def arp_frame(sender_mac: bytes, sender_ip: bytes, target_ip: bytes, op: int = 1, pad: int = 18) -> bytes:
    return (b"\xff" * 6 + sender_mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, op)
            + sender_mac + sender_ip + bytes(6) + target_ip + bytes([0xEE]) * pad)


# -- checksum helpers -------------------------------------------------------------------------

def test_internet_checksum_matches_the_rfc1071_example():
    # RFC 1071 section 3: the ones' complement sum of these bytes is 0xddf2
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_complement_sum(data) == 0xDDF2
    assert neighbour.checksum(data) == ~0xDDF2 & 0xFFFF


def test_internet_checksum_pads_odd_lengths_with_a_zero_byte():
    assert neighbour.checksum(b"\x12\x34\x56") == neighbour.checksum(b"\x12\x34\x56\x00")


# -- NA replies ---------------------------------------------------------------------------------

def test_ns_frame_builder_produces_a_parseable_solicitation():
    ns = neighbour.parse_neighbour_solicitation(ns_frame(CLIENT6, VIP6))
    assert ns == neighbour.NeighbourSolicitation(CLIENT_MAC, CLIENT6, VIP6)


def test_na_reply_to_a_normal_ns_is_86_bytes_solicited_and_unicast_to_the_asker():
    ns = neighbour.parse_neighbour_solicitation(ns_frame(CLIENT6, VIP6))
    frame = neighbour.na_reply(ns, OWN_MAC, VMAC)
    assert len(frame) == NA_FRAME_LEN == 86
    # Ethernet: to the asker, from this node (never from the virtual MAC)
    assert frame[0:6] == CLIENT_MAC
    assert frame[6:12] == OWN_MAC
    assert frame[12:14] == b"\x86\xdd"
    ip6 = frame[14:54]
    assert ip6[0] >> 4 == 6
    assert int.from_bytes(ip6[4:6], "big") == 32           # payload length
    assert ip6[6] == 58 and ip6[7] == 255                   # ICMPv6, hop limit 255
    assert ip6[8:24] == VIP6 and ip6[24:40] == CLIENT6
    na = frame[54:]
    assert na[0] == 136 and na[1] == 0
    assert na[4] & neighbour.NA_FLAG_SOLICITED
    assert na[4] & neighbour.NA_FLAG_OVERRIDE
    assert not na[4] & 0x80                                 # not a router
    assert na[5:8] == b"\0\0\0"
    assert na[8:24] == VIP6
    assert na[24:26] == b"\x02\x01"                         # target link-layer address option
    assert na[26:32] == VMAC
    assert icmpv6_verify(ip6[8:24], ip6[24:40], na) == 0


def test_na_reply_to_a_dad_probe_goes_to_all_nodes_with_solicited_clear():
    ns = neighbour.parse_neighbour_solicitation(ns_frame(bytes(16), VIP6))
    assert ns is not None and ns.src == bytes(16)
    frame = neighbour.na_reply(ns, OWN_MAC, VMAC)
    assert len(frame) == 86
    assert frame[0:6] == bytes.fromhex("333300000001")
    assert frame[6:12] == OWN_MAC
    ip6, na = frame[14:54], frame[54:]
    assert ip6[24:40] == ipaddress.IPv6Address("ff02::1").packed
    assert ip6[8:24] == VIP6
    assert not na[4] & neighbour.NA_FLAG_SOLICITED
    assert na[4] & neighbour.NA_FLAG_OVERRIDE
    assert na[26:32] == VMAC
    assert icmpv6_verify(ip6[8:24], ip6[24:40], na) == 0


@pytest.mark.parametrize("target", ["2001:db8::10", "2001:db8:ffff::ffff", "fd00::1", "2001:db8::"])
def test_na_checksum_verifies_for_any_target(target):
    t = ipaddress.IPv6Address(target).packed
    for src in (CLIENT6, bytes(16)):
        frame = neighbour.na_reply(neighbour.NeighbourSolicitation(CLIENT_MAC, src, t), OWN_MAC, VMAC)
        assert icmpv6_verify(frame[22:38], frame[38:54], frame[54:]) == 0


def test_unsolicited_na_announces_the_virtual_mac_to_all_nodes():
    frame = neighbour.unsolicited_na(VIP6, OWN_MAC, VMAC)
    assert len(frame) == 86
    assert frame[0:6] == bytes.fromhex("333300000001")
    assert frame[38:54] == ipaddress.IPv6Address("ff02::1").packed
    assert frame[58] == neighbour.NA_FLAG_OVERRIDE
    assert frame[80:86] == VMAC
    assert icmpv6_verify(frame[22:38], frame[38:54], frame[54:]) == 0


def test_parse_neighbour_solicitation_rejects_a_hop_limit_below_255():
    frame = bytearray(ns_frame(CLIENT6, VIP6))
    frame[21] = 64
    assert neighbour.parse_neighbour_solicitation(bytes(frame)) is None


def test_parse_neighbour_solicitation_rejects_a_truncated_payload():
    frame = ns_frame(CLIENT6, VIP6)
    assert neighbour.parse_neighbour_solicitation(frame[:-10]) is None
    assert neighbour.parse_neighbour_solicitation(frame[:60]) is None


# -- ARP ------------------------------------------------------------------------------------------

def test_parse_arp_request_reads_a_who_has_request():
    req = neighbour.parse_arp_request(arp_frame(CLIENT_MAC, CLIENT4, VIP4))
    assert req == neighbour.ArpRequest(CLIENT_MAC, CLIENT4, VIP4)


def test_parse_arp_request_accepts_an_unpadded_42_byte_request():
    assert neighbour.parse_arp_request(arp_frame(CLIENT_MAC, CLIENT4, VIP4, pad=0)) is not None


def test_parse_arp_request_ignores_gratuitous_arp():
    assert neighbour.parse_arp_request(arp_frame(CLIENT_MAC, VIP4, VIP4)) is None
    assert neighbour.parse_arp_request(neighbour.gratuitous_arp(VIP4, OWN_MAC, VMAC)) is None


def test_parse_arp_request_ignores_replies():
    assert neighbour.parse_arp_request(arp_frame(CLIENT_MAC, CLIENT4, VIP4, op=2)) is None


@pytest.mark.parametrize("length", [0, 14, 28, 41])
def test_parse_arp_request_ignores_truncated_frames(length):
    assert neighbour.parse_arp_request(arp_frame(CLIENT_MAC, CLIENT4, VIP4, pad=0)[:length]) is None


def test_parse_arp_request_ignores_other_ethertypes_and_hardware():
    frame = bytearray(arp_frame(CLIENT_MAC, CLIENT4, VIP4))
    frame[12:14] = b"\x08\x00"
    assert neighbour.parse_arp_request(bytes(frame)) is None
    frame = bytearray(arp_frame(CLIENT_MAC, CLIENT4, VIP4))
    frame[14:16] = b"\x00\x06"                    # IEEE 802 hardware type
    assert neighbour.parse_arp_request(bytes(frame)) is None


@pytest.mark.parametrize("pad", [0, 18])
def test_arp_reply_in_place_swaps_fields_and_keeps_length_and_padding(pad):
    request = arp_frame(CLIENT_MAC, CLIENT4, VIP4, pad=pad)
    reply = neighbour.arp_reply_in_place(request, OWN_MAC, VMAC)
    assert len(reply) == len(request)
    assert reply[0:6] == CLIENT_MAC                # back to the asker
    assert reply[6:12] == OWN_MAC                  # from this node, not the virtual MAC
    assert reply[12:14] == b"\x08\x06"
    assert reply[14:20] == request[14:20]          # htype, ptype, hlen, plen unchanged
    assert reply[20:22] == b"\x00\x02"             # op = reply
    assert reply[22:28] == VMAC                    # sender: the VIP is at the virtual MAC
    assert reply[28:32] == VIP4
    assert reply[32:38] == CLIENT_MAC              # target: the asker
    assert reply[38:42] == CLIENT4
    assert reply[42:] == request[42:]              # padding untouched


def test_arp_reply_in_place_refuses_frames_that_are_not_requests():
    with pytest.raises(ValueError, match="not an ARP request"):
        neighbour.arp_reply_in_place(arp_frame(CLIENT_MAC, CLIENT4, VIP4, op=2), OWN_MAC, VMAC)


def test_fresh_arp_reply_equals_the_in_place_reply_of_an_unpadded_request():
    request = arp_frame(CLIENT_MAC, CLIENT4, VIP4, pad=0)
    req = neighbour.parse_arp_request(request)
    assert neighbour.arp_reply(req, CLIENT_MAC, OWN_MAC, VMAC) == \
        neighbour.arp_reply_in_place(request, OWN_MAC, VMAC)


def test_gratuitous_arp_is_a_broadcast_request_for_the_vip_at_the_virtual_mac():
    frame = neighbour.gratuitous_arp(VIP4, OWN_MAC, VMAC)
    assert len(frame) == 42
    assert frame[0:6] == b"\xff" * 6 and frame[6:12] == OWN_MAC
    assert frame[20:22] == b"\x00\x01"
    assert frame[22:28] == VMAC
    assert frame[28:32] == frame[38:42] == VIP4


def test_the_probe_builders_match_the_independent_test_builders_byte_for_byte():
    src = bytes.fromhex("20010db8000100000000000000000100")
    target = bytes.fromhex("20010db8000000000000000000000010")
    assert neighbour.neighbour_solicitation(CLIENT_MAC, src, target) == ns_frame(src, target, CLIENT_MAC)
    sender, vip = bytes([198, 51, 100, 100]), bytes([203, 0, 113, 10])
    assert neighbour.arp_request(CLIENT_MAC, CLIENT_MAC, sender, vip) == arp_frame(CLIENT_MAC, sender, vip, pad=0)
    assert neighbour.parse_neighbour_solicitation(neighbour.neighbour_solicitation(CLIENT_MAC, src, target)).target == target
