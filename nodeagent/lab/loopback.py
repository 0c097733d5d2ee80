"""Addresses on a lab namespace's lo, usable the moment this returns.

An IPv4 address's local route is in the table when `ip addr add` returns, but an IPv6
address's is not, even with IFA_F_NODAD: the kernel inserts it from its addrconf workqueue,
and on a busy machine a connect() in between fails with ENETUNREACH. So after adding the
addresses this waits until the kernel routes each one as local.
"""
from __future__ import annotations

import errno
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

IFA_F_NODAD = 0x02
RTN_LOCAL = 2


def add_loopback_addresses(ipr: IPRoute, v4: list[str], v6: list[str], timeout: float = 10.0) -> None:
    """Bring lo up, add the addresses to it (/32 and /128), and wait until each is routed locally."""
    lo = ipr.link_lookup(ifname="lo")[0]
    ipr.link("set", index=lo, state="up")
    for addr in v4:
        ipr.addr("add", index=lo, address=addr, prefixlen=32)
    for addr in v6:
        ipr.addr("add", index=lo, address=addr, prefixlen=128, flags=IFA_F_NODAD)
    wait_routed_locally(ipr, v4 + v6, timeout)


def wait_routed_locally(ipr: IPRoute, addresses: list[str], timeout: float = 10.0) -> None:
    """Until the kernel routes every address as local (RTN_LOCAL); TimeoutError naming the first
    that is not."""
    deadline = time.monotonic() + timeout
    for addr in addresses:
        while not _routed_locally(ipr, addr):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the kernel did not route {addr} as a local address within {timeout} s")
            time.sleep(0.005)


def _routed_locally(ipr: IPRoute, addr: str) -> bool:
    try:
        routes = ipr.route("get", dst=addr)
    except NetlinkError as e:
        if e.code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return False
        raise
    return any(r["type"] == RTN_LOCAL for r in routes)
