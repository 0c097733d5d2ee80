"""The flow census: how many TCP flows this node still holds in each bucket of a farm.

A handover (spec.handover, issue 9) lets the old owner of a moved bucket keep answering the
flows it already has; it ends when the old owner has none left in the buckets it gave up, or
at drainTimeoutSeconds. The kernel's socket table is the flow table (DESIGN.md "Handover"),
so the census reads it with sock_diag (netlink, NETLINK_SOCK_DIAG) in the calling thread's
network namespace and counts every TCP socket whose local address is one of the farm's VIPs
and that is past LISTEN: SYN_RECV (a handshake in flight, the kernel's request sockets),
ESTABLISHED and the closing states while data or a FIN may still be in flight (FIN_WAIT1/2,
CLOSE_WAIT, LAST_ACK, CLOSING). Not TIME_WAIT: its connection is over on both ends (the
peer sent its FIN and had it ACKed), and the only segment still to come, a retransmitted FIN
after a lost last ACK, is harmless wherever it lands. Counting it kept every drain 60 s (the
TIME_WAIT lifetime) past its last connection, with the owners' buckets on the filter's slow
path that long, and the cut counts inflated by short connections' TIME_WAITs.

A socket's bucket is the bucket the filter puts the packets of its peer into: the client is
the remote end, and the affinity is that of the farm's first TCP rule whose ports hold the
local (VIP) port, ClientIP when none does, exactly as the filter and its Python model do.
The hash is vipfarm.hashing's, the one reference the BPF program mirrors.

UDP has no kernel state to count: the dataplane keeps the recently seen UDP flows itself
(spec.handover.udpIdleSeconds).

`count_flows` is the pure part (sockets in, counts out); `tcp_sockets` reads the table;
`flow_census` is the two together.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable

from vipfarm.addresses import IPAddress
from vipfarm.hashing import bucket_of
from vipfarm.udp_flows import rule_affinity
from vipfarm.spec import Farm

# The kernel's TCP states (include/net/tcp_states.h), as sock_diag reports them.
TCP_ESTABLISHED, TCP_SYN_SENT, TCP_SYN_RECV, TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_TIME_WAIT = 1, 2, 3, 4, 5, 6
TCP_CLOSE, TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_LISTEN, TCP_CLOSING = 7, 8, 9, 10, 11
STATE_NAMES = {TCP_ESTABLISHED: "ESTABLISHED", TCP_SYN_SENT: "SYN_SENT", TCP_SYN_RECV: "SYN_RECV",
               TCP_FIN_WAIT1: "FIN_WAIT1", TCP_FIN_WAIT2: "FIN_WAIT2", TCP_TIME_WAIT: "TIME_WAIT",
               TCP_CLOSE: "CLOSE", TCP_CLOSE_WAIT: "CLOSE_WAIT", TCP_LAST_ACK: "LAST_ACK",
               TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING"}
# A flow: every state but LISTEN (no peer), CLOSE (gone, or not connected yet) and TIME_WAIT
# (over on both ends; see above).
FLOW_STATES = frozenset(STATE_NAMES) - {TCP_LISTEN, TCP_CLOSE, TCP_TIME_WAIT}


@dataclass(frozen=True)
class TcpSocket:
    """One TCP socket of the node's table, as the census reads it."""
    local: IPAddress
    local_port: int
    remote: IPAddress
    remote_port: int
    state: int          # TCP_* above


def plain_address(text_or_ip) -> IPAddress:
    """An address as the filter sees it on the wire: an IPv4-mapped IPv6 address (a dual-stack
    socket's view of an IPv4 peer, ::ffff:203.0.113.10) becomes the IPv4 address."""
    ip = ipaddress.ip_address(text_or_ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def flow_bucket(farm: Farm, sock: TcpSocket) -> int:
    """The bucket of the farm the packets of `sock`'s peer hash to."""
    port = sock.remote_port if rule_affinity(farm, "TCP", sock.local_port) == "ClientIPPort" else None
    return bucket_of(plain_address(sock.remote).packed, port, farm.seed, farm.buckets)


def count_flows(farm: Farm, sockets: Iterable[TcpSocket], buckets: Iterable[int]) -> dict[int, int]:
    """{bucket: number of flows of `farm` in it} for each of `buckets` (0 when it has none).

    Counted: the sockets in a flow state (FLOW_STATES) whose local address is one of the
    farm's VIPs. ValueError names a bucket outside the farm's 0..buckets-1."""
    counts = {}
    for b in buckets:
        if isinstance(b, bool) or not isinstance(b, int) or not 0 <= b < farm.buckets:
            raise ValueError(f"flow census of Farm {farm.name!r}: bucket {b!r} is not one of its buckets "
                             f"0..{farm.buckets - 1}; ask for buckets of the farm's own spec.buckets")
        counts[b] = 0
    if not counts:
        return counts
    vips = frozenset(farm.virtual_ips)
    for sock in sockets:
        if sock.state not in FLOW_STATES or plain_address(sock.local) not in vips:
            continue
        b = flow_bucket(farm, sock)
        if b in counts:
            counts[b] += 1
    return counts


def tcp_sockets(states: frozenset[int] = FLOW_STATES) -> list[TcpSocket]:
    """Every TCP socket in one of `states` (default: the flow states) in the calling thread's
    network namespace, IPv4 and IPv6 (dual-stack sockets report IPv4 peers as
    ::ffff:a.b.c.d), read with sock_diag. The kernel filters by state (idiag_states; it adds
    the request sockets for SYN_RECV), so the TIME_WAITs of short connections are not even
    read."""
    mask = sum(1 << s for s in states)
    from pyroute2 import DiagSocket
    out: list[TcpSocket] = []
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for msg in ds.get_sock_stats(family=family, states=mask, protocol=socket.IPPROTO_TCP):
                if msg["idiag_state"] not in states:
                    continue
                out.append(TcpSocket(ipaddress.ip_address(msg["idiag_src"]), msg["idiag_sport"],
                                     ipaddress.ip_address(msg["idiag_dst"]), msg["idiag_dport"], msg["idiag_state"]))
    return out


def flow_census(farm: Farm, buckets: Iterable[int]) -> dict[int, int]:
    """{bucket: flows this node still holds in it} for the asked buckets of `farm`, from the
    kernel's socket table now. Raises OSError (netlink) if sock_diag cannot be read."""
    wanted = list(buckets)
    count_flows(farm, (), wanted)            # refuse a bad bucket before reading the table
    return count_flows(farm, tcp_sockets(), wanted)
