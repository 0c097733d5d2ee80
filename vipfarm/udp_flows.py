"""UDP flows across a planned move: which flows a bucket's old owner keeps, and how the list
of them travels to the new owner.

TCP handover needs no list: each node's own socket table says which flows are its own
(vipfarm/handover.py). UDP has no such state; most UDP servers read every client on one
unconnected socket. So at the flip that gives buckets away, the old owner reads the kernel's
connection tracking table for the UDP flows to the farm's VIPs in those buckets that were
active within `udpIdleSeconds`, writes them into the filter's UDP flow table as its own
(`mine`), and hands the same list to its peers, which write them as someone else's. While a
bucket is moving, every node that has it moving decides a UDP packet by that table first: a
fresh entry goes to the node whose entry says `mine`, and every node refreshes the entry's
clock on the same packets (every node sees every packet), so the entries age out together.
A UDP packet of no fresh entry goes to the bucket's owner, except on a new owner still
waiting for its peers' lists (its hold): then nobody takes it, and the client's next packet
finds the list in place. Those rules live in bpf/vipfarm_xdp.c and its Python reference model.

This module is the pure part: the flow and record types, the bucket of a UDP flow, the
records' freshness, and the text encoding of a list on the heartbeat wire.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Iterable

from .hashing import bucket_of
from .spec import Farm

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class UdpFlow:
    """A UDP flow as the filter keys it: the client's address and port, the VIP and its port."""
    client: IPAddress
    client_port: int
    vip: IPAddress
    vip_port: int

    def __post_init__(self) -> None:
        if self.client.version != self.vip.version:
            raise ValueError(f"UDP flow {self}: client {self.client} and VIP {self.vip} are of different families")
        for name in ("client_port", "vip_port"):
            port = getattr(self, name)
            if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 0xFFFF:
                raise ValueError(f"UDP flow: {name} {port!r} is not a port number 0..65535")


def flow_order(flow: UdpFlow) -> tuple:
    """A sort key for flows of both families (UdpFlow's own order compares the addresses,
    which raises TypeError between an IPv4 and an IPv6 flow): IPv4 first, then the flow."""
    return (flow.client.version, flow)


@dataclass(frozen=True)
class UdpRecord:
    """One entry of the filter's UDP flow table: the flow, the CLOCK_MONOTONIC time of its
    last packet, whether this node serves it, and its bucket."""
    flow: UdpFlow
    last_ns: int
    mine: bool
    bucket: int


def rule_affinity(farm: Farm, protocol: str, vip_port: int) -> str:
    """The affinity of `protocol` ("TCP" | "UDP") traffic to `vip_port`: the first rule of that
    protocol that covers the port, else ClientIP (the filter's rule for traffic no rule matches)."""
    for rule in farm.rules:
        if rule.protocol == protocol and rule.ports.contains(vip_port):
            return rule.affinity
    return "ClientIP"


def udp_bucket(farm: Farm, flow: UdpFlow) -> int:
    port = flow.client_port if rule_affinity(farm, "UDP", flow.vip_port) == "ClientIPPort" else None
    return bucket_of(flow.client.packed, port, farm.seed, farm.buckets)


def udp_handover_on(farm: Farm) -> bool:
    """UDP flows are handed over when handover is on and the farm names UDP in a rule (its
    UDP service): the lists are read from connection tracking, which only then is needed."""
    return (farm.handover.drain_timeout_seconds > 0 and farm.handover.udp_idle_seconds > 0
            and any(r.protocol == "UDP" for r in farm.rules))


def idle_ns(farm: Farm) -> int:
    return farm.handover.udp_idle_seconds * 1_000_000_000 if udp_handover_on(farm) else 0


def fresh(record: UdpRecord, now_ns: int, idle: int) -> bool:
    """Still the flow of the node that served it: a packet within `idle` ns (the filter's
    rule: now - last <= idle)."""
    return now_ns - record.last_ns <= idle


def flows_per_bucket(records: Iterable[UdpRecord], now_ns: int, idle: int, mine: bool = True) -> dict[int, int]:
    """{bucket: fresh records} of this node's own flows (mine=True) or the peers' (False)."""
    out: dict[int, int] = {}
    for r in records:
        if r.mine == mine and fresh(r, now_ns, idle):
            out[r.bucket] = out.get(r.bucket, 0) + 1
    return out


# -- the list on the wire: ASCII lines "client client_port vip vip_port age_ms" -----------------

def encode_list(records: Iterable[UdpRecord], now_ns: int) -> bytes:
    """The fresh list as text; each record's age (ms since its last packet) instead of its
    clock, which means nothing on another machine."""
    lines = [f"{r.flow.client} {r.flow.client_port} {r.flow.vip} {r.flow.vip_port} {max(0, now_ns - r.last_ns) // 1_000_000}"
             for r in sorted(records, key=lambda r: flow_order(r.flow))]
    return "".join(line + "\n" for line in lines).encode("ascii")


def decode_list(data: bytes) -> list[tuple[UdpFlow, int]]:
    """[(flow, age_ms)] from encode_list's text; ValueError (naming the line) on anything else."""
    out = []
    for n, line in enumerate(data.decode("ascii").splitlines(), 1):
        parts = line.split(" ")
        if len(parts) != 5:
            raise ValueError(f"UDP flow list line {n}: {line!r} is not 'client port vip port age_ms'")
        try:
            flow = UdpFlow(ipaddress.ip_address(parts[0]), int(parts[1]), ipaddress.ip_address(parts[2]), int(parts[3]))
            age = int(parts[4])
        except ValueError as e:
            raise ValueError(f"UDP flow list line {n}: {line!r}: {e}") from None
        if age < 0:
            raise ValueError(f"UDP flow list line {n}: age {age} ms is negative")
        out.append((flow, age))
    return out


def split_chunks(data: bytes, size: int) -> list[bytes]:
    """`data` in pieces of at most `size` bytes, cut only after a newline (a piece is whole
    lines); at least one piece, empty for an empty list."""
    pieces, start = [], 0
    while start < len(data):
        end = min(len(data), start + size)
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            if cut < start:
                raise ValueError(f"UDP flow list: a line longer than {size} bytes")
            end = cut + 1
        pieces.append(data[start:end])
        start = end
    return pieces or [b""]
