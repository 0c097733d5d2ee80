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

import socket
import struct

from .rtnl import NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, RTM_SETLINK, ifinfomsg, message, nla, transact

# include/uapi/linux/ip.h, enum IPV4_DEVCONF_* (1-based)
DEVCONF_INDEX = {"rp_filter": 8, "arp_announce": 18, "arp_ignore": 19, "arp_accept": 21, "arp_notify": 22}
IFLA_AF_SPEC = 26
IFLA_INET_CONF = 1


def setlink_devconf_message(ifindex: int, values: dict[str, int], seq: int = 1) -> bytes:
    """The RTM_SETLINK request setting `values` (name -> int) on interface `ifindex`."""
    unknown = sorted(set(values) - set(DEVCONF_INDEX))
    if unknown:
        raise ValueError(f"no IPv4 devconf setting named {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(DEVCONF_INDEX))})")
    conf = b"".join(nla(DEVCONF_INDEX[k], struct.pack("=I", int(v))) for k, v in sorted(values.items()))
    spec = nla(IFLA_AF_SPEC | NLA_F_NESTED,
               nla(socket.AF_INET | NLA_F_NESTED, nla(IFLA_INET_CONF | NLA_F_NESTED, conf)))
    return message(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifinfomsg(ifindex) + spec, seq)


def set_ipv4_devconf(ifindex: int, values: dict[str, int]) -> None:
    """Set net.ipv4.conf.<ifindex>.<name> = value for each of `values`, in this thread's
    network namespace; OSError (with the kernel's errno) when the kernel refuses."""
    try:
        transact(setlink_devconf_message(ifindex, values))
    except OSError as e:
        raise OSError(e.errno, f"setting {', '.join(sorted(values))} on interface index {ifindex} over "
                               f"netlink: {e.strerror}") from None
