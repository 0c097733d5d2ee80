"""An interface's IPv4 settings (net.ipv4.conf.IFACE.*) written over rtnetlink, not /proc/sys.

A container that is not privileged gets /proc/sys mounted read-only (containerd, CRI-O), even
with CAP_NET_ADMIN and the host's network namespace, so the agent cannot open
/proc/sys/net/ipv4/conf/IFACE/arp_ignore for writing there. The kernel also takes these
values in an RTM_SETLINK message (IFLA_AF_SPEC -> AF_INET -> IFLA_INET_CONF, one u32
attribute per setting, typed by its IPV4_DEVCONF_* index: net/ipv4/devinet.c,
inet_set_link_af), which needs CAP_NET_ADMIN only. pyroute2 parses that attribute but cannot
build it, so the message is encoded here. Reading stays on /proc/sys (readable everywhere).
"""
from __future__ import annotations

import os
import socket
import struct

# include/uapi/linux/ip.h, enum IPV4_DEVCONF_* (1-based)
DEVCONF_INDEX = {"rp_filter": 8, "arp_announce": 18, "arp_ignore": 19, "arp_accept": 21, "arp_notify": 22}
RTM_SETLINK = 19
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1
NLA_F_NESTED = 0x8000


def _nla(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    pad = (-len(payload)) % 4
    return head + payload + b"\0" * pad


def setlink_devconf_message(ifindex: int, values: dict[str, int], seq: int = 1) -> bytes:
    """The RTM_SETLINK request setting `values` (name -> int) on interface `ifindex`."""
    unknown = sorted(set(values) - set(DEVCONF_INDEX))
    if unknown:
        raise ValueError(f"no IPv4 devconf setting named {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(DEVCONF_INDEX))})")
    conf = b"".join(_nla(DEVCONF_INDEX[k], struct.pack("=I", int(v))) for k, v in sorted(values.items()))
    spec = _nla(IFLA_AF_SPEC | NLA_F_NESTED,
                _nla(socket.AF_INET | NLA_F_NESTED, _nla(IFLA_INET_CONF | NLA_F_NESTED, conf)))
    body = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, ifindex, 0, 0) + spec
    return struct.pack("=IHHII", 16 + len(body), RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, seq, 0) + body


def set_ipv4_devconf(ifindex: int, values: dict[str, int]) -> None:
    """Set net.ipv4.conf.<ifindex>.<name> = value for each of `values`, in this thread's
    network namespace; OSError (with the kernel's errno) when the kernel refuses."""
    msg = setlink_devconf_message(ifindex, values)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as s:
        s.settimeout(5)
        s.send(msg)
        while True:
            data = s.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, kind, _flags, seq, _pid = struct.unpack_from("=IHHII", data, off)
                if kind == NLMSG_ERROR and seq == 1:
                    code = -struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        raise OSError(code, f"setting {', '.join(sorted(values))} on interface index "
                                            f"{ifindex} over netlink: {os.strerror(code)}")
                    return
                off += max(length, 16)
                off += (-off) % 4

