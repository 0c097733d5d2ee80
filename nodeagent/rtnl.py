"""A minimal rtnetlink client: one request, its replies, in this thread's network namespace.

For the two calls that must be cheap or that pyroute2 cannot build: an interface checker's
link read (every intervalMs, within a timeout as short as 10 ms: a plain netlink socket
answers in well under a millisecond, where an IPRoute() costs milliseconds of setup and more on
a busy node) and IPv4 devconf writes (nodeagent/ipv4_devconf.py).
"""
from __future__ import annotations

import os
import socket
import struct

NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
NLA_F_NESTED = 0x8000
IFLA_IFNAME, IFLA_OPERSTATE, IFLA_CARRIER = 3, 16, 33
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * ((-len(payload)) % 4)


def parse_nlas(data: bytes) -> dict[int, bytes]:
    """Attribute type (flags masked off) -> payload; the last one wins."""
    out, off = {}, 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        out[kind & 0x3FFF] = data[off + 4:off + length]
        off += (length + 3) & ~3
    return out


def message(kind: int, flags: int, body: bytes, seq: int = 1) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, 0) + body


def ifinfomsg(ifindex: int = 0) -> bytes:
    return struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0)


def transact(msg: bytes, timeout: float = 5.0) -> list[tuple[int, bytes]]:
    """Send one request (seq 1); its replies as (type, body) up to the ack or the one answer.
    OSError with the kernel's errno when it answers with an error."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(timeout)
        s.send(msg)
        replies: list[tuple[int, bytes]] = []
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
                body = data[off + 16:off + length]
                off += max((length + 3) & ~3, 16)
                if seq != 1:
                    continue
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", body)[0]
                    if code:
                        raise OSError(code, os.strerror(code))
                    return replies
                if kind == NLMSG_DONE:
                    return replies
                replies.append((kind, body))
                if not msg_wants_ack(msg):
                    return replies


def msg_wants_ack(msg: bytes) -> bool:
    return bool(struct.unpack_from("=H", msg, 6)[0] & NLM_F_ACK)


def link_state(name: str, timeout: float = 5.0) -> dict | None:
    """{"operstate": "up", "carrier": 1} of interface `name`, None when there is none."""
    req = message(RTM_GETLINK, NLM_F_REQUEST, ifinfomsg() + nla(IFLA_IFNAME, name.encode() + b"\0"))
    try:
        replies = transact(req, timeout)
    except OSError as e:
        if e.errno in (19, 6):          # ENODEV, ENXIO: no such interface
            return None
        raise
    for kind, body in replies:
        if kind == RTM_NEWLINK:
            attrs = parse_nlas(body[16:])
            state = attrs.get(IFLA_OPERSTATE, b"\0")[0]
            carrier = attrs[IFLA_CARRIER][0] if IFLA_CARRIER in attrs else None
            return {"operstate": OPERSTATES[state] if state < len(OPERSTATES) else str(state), "carrier": carrier}
    return None
