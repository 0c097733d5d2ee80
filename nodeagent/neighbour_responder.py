"""User-space ARP/ND responder over AF_PACKET, for native XDP mode.

In native mode the filter passes ARP requests and neighbour solicitations for a VIP up
(counted as neigh_punted) instead of answering with XDP_TX, because XDP_TX frames from a
native-mode veth behind a bridge never arrive. This thread answers them with the same bytes
(nodeagent/neighbour.py) the XDP path would have sent. Kernel-side classic BPF filters keep
everything else off the sockets.
"""
from __future__ import annotations

import logging
import select
import socket
import struct
import threading
from typing import Callable

from . import neighbour

log = logging.getLogger("vipfarm.neighbour_responder")

ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26
PACKET_OUTGOING = 4

# cBPF: ethertype ARP and opcode request.
_ARP_FILTER = [
    (0x28, 0, 0, 12), (0x15, 0, 3, 0x0806),
    (0x28, 0, 0, 20), (0x15, 0, 1, 1),
    (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0),
]
# cBPF: ethertype IPv6, next header ICMPv6, type 135 (neighbour solicitation).
_NS_FILTER = [
    (0x28, 0, 0, 12), (0x15, 0, 5, 0x86DD),
    (0x30, 0, 0, 20), (0x15, 0, 3, 58),
    (0x30, 0, 0, 54), (0x15, 0, 1, 135),
    (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0),
]

VmacLookup = Callable[[int, bytes], "bytes | None"]


def _attach(sock: socket.socket, prog: list[tuple[int, int, int, int]]) -> None:
    import ctypes
    raw = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw)
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))   # the kernel copies it
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


class NeighbourResponder(threading.Thread):
    def __init__(self, iface: str, own_mac: bytes, lookup: VmacLookup):
        super().__init__(name=f"neighbour-responder-{iface}", daemon=True)
        self.iface = iface
        self.own_mac = own_mac
        self.lookup = lookup
        self._halt = threading.Event()
        self._socks = []
        for prog in (_ARP_FILTER, _NS_FILTER):
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            _attach(s, prog)
            s.bind((iface, ETH_P_ALL))
            s.setblocking(False)
            self._socks.append(s)

    def answer(self, frame: bytes) -> bytes | None:
        """The reply to one request frame, or None when it is not for one of our VIPs."""
        req = neighbour.parse_arp_request(frame)
        if req is not None:
            vmac = self.lookup(4, req.target_ip)
            return neighbour.arp_reply(req, frame[6:12], self.own_mac, vmac) if vmac else None
        ns = neighbour.parse_neighbour_solicitation(frame)
        if ns is not None:
            vmac = self.lookup(6, ns.target)
            return neighbour.na_reply(ns, self.own_mac, vmac) if vmac else None
        return None

    def run(self) -> None:
        while not self._halt.is_set():
            ready, _, _ = select.select(self._socks, [], [], 0.5)
            for s in ready:
                try:
                    frame, addr = s.recvfrom(2048)
                except BlockingIOError:
                    continue
                if addr[2] == PACKET_OUTGOING:
                    continue
                reply = self.answer(frame)
                if reply is not None:
                    try:
                        s.send(reply)
                    except OSError as e:
                        log.warning("event=neigh_reply_failed iface=%s error=%s", self.iface, e)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)
        for s in self._socks:
            s.close()
