"""Random Ethernet frames for the BPF tier and the benchmarks: valid, truncated and garbage.

Deterministic for a given random.Random, so a failing frame can be replayed from its seed.
"""
from __future__ import annotations

import ipaddress
import random
import struct

from nodeagent import neighbour

CLIENT_MAC = bytes.fromhex("020000000064")


def eth(dst: bytes, src: bytes, ethertype: int) -> bytes:
    return dst + src + struct.pack("!H", ethertype)


def ipv4(src: bytes, dst: bytes, proto: int, payload: bytes, *, frag: int = 0, ihl: int = 5,
         tot: int | None = None, version: int = 4) -> bytes:
    options = b"\x01" * ((ihl - 5) * 4) if ihl > 5 else b""
    hlen = 20 + len(options)
    total = hlen + len(payload) if tot is None else tot
    hdr = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total & 0xFFFF, 0x1234, frag, 64,
                      proto, 0, src, dst)
    return hdr + options + payload


def ipv6(src: bytes, dst: bytes, nh: int, payload: bytes, *, plen: int | None = None,
         hop: int = 64, version: int = 6) -> bytes:
    length = len(payload) if plen is None else plen
    return struct.pack("!IHBB", version << 28, length & 0xFFFF, nh, hop) + src + dst + payload


def tcp(sport: int, dport: int, extra: int = 0, flags: int = 0x02) -> bytes:
    """A TCP header (a SYN unless `flags` says otherwise) and `extra` zero bytes."""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + bytes(extra)


def udp(sport: int, dport: int, data: bytes = b"x") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


def icmp_echo(ident: int = 1) -> bytes:
    return struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"ping"


def arp_request(sender_mac: bytes, sender_ip: bytes, target_ip: bytes, op: int = 1,
                pad: int = 18) -> bytes:
    return (eth(neighbour.BROADCAST, sender_mac, neighbour.ETH_P_ARP)
            + struct.pack("!HHBBH", 1, neighbour.ETH_P_IP, 6, 4, op)
            + sender_mac + sender_ip + bytes(6) + target_ip + bytes(pad))


def neighbour_solicitation(src: bytes, target: bytes, src_mac: bytes, *, with_slla: bool = True,
                           hop: int = 255, dst: bytes | None = None) -> bytes:
    body = struct.pack("!BBHI", 135, 0, 0, 0) + target
    if with_slla:
        body += struct.pack("!BB", 1, 1) + src_mac
    if dst is None:
        dst = bytes.fromhex("ff0200000000000000000001ff") + target[13:]
    return eth(b"\x33\x33" + dst[12:], src_mac, neighbour.ETH_P_IPV6) + ipv6(src, dst, 58, body, hop=hop)


class FrameGen:
    """Frames aimed at a set of VIPs (v4 and v6) and the rule ports of a plan."""

    def __init__(self, rng: random.Random, vips4: list[bytes], vips6: list[bytes],
                 ports: list[int], dst_mac: bytes, tcp_flags: tuple[int, ...] = ()):
        """tcp_flags: the TCP flag bytes to pick from; empty = every TCP segment is a SYN
        (and the random stream is the one it always was)."""
        self.rng = rng
        self.tcp_flags = tcp_flags
        self.vips4 = vips4
        self.vips6 = vips6
        self.ports = ports
        self.dst_mac = dst_mac

    def client4(self) -> bytes:
        r = self.rng
        if r.random() < 0.7:
            return bytes([198, 51, 100, r.randrange(256)])
        return r.randbytes(4)

    def client6(self) -> bytes:
        r = self.rng
        if r.random() < 0.7:
            return ipaddress.IPv6Address("2001:db8:1::").packed[:12] + r.randbytes(4)
        return r.randbytes(16)

    def dst4(self) -> bytes:
        r = self.rng
        return r.choice(self.vips4) if self.vips4 and r.random() < 0.85 else bytes([203, 0, 113, r.randrange(256)])

    def dst6(self) -> bytes:
        r = self.rng
        if self.vips6 and r.random() < 0.85:
            return r.choice(self.vips6)
        return ipaddress.IPv6Address("2001:db8:ffff::").packed[:14] + r.randbytes(2)

    def port(self) -> int:
        r = self.rng
        return r.choice(self.ports) if self.ports and r.random() < 0.7 else r.randrange(1, 65536)

    def l4(self, proto: int) -> bytes:
        r = self.rng
        if proto == 6:
            flags = r.choice(self.tcp_flags) if self.tcp_flags else 0x02
            return tcp(r.randrange(1, 65536), self.port(), extra=r.choice((0, 0, 12)), flags=flags)
        if proto == 17:
            return udp(r.randrange(1, 65536), self.port(), r.randbytes(r.randrange(0, 40)))
        return icmp_echo(r.randrange(65536))

    def frame(self) -> bytes:
        r = self.rng
        kind = r.choices(
            ["v4", "v6", "v4frag", "v6frag", "v6ext", "arp", "ns", "vlan", "garbage",
             "truncated", "corrupt", "v4opts"],
            weights=[22, 18, 6, 5, 5, 8, 8, 4, 5, 9, 7, 3])[0]
        f = getattr(self, "_" + kind)()
        return f if len(f) >= 14 else f + bytes(14 - len(f))

    def _mac(self) -> bytes:
        return self.dst_mac if self.rng.random() < 0.8 else self.rng.randbytes(6)

    def _v4(self, ihl: int = 5) -> bytes:
        proto = self.rng.choice((6, 6, 17, 17, 1))
        return eth(self._mac(), CLIENT_MAC, 0x0800) + ipv4(self.client4(), self.dst4(), proto,
                                                          self.l4(proto), ihl=ihl)

    def _v4opts(self) -> bytes:
        return self._v4(ihl=self.rng.randrange(6, 16))

    def _v6(self) -> bytes:
        proto = self.rng.choice((6, 6, 17, 17, 58))
        payload = self.l4(proto) if proto != 58 else struct.pack("!BBHHH", 128, 0, 0, 1, 1)
        return eth(self._mac(), CLIENT_MAC, 0x86DD) + ipv6(self.client6(), self.dst6(), proto, payload)

    def _v4frag(self) -> bytes:
        r = self.rng
        frag = r.choice((0x2000, 0x2000 | r.randrange(1, 0x2000), r.randrange(1, 0x2000)))
        proto = r.choice((6, 17))
        return eth(self._mac(), CLIENT_MAC, 0x0800) + ipv4(self.client4(), self.dst4(), proto,
                                                          self.l4(proto), frag=frag)

    def _v6frag(self) -> bytes:
        r = self.rng
        proto = r.choice((6, 17))
        fh = struct.pack("!BBHI", proto, 0, r.randrange(0, 0x10000) & 0xFFF9 | r.choice((0, 1)), r.randrange(2**32))
        return eth(self._mac(), CLIENT_MAC, 0x86DD) + ipv6(self.client6(), self.dst6(), 44, fh + self.l4(proto))

    def _v6ext(self) -> bytes:
        r = self.rng
        proto = r.choice((6, 17))
        chain = b""
        n = r.randrange(1, 6)
        kinds = [r.choice((0, 43, 60)) for _ in range(n)]
        nexts = kinds[1:] + [proto]
        for nh in nexts:
            hlen = r.choice((0, 0, 1, 3, 40))
            chain += struct.pack("!BB", nh, hlen) + bytes(6 + 8 * hlen)
        return eth(self._mac(), CLIENT_MAC, 0x86DD) + ipv6(self.client6(), self.dst6(), kinds[0],
                                                          chain + self.l4(proto))

    def _arp(self) -> bytes:
        r = self.rng
        target = self.dst4()
        sender = self.client4()
        choice = r.random()
        if choice < 0.1:
            sender = target                           # gratuitous
        op = 2 if choice > 0.9 else 1
        return arp_request(r.randbytes(6), sender, target, op=op, pad=r.choice((0, 18)))

    def _ns(self) -> bytes:
        r = self.rng
        target = self.dst6()
        src = bytes(16) if r.random() < 0.15 else self.client6()
        hop = 255 if r.random() < 0.9 else 64
        dst = target if r.random() < 0.2 else None       # unicast NUD probe
        return neighbour_solicitation(src, target, r.randbytes(6), with_slla=r.random() < 0.7,
                                      hop=hop, dst=dst)

    def _vlan(self) -> bytes:
        inner = self._v4() if self.rng.random() < 0.5 else self._v6()
        return inner[:12] + struct.pack("!HH", 0x8100, self.rng.randrange(4096)) + inner[12:]

    def _garbage(self) -> bytes:
        r = self.rng
        et = r.choice((0x0800, 0x86DD, 0x0806, r.randrange(65536)))
        return eth(self._mac(), CLIENT_MAC, et) + r.randbytes(r.randrange(0, 120))

    def _truncated(self) -> bytes:
        f = self.rng.choice((self._v4, self._v6, self._arp, self._ns, self._v6ext))()
        return f[: self.rng.randrange(14, len(f) + 1)]

    def _corrupt(self) -> bytes:
        f = bytearray(self.rng.choice((self._v4, self._v6, self._v4frag, self._v6ext))())
        for _ in range(self.rng.randrange(1, 4)):
            # Corrupt the L3/L4 headers but keep the destination, so the frame still hits a VIP.
            i = self.rng.choice([j for j in range(14, min(len(f), 100)) if not 30 <= j < 34 and not 38 <= j < 54] or [14])
            f[i] = self.rng.randrange(256)
        return bytes(f)
