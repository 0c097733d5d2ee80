"""The witness of a 2-node farm: an address on the farm's segment (a router, a switch's
management address, a third machine) whose ARP replies count as one vote (vipfarm/agreement.py
quorum). Each node probes it with an ARP request every heartbeat interval over AF_PACKET, on
the farm interface, and hears it while a reply came within the heartbeat timeout.

IPv4 only: the witness answers ARP, which every IPv4 host does without any configuration.
"""
from __future__ import annotations

import ipaddress
import logging
import select
import socket
import threading
import time

from . import neighbour
from .neighbour_responder import _attach

log = logging.getLogger("vipfarm.witness")

ETH_P_ARP = 0x0806
# cBPF: ethertype ARP and opcode reply.
_ARP_REPLY_FILTER = [
    (0x28, 0, 0, 12), (0x15, 0, 3, 0x0806),
    (0x28, 0, 0, 20), (0x15, 0, 1, 2),
    (0x06, 0, 0, 0xFFFF), (0x06, 0, 0, 0),
]


class WitnessProbe(threading.Thread):
    def __init__(self, iface: str, own_mac: bytes, own_ip: str, witness: str, interval_s: float, timeout_s: float,
                 clock=time.monotonic_ns):
        super().__init__(name=f"witness-{witness}", daemon=True)
        self.iface, self.witness = iface, witness
        self.request = neighbour.arp_request(own_mac, own_mac, ipaddress.IPv4Address(own_ip).packed,
                                             ipaddress.IPv4Address(witness).packed)
        self.target = ipaddress.IPv4Address(witness).packed
        self.interval_s, self.timeout_ns = interval_s, int(timeout_s * 1e9)
        self.clock = clock
        self.last_reply_ns: int | None = None
        self._halt = threading.Event()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
        _attach(self.sock, _ARP_REPLY_FILTER)
        self.sock.bind((iface, ETH_P_ARP))

    def heard(self, now_ns: int) -> bool:
        last = self.last_reply_ns
        return last is not None and now_ns - last <= self.timeout_ns

    def run(self) -> None:
        next_probe = 0.0
        was = None
        while not self._halt.is_set():
            now = time.monotonic()
            if now >= next_probe:
                try:
                    self.sock.send(self.request)
                except OSError as e:
                    log.debug("event=witness_probe_failed iface=%s witness=%s error=%s", self.iface, self.witness, e)
                next_probe = now + self.interval_s
            ready, _, _ = select.select([self.sock], [], [], max(0.0, next_probe - time.monotonic()))
            if ready:
                frame = self.sock.recv(2048)
                if neighbour.arp_reply_sender(frame) == self.target:
                    self.last_reply_ns = self.clock()
            heard = self.heard(self.clock())
            if heard != was:
                log.info("event=witness_%s iface=%s witness=%s", "heard" if heard else "lost", self.iface, self.witness)
                was = heard

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=2)
        self.sock.close()
