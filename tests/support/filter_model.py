"""The reference model of bpf/vipfarm_xdp.c: what the filter does to one frame, in pure Python.

tests/bpf runs the real program with BPF_PROG_TEST_RUN on thousands of frames and checks the
verdict, the counter, the bucket and the output bytes against decide(). The model follows the
C step by step; when one changes, the other must, and the test says so.

The lease: `leases` maps a farm slot to (syn_deadline, deadline) (ns, CLOCK_MONOTONIC; 0 = that
stage not in use, absent = no lease). decide() takes "now" in the same clock twice, as the
kernel reads it: now_ns, the exact clock (bpf_ktime_get_ns, time.monotonic_ns() unless given),
which SYNs are judged by, and coarse_ns, the coarse clock (bpf_ktime_get_coarse_ns,
CLOCK_MONOTONIC_COARSE unless given; now_ns when only that is given), which every other packet
to an owned bucket is judged by.

Handover: a farm's FarmEntry.moving buckets are decided by state first. `sockets` stands for
this node's kernel socket table (bpf_skc_lookup_tcp): called with a SocketQuery (the frame's
4-tuple, the VIP as the local end), it returns the BPF_TCP_* state of the socket the kernel
would find, or None. The default knows no 4-tuple. A test that runs the program in a namespace
with real sockets passes the predicate of the sockets it made.

UDP handover: `udp_config` maps a farm slot to (idle_ns, hold_until_ns) (absent = (0, 0), off)
and `udp_flows` maps (slot, UdpFlow) to the UdpRecord the kernel's vf_udp_flows holds; the
tests fill both through the same calls as FilterTables (write_udp_config, put_udp_records).
A UDP packet in a moving bucket of a slot with idle_ns set is decided by its record first, with
now_ns (the filter reads bpf_ktime_get_ns). Like the filter, decide() moves a fresh record's
last_ns forward to now_ns: the model has state, and a test that compares it with the kernel
syncs the kernel's refreshed value back (the two clocks are read a few microseconds apart).
"""
from __future__ import annotations

import ipaddress
import struct
import time
from dataclasses import dataclass, replace
from typing import Callable, Iterable

from vipfarm.hashing import client_hash
from vipfarm.udp_flows import UdpFlow, UdpRecord, flow_order

from nodeagent import neighbour
from nodeagent.bpf_consts import (AFF_CLIENTIP, AFF_CLIENTIPPORT, CNT_ACCEPTED, CNT_DROPPED,
                         CNT_HANDOVER_KEPT, CNT_HANDOVER_UNKNOWN_DROPPED,
                         CNT_LEASE_EXPIRED, CNT_LEASE_LAPSED, CNT_MALFORMED, CNT_NEIGH_PUNTED, CNT_NEIGH_REPLIED, CNT_PASSED,
                         CNT_UDP_ELSEWHERE, CNT_UDP_HELD, CNT_UDP_KEPT,
                         FAMILY_V4, FAMILY_V6, GLOBAL_SLOT, MAX_EXT_HDRS, MAX_EXT_OFFSET,
                         TCP_ACK, TCP_SYN, XDP_DROP, XDP_PASS, XDP_TX)
from nodeagent.filter_plan import FilterPlan

IPPROTO_TCP, IPPROTO_UDP = 6, 17
# bpf_ktime_get_coarse_ns()'s clock (linux/time.h; Python's time module does not name it).
CLOCK_MONOTONIC_COARSE = getattr(time, "CLOCK_MONOTONIC_COARSE", 6)
IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_FRAGMENT, IPPROTO_DSTOPTS = 0, 43, 44, 60
_EXT = (IPPROTO_HOPOPTS, IPPROTO_ROUTING, IPPROTO_DSTOPTS)
# Socket states of include/uapi/linux/bpf.h (BPF_TCP_*), as bpf_sock.state reports them.
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_TIME_WAIT = 1, 2, 3, 4, 5, 6
TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_LISTEN, TCP_CLOSING, TCP_NEW_SYN_RECV = 7, 8, 9, 10, 11, 12


@dataclass(frozen=True)
class SocketQuery:
    """The 4-tuple the filter looks up, as the packet carries it: the client is the remote end."""
    family: int                 # FAMILY_V4 / FAMILY_V6
    client: bytes
    sport: int
    local: bytes                # the VIP
    dport: int


def no_sockets(query: SocketQuery) -> int | None:
    return None


@dataclass(frozen=True)
class Outcome:
    verdict: int                # XDP_PASS / XDP_DROP / XDP_TX
    slot: int                   # counter slot (farm slot or GLOBAL_SLOT)
    counter: int                # counter index incremented
    frame: bytes                # frame after the program
    bucket: int | None = None   # for hashed VIP packets


@dataclass(frozen=True)
class _Flow:
    client: bytes
    fragment: bool
    proto: int | None
    sport: int | None
    dport: int | None
    tcp_flags: int = 0
    local: bytes = b""

    @property
    def opens_flow(self) -> bool:
        """SYN without ACK: a segment that opens a TCP flow."""
        return self.proto == IPPROTO_TCP and self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN

    def udp_flow(self) -> UdpFlow:
        """The flow as vf_udp_flows keys it (the client is the remote end, the VIP the local)."""
        return UdpFlow(ipaddress.ip_address(self.client), self.sport, ipaddress.ip_address(self.local), self.dport)


def _s64(value: int) -> int:
    """`value` as the C cast (__s64) of a __u64 sees it."""
    value &= (1 << 64) - 1
    return value - (1 << 64) if value >> 63 else value


class FilterModel:
    def __init__(self, plan: FilterPlan, own_mac: bytes, answer_neigh: bool = True,
                 leases: dict[int, tuple[int, int]] | None = None,
                 sockets: Callable[[SocketQuery], int | None] = no_sockets,
                 udp_config: dict[int, tuple[int, int]] | None = None):
        self.vips = plan.vip_by_key()
        self.farms = plan.farm_by_slot()
        self.own_mac = own_mac
        self.answer_neigh = answer_neigh
        self.leases = dict(leases or {})     # farm slot -> (syn_deadline, deadline) ns; 0 = stage off
        self.sockets = sockets
        self.udp_config = dict(udp_config or {})     # farm slot -> (idle_ns, hold_until_ns); 0 idle = off
        self.udp_flows: dict[tuple[int, UdpFlow], UdpRecord] = {}

    # -- the UDP state, set as FilterTables sets the kernel's ------------------------------
    def write_udp_config(self, slot: int, idle_ns: int, hold_until_ns: int) -> None:
        self.udp_config[slot] = (idle_ns, hold_until_ns)

    def put_udp_records(self, slot: int, records: Iterable[UdpRecord]) -> None:
        for r in records:
            self.udp_flows[(slot, r.flow)] = r

    def udp_records(self, slot: int) -> list[UdpRecord]:
        return sorted((r for (s, _), r in self.udp_flows.items() if s == slot), key=lambda r: flow_order(r.flow))

    def udp_handover(self, slot: int, flow: "_Flow", now_ns: int) -> int | None:
        """The counter a UDP packet in a moving bucket is decided under by the UDP flow table
        (CNT_UDP_KEPT is taken, the others dropped), or None: on to the owned bit and the lease.
        Refreshes a fresh record's last_ns, as the filter does."""
        idle_ns, hold_until = self.udp_config.get(slot, (0, 0))
        if not idle_ns:
            return None
        key = (slot, flow.udp_flow())
        record = self.udp_flows.get(key)
        if record is not None and _s64(now_ns - record.last_ns) <= _s64(idle_ns):
            if now_ns > record.last_ns:
                self.udp_flows[key] = replace(record, last_ns=now_ns)
            return CNT_UDP_KEPT if record.mine else CNT_UDP_ELSEWHERE
        if now_ns < hold_until:
            return CNT_UDP_HELD
        return None

    def lease_drop(self, slot: int, flow: "_Flow", now_ns: int, coarse_ns: int) -> int | None:
        """The counter an owned packet is dropped under by the lease, or None (taken)."""
        syn_deadline, deadline = self.leases.get(slot, (0, 0))
        if flow.opens_flow:
            if syn_deadline and now_ns > syn_deadline:
                return CNT_LEASE_EXPIRED
            if deadline and now_ns > deadline:
                return CNT_LEASE_LAPSED
            return None
        if deadline and coarse_ns > deadline:
            return CNT_LEASE_LAPSED
        return None

    # -- steps, in the order of the C program ------------------------------------------
    def decide(self, frame: bytes, now_ns: int | None = None, coarse_ns: int | None = None) -> Outcome:
        if now_ns is None:
            now_ns = time.monotonic_ns()
            if coarse_ns is None:
                coarse_ns = time.clock_gettime_ns(CLOCK_MONOTONIC_COARSE)
        now = (now_ns, now_ns if coarse_ns is None else coarse_ns)
        if len(frame) < 14:
            return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_MALFORMED, frame)
        ethertype = struct.unpack_from("!H", frame, 12)[0]
        if ethertype == neighbour.ETH_P_ARP:
            return self._arp(frame)
        if ethertype == neighbour.ETH_P_IP:
            return self._ipv4(frame, now)
        if ethertype == neighbour.ETH_P_IPV6:
            return self._ipv6(frame, now)
        return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_PASSED, frame)

    def _neigh(self, slot: int, reply: bytes, frame: bytes) -> Outcome:
        if self.answer_neigh:
            return Outcome(XDP_TX, slot, CNT_NEIGH_REPLIED, reply)
        return Outcome(XDP_PASS, slot, CNT_NEIGH_PUNTED, frame)

    def _arp(self, frame: bytes) -> Outcome:
        req = neighbour.parse_arp_request(frame)
        vip = self.vips.get((FAMILY_V4, req.target_ip)) if req else None
        if vip is None or vip.slot not in self.farms:
            return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_PASSED, frame)
        farm = self.farms[vip.slot]
        reply = neighbour.arp_reply_in_place(frame, self.own_mac, farm.vmac) if self.answer_neigh else b""
        return self._neigh(vip.slot, reply, frame)

    def _ipv4(self, frame: bytes, now: tuple[int, int]) -> Outcome:
        if len(frame) < 34:
            return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_MALFORMED, frame)
        ip = frame[14:]
        vip = self.vips.get((FAMILY_V4, ip[16:20]))
        if vip is None:
            return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_PASSED, frame)
        hlen = (ip[0] & 0x0F) * 4
        tot = struct.unpack_from("!H", ip, 2)[0]
        if ip[0] >> 4 != 4 or hlen < 20 or tot < hlen or tot > len(ip):
            return Outcome(XDP_DROP, vip.slot, CNT_MALFORMED, frame)
        frag = struct.unpack_from("!H", ip, 6)[0]
        proto = ip[9]
        flow = _Flow(ip[12:16], bool(frag & 0x3FFF), None, None, None, local=ip[16:20])
        if not flow.fragment and proto in (IPPROTO_TCP, IPPROTO_UDP):
            ports = self._ports(ip, hlen, tot, proto)
            if ports is None:
                return Outcome(XDP_DROP, vip.slot, CNT_MALFORMED, frame)
            flow = _Flow(flow.client, False, proto, *ports, local=flow.local)
        return self._decide(frame, vip, flow, now)

    def _ipv6(self, frame: bytes, now: tuple[int, int]) -> Outcome:
        if len(frame) < 54:
            return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_MALFORMED, frame)
        ns = neighbour.parse_neighbour_solicitation(frame)
        if ns is not None:
            nvip = self.vips.get((FAMILY_V6, ns.target))
            if nvip is not None and nvip.slot in self.farms:
                farm = self.farms[nvip.slot]
                reply = neighbour.na_reply(ns, self.own_mac, farm.vmac) if self.answer_neigh else b""
                return self._neigh(nvip.slot, reply, frame)
        ip = frame[14:]
        vip = self.vips.get((FAMILY_V6, ip[24:40]))
        if vip is None:
            return Outcome(XDP_PASS, GLOBAL_SLOT, CNT_PASSED, frame)
        plen = struct.unpack_from("!H", ip, 4)[0]
        if ip[0] >> 4 != 6 or 40 + plen > len(ip):
            return Outcome(XDP_DROP, vip.slot, CNT_MALFORMED, frame)
        end = 40 + plen
        nh, off = ip[6], 0
        for _ in range(MAX_EXT_HDRS):
            if nh not in _EXT:
                break
            at = 40 + off
            if at + 2 > end:
                return Outcome(XDP_DROP, vip.slot, CNT_MALFORMED, frame)
            nh = ip[at]
            off += (ip[at + 1] + 1) * 8
            if off > MAX_EXT_OFFSET:
                break
        flow = _Flow(ip[8:24], nh == IPPROTO_FRAGMENT, None, None, None, local=ip[24:40])
        if not flow.fragment and off <= MAX_EXT_OFFSET and nh in (IPPROTO_TCP, IPPROTO_UDP):
            ports = self._ports(ip, 40 + off, end, nh)
            if ports is None:
                return Outcome(XDP_DROP, vip.slot, CNT_MALFORMED, frame)
            flow = _Flow(flow.client, False, nh, *ports, local=flow.local)
        return self._decide(frame, vip, flow, now)

    @staticmethod
    def _ports(ip: bytes, l4: int, end: int, proto: int) -> tuple[int, int, int] | None:
        """(source port, destination port, TCP flags or 0), or None when the header is cut."""
        need = 20 if proto == IPPROTO_TCP else 8
        if l4 + need > end:
            return None
        flags = ip[l4 + 13] if proto == IPPROTO_TCP else 0
        return (*struct.unpack_from("!HH", ip, l4), flags)

    def affinity(self, vip, flow: _Flow) -> int:
        if flow.fragment or flow.proto is None:
            return AFF_CLIENTIP
        for rule in vip.rules:
            if rule.proto == flow.proto and rule.port_lo <= flow.dport <= rule.port_hi:
                return rule.affinity
        return AFF_CLIENTIP

    def _decide(self, frame: bytes, vip, flow: _Flow, now: tuple[int, int]) -> Outcome:
        farm = self.farms.get(vip.slot)
        if farm is None:
            return Outcome(XDP_DROP, vip.slot, CNT_DROPPED, frame)
        port = flow.sport if self.affinity(vip, flow) == AFF_CLIENTIPPORT else None
        bucket = client_hash(flow.client, port, farm.seed) & (farm.buckets - 1)
        if bucket in farm.moving and flow.proto == IPPROTO_TCP:
            family = FAMILY_V4 if len(flow.client) == 4 else FAMILY_V6
            state = self.sockets(SocketQuery(family, flow.client, flow.sport, flow.local, flow.dport))
            # State wins: any socket but a listener; a SYN meeting only TIME_WAIT goes to the owner.
            if state is not None and state != TCP_LISTEN and not (state == TCP_TIME_WAIT and flow.opens_flow):
                return Outcome(XDP_PASS, vip.slot, CNT_HANDOVER_KEPT, self.own_mac + frame[6:], bucket)
            if not flow.opens_flow:
                return Outcome(XDP_DROP, vip.slot, CNT_HANDOVER_UNKNOWN_DROPPED, frame, bucket)
        elif bucket in farm.moving and flow.proto == IPPROTO_UDP:
            counter = self.udp_handover(vip.slot, flow, now[0])
            if counter == CNT_UDP_KEPT:
                return Outcome(XDP_PASS, vip.slot, counter, self.own_mac + frame[6:], bucket)
            if counter is not None:
                return Outcome(XDP_DROP, vip.slot, counter, frame, bucket)
        if bucket in farm.owned:
            reason = self.lease_drop(vip.slot, flow, *now)
            if reason is not None:
                return Outcome(XDP_DROP, vip.slot, reason, frame, bucket)
            return Outcome(XDP_PASS, vip.slot, CNT_ACCEPTED, self.own_mac + frame[6:], bucket)
        return Outcome(XDP_DROP, vip.slot, CNT_DROPPED, frame, bucket)
